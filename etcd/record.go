package etcd

// record.go: the etcd key layout (prefix/table/id) and the record stored under
// each key: protocol.Record, the same JSON as a Redis registration. Pure
// functions.

import (
	"strings"
	"time"

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

// stateName is the record's spelling of s ("" for Serving, written as none).
func stateName(s svcwatch.State) string {
	if s == svcwatch.Serving {
		return ""
	}
	return s.String()
}
