package protocol

import (
	"crypto/sha1"
	"errors"
	"fmt"
	"os"
	"path"
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

// tableScripts and catalogScripts are every script a client sends, by the
// name PROTOCOL.md gives it: the table scripts are the prelude followed by a
// body, the catalog scripts are their file alone.
var (
	tableScripts = map[string]string{"register": Register, "heartbeat": Heartbeat, "update": Update,
		"deregister": Deregister, "check": Check, "load": Load, "gc": GC}
	catalogScripts = map[string]string{"catalog_touch": CatalogTouch, "catalog_drop": CatalogDrop,
		"catalog_due": CatalogDue}
)

func TestScriptsShareThePrelude(t *testing.T) {
	for name, src := range tableScripts {
		if !strings.HasPrefix(src, prelude) || len(src) == len(prelude) {
			t.Errorf("%s: not the prelude followed by a body", name)
		}
	}
	for name, src := range catalogScripts {
		if strings.Contains(src, prelude) || src == "" {
			t.Errorf("%s: the catalog scripts are sent without the prelude", name)
		}
	}
}

// TestEveryScriptFileIsAScript fails when a .lua file is added to scripts/
// without being listed here, and so in PROTOCOL.md's table below.
func TestEveryScriptFileIsAScript(t *testing.T) {
	files, err := os.ReadDir("scripts")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		name, ok := strings.CutSuffix(f.Name(), ".lua")
		if !ok || name == "prelude" {
			continue
		}
		raw, err := os.ReadFile("scripts/" + f.Name())
		if err != nil {
			t.Fatal(err)
		}
		if src, ok := tableScripts[name]; ok {
			if src != prelude+string(raw) {
				t.Errorf("%s: the Go text is not prelude.lua + %s", name, f.Name())
			}
		} else if src, ok := catalogScripts[name]; ok {
			if src != string(raw) {
				t.Errorf("%s: the Go text is not %s", name, f.Name())
			}
		} else {
			t.Errorf("scripts/%s is not a known script: add it to the lists of this test and to PROTOCOL.md 6.1", f.Name())
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
	scripts := map[string]string{}
	for name, src := range tableScripts {
		scripts[name] = src
	}
	for name, src := range catalogScripts {
		scripts[name] = src
	}
	row := regexp.MustCompile("(?m)^\\| ([a-z_]+) \\| ([0-9]+) \\| `([0-9a-f]{40})` \\|$")
	found := map[string]bool{}
	for _, m := range row.FindAllStringSubmatch(string(doc), -1) {
		name, size, digest := m[1], m[2], m[3]
		src, ok := scripts[name]
		if !ok {
			t.Errorf("PROTOCOL.md lists a script %q that does not exist", name)
			continue
		}
		if found[name] {
			t.Errorf("PROTOCOL.md lists %s twice", name)
		}
		found[name] = true
		if got := fmt.Sprintf("%x", sha1.Sum([]byte(src))); got != digest || strconv.Itoa(len(src)) != size {
			t.Errorf("PROTOCOL.md says %s is %s bytes with SHA-1 %s; it is %d bytes, %s", name, size, digest, len(src), got)
		}
	}
	for name := range scripts {
		if !found[name] {
			t.Errorf("PROTOCOL.md does not list %s in its table of sizes and SHA-1s", name)
		}
	}
}

func TestCatalogKeys(t *testing.T) {
	k := Catalog("svcwatch")
	want := CatalogKeys{Tables: "svcwatch:catalog:{svcwatch}:tables", Rev: "svcwatch:catalog:{svcwatch}:rev",
		Channel: "svcwatch:catalog:{svcwatch}:ch", Seeded: "svcwatch:catalog:{svcwatch}:seeded"}
	if k != want {
		t.Fatalf("Catalog = %+v", k)
	}
	if s := k.Script(); len(s) != 2 || s[0] != k.Tables || s[1] != k.Rev {
		t.Errorf("Script() = %v: the catalog scripts take tables, rev", s)
	}
	// A catalog key is never taken for a table's: a SCAN for tables never
	// finds it, and a table cannot be named so that its keys are the catalog's.
	for _, name := range []string{k.Tables, k.Rev, k.Channel, k.Seeded} {
		for _, suffix := range []string{"tables", "rev", "ch", "seeded"} {
			if got, ok := TableOf("svcwatch", suffix, name); ok {
				t.Errorf("TableOf(%q, %q) took a catalog key for table %q", suffix, name, got)
			}
		}
		if got, ok := TableOfKey("svcwatch", name); ok {
			t.Errorf("TableOfKey(%q) took a catalog key for table %q", name, got)
		}
		// path.Match reads these patterns as Redis does ("svcwatch" has no glob
		// characters to escape, and no '/' is involved).
		for _, pattern := range []string{InstPattern("svcwatch"), TablePattern("svcwatch")} {
			if ok, _ := path.Match(pattern, name); ok {
				t.Errorf("the SCAN pattern %q for tables matches the catalog key %q", pattern, name)
			}
		}
	}
}

func TestCatalogMessages(t *testing.T) {
	// As catalog_touch and catalog_drop write them: cjson escapes '/'.
	for payload, want := range map[string]CatalogMessage{
		`{"op":"add","table":"mygame\/prod\/game","r":1}`:  {Op: CatalogAdd, Table: "mygame/prod/game", Rev: 1},
		`{"op":"del","table":"a","r":7,"later":"ignored"}`: {Op: CatalogDel, Table: "a", Rev: 7},
	} {
		if got, err := DecodeCatalogMessage(payload); err != nil || got != want {
			t.Errorf("DecodeCatalogMessage(%s) = %+v, %v; want %+v", payload, got, err, want)
		}
	}
	for _, bad := range []string{`{junk`, `{"op":"upd","table":"a","r":1}`, `{"op":"add","table":"","r":1}`,
		`{"op":"add","table":"a","r":0}`, `{"op":"add","table":"a"}`, `{"op":"del","table":"a","r":"1"}`} {
		if m, err := DecodeCatalogMessage(bad); !errors.Is(err, ErrBadData) {
			t.Errorf("DecodeCatalogMessage(%s) = %+v, %v; want ErrBadData", bad, m, err)
		}
	}
}
