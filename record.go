package svcwatch

import (
	"errors"
	"fmt"
	"time"

	jsoniter "github.com/json-iterator/go"
)

var json = jsoniter.ConfigCompatibleWithStandardLibrary

// storedRecord is an instance as the scripts store it in the table's hash.
type storedRecord struct {
	Inc  string `json:"inc"`
	Name string `json:"name"`
	Desc string `json:"desc"`
	Reg  int64  `json:"reg"` // server ms
	TTL  int64  `json:"ttl"` // ms
}

// changeMessage is one message on a table's channel.
type changeMessage struct {
	Epoch string `json:"e"`
	Rev   int64  `json:"r"`
	Prev  string `json:"p"`  // token of the change before this one
	Tok   string `json:"t"`  // this change's token
	Op    string `json:"op"` // add, update, del, expired
	ID    string `json:"id"`
	Rec   string `json:"rec"` // the record, on add and update
}

var errBadRecord = errors.New("svcwatch: unreadable record")

// decodeRecord turns a stored record into an Instance of table. It refuses what a
// registration could not have written, so that foreign or damaged data is
// skipped instead of reported.
func decodeRecord(table, id, raw string, maxDesc int) (Instance, error) {
	if len(raw) > 6*maxDesc+4096 { // JSON escaping may grow a desc up to six times
		return Instance{}, fmt.Errorf("%w: %d bytes, over the size limit", errBadRecord, len(raw))
	}
	var r storedRecord
	if err := json.UnmarshalFromString(raw, &r); err != nil {
		return Instance{}, fmt.Errorf("%w: %v", errBadRecord, err)
	}
	if r.Inc == "" || checkName("id", id, maxIDLen, false) != nil || checkName("name", r.Name, maxNameLen, true) != nil {
		return Instance{}, fmt.Errorf("%w: missing or bad id, name or incarnation", errBadRecord)
	}
	if len(r.Desc) > maxDesc {
		return Instance{}, fmt.Errorf("%w: desc is %d bytes, over the limit of %d", errBadRecord, len(r.Desc), maxDesc)
	}
	return Instance{
		Table: table, ID: id, Name: r.Name, Desc: r.Desc,
		Incarnation: r.Inc, RegisteredAt: time.UnixMilli(r.Reg),
	}, nil
}

// decodeMessage parses a channel message; it checks only the envelope.
func decodeMessage(payload string) (changeMessage, error) {
	var m changeMessage
	if err := json.UnmarshalFromString(payload, &m); err != nil {
		return m, fmt.Errorf("%w: message: %v", errBadRecord, err)
	}
	switch m.Op {
	case "add", "update":
		if m.Rec == "" {
			return m, fmt.Errorf("%w: message %s without a record", errBadRecord, m.Op)
		}
	case "del", "expired":
	default:
		return m, fmt.Errorf("%w: message op %q", errBadRecord, m.Op)
	}
	if m.Epoch == "" || m.Rev <= 0 || m.ID == "" {
		return m, fmt.Errorf("%w: message without epoch, revision or id", errBadRecord)
	}
	return m, nil
}
