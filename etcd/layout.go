package etcd

// layout.go: the etcd key layout (prefix/table/id). The record stored under
// each key is the core's (Backend.EncodeRecord, Backend.DecodeRecord): the same
// JSON as a Redis registration. Pure functions.

import (
	"strings"
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
