package svcwatch

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/svcwatch/svcwatch/protocol"
)

// The fuzz targets feed arbitrary bytes, as another writer or damaged data could
// leave them in Redis, to the decoders. Their seed corpus is in testdata/fuzz, so
// the normal test run covers it; `go test -fuzz FuzzDecodeRecord` explores more.

func FuzzDecodeRecord(f *testing.F) {
	f.Add("g1", `{"inc":"a1b2c3d4e5f60718","name":"127.0.0.1:7000","desc":"{\"zone\":1}","reg":1795664680550,"ttl":10000}`)
	f.Add("g1", `{"inc":"x","name":"h:1","desc":"\u00e9\/","reg":-1,"ttl":0}`)
	f.Add("g1", `not json`)
	f.Add("a/b", `{"inc":"x","name":"h:1"}`)
	f.Fuzz(func(t *testing.T, id, raw string) {
		inst, err := decodeRecord("t", id, raw, 1024)
		if err != nil {
			return
		}
		if inst.ID != id || inst.Table != "t" || inst.Incarnation == "" {
			t.Fatalf("decoded %+v from id %q", inst, id)
		}
		if checkName("id", id, maxIDLen, false) != nil || checkName("name", inst.Name, maxNameLen, true) != nil {
			t.Fatalf("accepted a bad id or name: %q %q", id, inst.Name)
		}
		if len(inst.Desc) > 1024 || !utf8.ValidString(inst.Name) {
			t.Fatalf("accepted desc of %d bytes", len(inst.Desc))
		}
	})
}

func FuzzDecodeMessage(f *testing.F) {
	f.Add(`{"e":"0a1b2c3d4e5f6071","r":7,"op":"add","id":"g1","rec":"{\"inc\":\"1\",\"name\":\"h:1\",\"desc\":\"\",\"reg\":1,\"ttl\":1000}"}`)
	f.Add(`{"e":"0a1b2c3d4e5f6071","r":8,"op":"del","id":"g1"}`)
	f.Add(`{"e":"e","r":1e30,"op":"expired","id":"x"}`)
	f.Add(`{junk`)
	f.Fuzz(func(t *testing.T, payload string) {
		m, err := protocol.DecodeMessage(payload)
		if err != nil {
			return
		}
		if m.Epoch == "" || m.Rev <= 0 || m.ID == "" || !strings.Contains("add update del expired", m.Op) {
			t.Fatalf("accepted %+v", m)
		}
		if (m.Op == "add" || m.Op == "update") && m.Rec == "" {
			t.Fatalf("accepted %s without a record", m.Op)
		}
	})
}
