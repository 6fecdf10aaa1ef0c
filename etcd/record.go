package etcd

// record.go: the etcd key layout (prefix/table/id) and the record stored under
// each key: protocol.Record, the same JSON as a Redis registration. Pure
// functions.

import (
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/svcwatch/svcwatch"
	"github.com/svcwatch/svcwatch/protocol"
)

// layout names the keys under one key prefix.
type layout struct{ prefix string }

// instKey is the key of one instance: "prefix/table/id".
func (l layout) instKey(table, id string) string { return l.prefix + "/" + table + "/" + id }

// tableRange is the range prefix of a table's keys, "prefix/table/". It also
// holds the keys of tables nested under table; split tells them apart.
func (l layout) tableRange(table string) string { return l.prefix + "/" + table + "/" }

// split inverts instKey: the table and id of key, or false when key is not
// an instance key under the prefix.
func (l layout) split(key string) (table, id string, ok bool) {
	rest, ok := strings.CutPrefix(key, l.prefix+"/")
	if !ok {
		return "", "", false
	}
	i := strings.LastIndexByte(rest, '/')
	if i <= 0 || i == len(rest)-1 {
		return "", "", false
	}
	return rest[:i], rest[i+1:], true
}

// encodeRecord is self's record for incarnation inc, registered at reg.
func encodeRecord(self svcwatch.Instance, ver string, reg time.Time, ttl time.Duration) string {
	return protocol.Record{
		Inc: self.Incarnation, Ver: ver, Name: self.Name, Desc: self.Desc, Meta: self.Meta,
		State: stateName(self.State), Reg: reg.UnixMilli(), TTL: ttl.Milliseconds(),
	}.Encode()
}

// decodeRecord turns a stored record into an Instance of table, refusing what a
// registration could not have written (as the Redis backend does), so that
// foreign or damaged data is skipped instead of reported.
func decodeRecord(table, id string, raw []byte, maxDesc int) (svcwatch.Instance, error) {
	if len(raw) > 6*maxDesc+4096 { // JSON escaping may grow a desc up to six times
		return svcwatch.Instance{}, fmt.Errorf("%w: %d bytes, over the size limit", protocol.ErrBadData, len(raw))
	}
	r, err := protocol.DecodeRecord(string(raw))
	if err != nil {
		return svcwatch.Instance{}, err
	}
	if !goodName(id, 128, false) || !goodName(r.Name, 256, true) {
		return svcwatch.Instance{}, fmt.Errorf("%w: missing or bad id or name", protocol.ErrBadData)
	}
	size := len(r.Desc)
	for k, v := range r.Meta {
		size += len(k) + len(v)
	}
	if size > maxDesc {
		return svcwatch.Instance{}, fmt.Errorf("%w: desc and meta are %d bytes, over the limit of %d", protocol.ErrBadData, size, maxDesc)
	}
	if len(r.Meta) == 0 {
		r.Meta = nil
	}
	return svcwatch.Instance{
		Table: table, ID: id, Name: r.Name, Desc: r.Desc, Meta: r.Meta, State: stateOf(r.State),
		Incarnation: r.Inc, RegisteredAt: time.UnixMilli(r.Reg),
	}, nil
}

// goodName is the root's name check (ids and names): non-empty, within max
// bytes, UTF-8, no braces, white space or control characters, and '/' only
// where slash is true.
func goodName(s string, max int, slash bool) bool {
	if s == "" || len(s) > max || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r == '{' || r == '}' || unicode.IsSpace(r) || unicode.IsControl(r) || (r == '/' && !slash) {
			return false
		}
	}
	return true
}

// stateOf reads a record's state; one this version does not know takes no
// new work, as Unhealthy.
func stateOf(s string) svcwatch.State {
	switch s {
	case "", protocol.StateServing:
		return svcwatch.Serving
	case protocol.StateDraining:
		return svcwatch.Draining
	}
	return svcwatch.Unhealthy
}

// stateName is the record's spelling of s ("" for Serving, written as none).
func stateName(s svcwatch.State) string {
	if s == svcwatch.Serving {
		return ""
	}
	return s.String()
}
