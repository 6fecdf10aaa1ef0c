package protocol

import (
	"crypto/sha1"
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func TestTableKeys(t *testing.T) {
	k := TableKeys("svcwatch", "game/prod/v1/gate")
	want := Keys{
		Inst: "svcwatch:{game/prod/v1/gate}:inst", Exp: "svcwatch:{game/prod/v1/gate}:exp",
		Rev: "svcwatch:{game/prod/v1/gate}:rev", Epoch: "svcwatch:{game/prod/v1/gate}:epoch",
		Meta: "svcwatch:{game/prod/v1/gate}:meta", Channel: "svcwatch:{game/prod/v1/gate}:ch",
	}
	if k != want {
		t.Fatalf("TableKeys = %+v", k)
	}
	if s := k.Script(); len(s) != 5 || s[0] != k.Inst || s[1] != k.Exp || s[2] != k.Rev || s[3] != k.Epoch || s[4] != k.Meta {
		t.Errorf("Script() = %v: the scripts take inst, exp, rev, epoch, meta", s)
	}
	for _, name := range []string{k.Inst, k.Channel} {
		suffix := name[strings.LastIndexByte(name, ':')+1:]
		if got, ok := TableOf("svcwatch", suffix, name); !ok || got != "game/prod/v1/gate" {
			t.Errorf("TableOf(%q) = %q, %v", name, got, ok)
		}
	}
	for _, bad := range []string{"other:{a}:inst", "svcwatch:{a}:exp", "svcwatch:{}:inst", "svcwatch:{a}b}:inst"} {
		if got, ok := TableOf("svcwatch", SuffixInst, bad); ok {
			t.Errorf("TableOf(%q) took it as table %q", bad, got)
		}
	}
	if got := InstPattern(`a*b?[c]\`); got != `a\*b\?\[c\]\\:{*}:inst` {
		t.Errorf("InstPattern = %q", got)
	}
}

func TestRecordAndMessageRoundTrip(t *testing.T) {
	r := Record{Inc: "0a1b", Ver: "v1", Name: "10.0.0.1:7000", Desc: `{"zone":"eu/1"}`, Reg: 1795664680550, TTL: 10000,
		Meta: map[string]string{"weight": "2", "zone": "eu"}, State: StateDraining}
	raw := r.Encode()
	if !strings.HasPrefix(raw, `{"inc":"0a1b",`) {
		t.Errorf("the incarnation must come first (the heartbeat checks that prefix): %s", raw)
	}
	if got, err := DecodeRecord(raw); err != nil || !reflect.DeepEqual(got, r) {
		t.Errorf("DecodeRecord(Encode) = %+v, %v", got, err)
	}
	if _, err := DecodeRecord(`{"name":"h:1"}`); !errors.Is(err, ErrBadData) {
		t.Errorf("a record without incarnation: %v", err)
	}
	m := Message{Epoch: "e1", Rev: 7, Prev: "e1.6", Tok: "e1.7", Op: OpUpdate, ID: "g1", Rec: raw}
	if got, err := DecodeMessage(m.Encode()); err != nil || got != m {
		t.Errorf("DecodeMessage(Encode) = %+v, %v", got, err)
	}
	for _, bad := range []string{`{junk`, `{"e":"e","r":1,"op":"add","id":"x"}`, `{"e":"e","r":0,"op":"del","id":"x"}`, `{"e":"e","r":1,"op":"boom","id":"x"}`} {
		if _, err := DecodeMessage(bad); !errors.Is(err, ErrBadData) {
			t.Errorf("DecodeMessage(%s) = %v", bad, err)
		}
	}
}

func TestScriptsShareThePrelude(t *testing.T) {
	for name, src := range map[string]string{"register": Register, "heartbeat": Heartbeat, "update": Update,
		"deregister": Deregister, "check": Check, "load": Load} {
		if !strings.HasPrefix(src, prelude) || len(src) == len(prelude) {
			t.Errorf("%s: not the prelude followed by a body", name)
		}
	}
}

// TestProtocolDocScriptDigests keeps PROTOCOL.md's table of script sizes and
// SHA-1s true: a client in another language checks its bytes against it.
func TestProtocolDocScriptDigests(t *testing.T) {
	doc, err := os.ReadFile("../PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| (register|heartbeat|update|deregister|check|load) \\| ([0-9]+) \\| `([0-9a-f]{40})` \\|$")
	found := map[string]bool{}
	scripts := map[string]string{"register": Register, "heartbeat": Heartbeat, "update": Update,
		"deregister": Deregister, "check": Check, "load": Load}
	for _, m := range row.FindAllStringSubmatch(string(doc), -1) {
		name, size, digest := m[1], m[2], m[3]
		src := scripts[name]
		found[name] = true
		if got := fmt.Sprintf("%x", sha1.Sum([]byte(src))); got != digest || strconv.Itoa(len(src)) != size {
			t.Errorf("PROTOCOL.md says %s is %s bytes with SHA-1 %s; it is %d bytes, %s", name, size, digest, len(src), got)
		}
	}
	if len(found) != len(scripts) {
		t.Errorf("PROTOCOL.md lists %d of the %d scripts", len(found), len(scripts))
	}
}
