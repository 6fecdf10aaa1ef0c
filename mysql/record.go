package mysql

// record.go: the stored record (the protocol package's JSON, the same as in
// Redis, so that Desc, Meta and State round-trip alike). Reading it back and
// checking changes of self are the core's (Backend.DecodeRecord, SetDesc ...).
// Pure functions.

import (
	"time"

	"github.com/svcwatch/svcwatch"
	"github.com/svcwatch/svcwatch/protocol"
)

// encodeRecord returns self's record as the scripts of the Redis protocol
// write it: JSON with sorted Meta keys, so that an unchanged instance encodes
// to the same bytes and writes no change.
func encodeRecord(self svcwatch.Instance, ver string, regMS int64, ttl time.Duration) string {
	return protocol.Record{
		Inc: self.Incarnation, Ver: ver, Name: self.Name, Desc: self.Desc,
		Meta: self.Meta, State: stateName(self.State), Reg: regMS, TTL: ttl.Milliseconds(),
	}.Encode()
}

// stateName is the record's spelling of s ("" for Serving, written as none).
func stateName(s svcwatch.State) string {
	if s == svcwatch.Serving {
		return ""
	}
	return s.String()
}
