package protocol

import (
	"errors"
	"fmt"

	jsoniter "github.com/json-iterator/go"
)

// jsonCodec decodes records and messages; it behaves like encoding/json.
var jsonCodec = jsoniter.ConfigCompatibleWithStandardLibrary

// Record is an instance as the scripts store it in the table's hash (field: the
// instance ID). Readers ignore fields they do not know.
type Record struct {
	Inc  string `json:"inc"`  // incarnation: random per Start
	Ver  string `json:"ver"`  // record version: a token its owner makes per write
	Name string `json:"name"` // the address peers dial
	Desc string `json:"desc"` // the process's own description
	// Meta: small attributes (weight, zone ...); absent when none.
	Meta map[string]string `json:"meta,omitempty"`
	// State: "draining" or "unhealthy"; absent means serving.
	State string `json:"state,omitempty"`
	Reg   int64  `json:"reg"` // registered at, Redis server ms
	TTL   int64  `json:"ttl"` // this record's TTL, ms
}

// The states a record carries (StateServing is written as no state at all).
const (
	StateServing   = "serving"
	StateDraining  = "draining"
	StateUnhealthy = "unhealthy"
)

// EncodeMeta returns meta as the JSON object the scripts embed in a record
// ("" when empty).
func EncodeMeta(meta map[string]string) string {
	if len(meta) == 0 {
		return ""
	}
	s, _ := jsonCodec.MarshalToString(meta) // strings always encode; keys sorted
	return s
}

// Message is one message on a table's channel.
type Message struct {
	Epoch string `json:"e"`
	Rev   int64  `json:"r"`
	Prev  string `json:"p"`  // token of the change before this one
	Tok   string `json:"t"`  // this change's token
	Op    string `json:"op"` // OpAdd, OpUpdate, OpDel, OpExpired
	ID    string `json:"id"`
	Rec   string `json:"rec"` // the record, on add and update
}

// The operations a Message carries.
const (
	OpAdd     = "add"
	OpUpdate  = "update"
	OpDel     = "del"
	OpExpired = "expired"
)

// ErrBadData is wrapped by every error about a record or message that cannot be
// read.
var ErrBadData = errors.New("svcwatch: unreadable record")

// DecodeRecord parses a stored record. It checks only that it is JSON of the
// right shape with an incarnation; the caller checks names and sizes.
func DecodeRecord(raw string) (Record, error) {
	var r Record
	if err := jsonCodec.UnmarshalFromString(raw, &r); err != nil {
		return r, fmt.Errorf("%w: %v", ErrBadData, err)
	}
	if r.Inc == "" {
		return r, fmt.Errorf("%w: no incarnation", ErrBadData)
	}
	return r, nil
}

// DecodeMessage parses a channel message; it checks only the envelope.
func DecodeMessage(payload string) (Message, error) {
	var m Message
	if err := jsonCodec.UnmarshalFromString(payload, &m); err != nil {
		return m, fmt.Errorf("%w: message: %v", ErrBadData, err)
	}
	switch m.Op {
	case OpAdd, OpUpdate:
		if m.Rec == "" {
			return m, fmt.Errorf("%w: message %s without a record", ErrBadData, m.Op)
		}
	case OpDel, OpExpired:
	default:
		return m, fmt.Errorf("%w: message op %q", ErrBadData, m.Op)
	}
	if m.Epoch == "" || m.Rev <= 0 || m.ID == "" {
		return m, fmt.Errorf("%w: message without epoch, revision or id", ErrBadData)
	}
	return m, nil
}

// Encode returns the record's JSON, fields in the order the scripts write them
// (the incarnation and the version first: the heartbeat checks them by that
// prefix). Tools
// and tests use it to write records as a registration would.
func (r Record) Encode() string {
	s, _ := jsonCodec.MarshalToString(r) // strings and integers always encode
	return s
}

// Encode returns the message's JSON, as the scripts publish it.
func (m Message) Encode() string {
	s, _ := jsonCodec.MarshalToString(m)
	return s
}
