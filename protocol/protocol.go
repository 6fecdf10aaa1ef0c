// Package protocol is svcwatch's Redis protocol, version 1: the layout of the
// keys and channel of a table, the stored record, the change message and the Lua
// scripts that write them. It is written once here and used by the library, the
// svcwatch command and the tests; a client in another language follows the same
// layout and runs the same scripts (the .lua files in scripts/).
//
// Nothing in this package talks to Redis or starts a goroutine.
package protocol

import (
	"strings"
)

// Version is the protocol version these keys, records and scripts implement.
const Version = 1

// Key suffixes of one table. Every key of a table carries the hash tag {table},
// so all of them live in one Redis Cluster slot and one script may touch them.
const (
	SuffixInst    = "inst"  // HASH id -> record JSON
	SuffixExp     = "exp"   // ZSET id -> deadline, Redis server ms
	SuffixRev     = "rev"   // STRING: revision, +1 per change
	SuffixEpoch   = "epoch" // STRING: random token; a new one means the data was lost or restored
	SuffixMeta    = "meta"  // HASH: last, guard (server ms), tok (token of the latest change), n (records)
	SuffixChannel = "ch"    // channel: one message per change
)

// Keys names the keys and the channel of one table.
type Keys struct {
	Inst, Exp, Rev, Epoch, Meta string
	Channel                     string
}

// TableKeys returns the keys of table under prefix: "prefix:{table}:suffix".
func TableKeys(prefix, table string) Keys {
	return Keys{
		Inst:    Key(prefix, table, SuffixInst),
		Exp:     Key(prefix, table, SuffixExp),
		Rev:     Key(prefix, table, SuffixRev),
		Epoch:   Key(prefix, table, SuffixEpoch),
		Meta:    Key(prefix, table, SuffixMeta),
		Channel: Key(prefix, table, SuffixChannel),
	}
}

// Key returns "prefix:{table}:suffix", a key (or channel) in the table's slot.
// Tools that need a name of their own next to a table's (the bench's floor
// channel) build it here too.
func Key(prefix, table, suffix string) string {
	return prefix + ":{" + table + "}:" + suffix
}

// Script returns the KEYS every script takes, in order: inst, exp, rev, epoch, meta.
func (k Keys) Script() []string { return []string{k.Inst, k.Exp, k.Rev, k.Epoch, k.Meta} }

// All returns every key of the table (not the channel), e.g. to delete a table.
func (k Keys) All() []string { return k.Script() }

// TableOf inverts Key: the table of "prefix:{table}:suffix", and whether name
// has that shape.
func TableOf(prefix, suffix, name string) (string, bool) {
	t, ok := strings.CutPrefix(name, prefix+":{")
	if !ok {
		return "", false
	}
	t, ok = strings.CutSuffix(t, "}:"+suffix)
	if !ok || t == "" || strings.ContainsAny(t, "{}") {
		return "", false
	}
	return t, true
}

// InstPattern is the SCAN MATCH pattern of every table's record hash under
// prefix; the prefix's glob characters are escaped.
func InstPattern(prefix string) string {
	return globEscape(prefix) + ":{*}:" + SuffixInst
}

// TablePattern is the SCAN MATCH pattern of every key of every table under
// prefix; TableOfKey reads the table back.
func TablePattern(prefix string) string {
	return globEscape(prefix) + ":{*}:*"
}

// TableOfKey returns the table of any key of the layout ("prefix:{table}:suffix"
// for one of the key suffixes), and whether name is one.
func TableOfKey(prefix, name string) (string, bool) {
	for _, suffix := range []string{SuffixInst, SuffixExp, SuffixRev, SuffixEpoch, SuffixMeta} {
		if t, ok := TableOf(prefix, suffix, name); ok {
			return t, true
		}
	}
	return "", false
}

func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
