package svcwatch

// record.go: turning what Redis holds (protocol records) into Instances, with
// the same checks a registration passes. Pure functions, called by the sync
// loop and Start's loads.

import (
	"fmt"
	"time"

	"github.com/svcwatch/svcwatch/protocol"
)

// decodeRecord turns a stored record into an Instance of table. It refuses what a
// registration could not have written, so that foreign or damaged data is
// skipped instead of reported.
func decodeRecord(table, id, raw string, maxDesc int) (Instance, error) {
	if len(raw) > 6*maxDesc+4096 { // JSON escaping may grow a desc up to six times
		return Instance{}, fmt.Errorf("%w: %d bytes, over the size limit", protocol.ErrBadData, len(raw))
	}
	r, err := protocol.DecodeRecord(raw)
	if err != nil {
		return Instance{}, err
	}
	if checkName("id", id, maxIDLen, false) != nil || checkName("name", r.Name, maxNameLen, true) != nil {
		return Instance{}, fmt.Errorf("%w: missing or bad id or name", protocol.ErrBadData)
	}
	size := len(r.Desc)
	for k, v := range r.Meta {
		size += len(k) + len(v)
	}
	if size > maxDesc {
		return Instance{}, fmt.Errorf("%w: desc and meta are %d bytes, over the limit of %d", protocol.ErrBadData, size, maxDesc)
	}
	if len(r.Meta) == 0 {
		r.Meta = nil
	}
	return Instance{
		Table: table, ID: id, Name: r.Name, Desc: r.Desc, Meta: r.Meta, State: stateOf(r.State),
		Incarnation: r.Inc, RegisteredAt: time.UnixMilli(r.Reg),
	}, nil
}

// stateOf reads a record's state. A state this version does not know (from a
// newer writer) takes no new work, as Unhealthy.
func stateOf(s string) State {
	switch s {
	case "", protocol.StateServing:
		return Serving
	case protocol.StateDraining:
		return Draining
	}
	return Unhealthy
}

// stateName is the record's spelling of s ("" for Serving, written as none).
func stateName(s State) string {
	if s == Serving {
		return ""
	}
	return s.String()
}
