package watchertest

// input.go: the subtest about bad input: every bad argument is refused with
// an error wrapping ErrInvalid, at the constructor or at the method, and
// nothing panics.

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/svcwatch/svcwatch"
)

func testBadInput(h *harness) {
	t := h.t
	tb := h.table("game")
	good := self(tb, "p")
	with := func(f func(*svcwatch.Instance)) svcwatch.Instance {
		i := good
		f(&i)
		return i
	}
	bad := []struct {
		what string
		inst svcwatch.Instance
		opts []svcwatch.Option
	}{
		{"empty table", with(func(i *svcwatch.Instance) { i.Table = "" }), nil},
		{"table with a brace", with(func(i *svcwatch.Instance) { i.Table = tb + "/{x}" }), nil},
		{"table with a space", with(func(i *svcwatch.Instance) { i.Table = tb + "/a b" }), nil},
		{"table with a control character", with(func(i *svcwatch.Instance) { i.Table = tb + "/a\x01" }), nil},
		{"oversized table", with(func(i *svcwatch.Instance) { i.Table = tb + "/" + strings.Repeat("t", 300) }), nil},
		{"empty id", with(func(i *svcwatch.Instance) { i.ID = "" }), nil},
		{"id with a slash", with(func(i *svcwatch.Instance) { i.ID = "a/b" }), nil},
		{"id with white space", with(func(i *svcwatch.Instance) { i.ID = "a\tb" }), nil},
		{"oversized id", with(func(i *svcwatch.Instance) { i.ID = strings.Repeat("i", 200) }), nil},
		{"empty name", with(func(i *svcwatch.Instance) { i.Name = "" }), nil},
		{"name with white space", with(func(i *svcwatch.Instance) { i.Name = "host 1:80" }), nil},
		{"oversized desc", with(func(i *svcwatch.Instance) { i.Desc = strings.Repeat("d", 70<<10) }), nil},
		{"desc that is not UTF-8", with(func(i *svcwatch.Instance) { i.Desc = "\xff\xfe" }), nil},
		{"negative weight", with(func(i *svcwatch.Instance) { i.Meta = map[string]string{"weight": "-1"} }), nil},
		{"weight that is not a number", with(func(i *svcwatch.Instance) { i.Meta = map[string]string{"weight": "heavy"} }), nil},
		{"empty meta key", with(func(i *svcwatch.Instance) { i.Meta = map[string]string{"": "v"} }), nil},
		{"unknown state", with(func(i *svcwatch.Instance) { i.State = svcwatch.State(9) }), nil},
		{"TTL not above twice the keepalive", good, []svcwatch.Option{svcwatch.WithTTL(time.Second), svcwatch.WithKeepAliveInterval(500 * time.Millisecond)}},
		{"negative TTL", good, []svcwatch.Option{svcwatch.WithTTL(-time.Second)}},
		{"nil handler", good, []svcwatch.Option{svcwatch.WithHandler(nil)}},
		{"bad table in WithTables", good, []svcwatch.Option{svcwatch.WithTables("a b")}},
	}
	for _, c := range bad {
		n, err := h.build(c.inst, c.opts...)
		if !errors.Is(err, svcwatch.ErrInvalid) {
			t.Errorf("constructor with %s: err = %v, want ErrInvalid", c.what, err)
		}
		if n != nil {
			_ = h.stop(n)
		}
	}

	// Methods of a running watcher.
	p := h.start(tb, "p")
	ctx := h.ctx()
	for _, table := range []string{"", "a b", "x/{y}", strings.Repeat("t", 300)} {
		if err := p.w.Watch(ctx, table); !errors.Is(err, svcwatch.ErrInvalid) {
			t.Errorf("Watch(%q) = %v, want ErrInvalid", table, err)
		}
	}
	badCalls := []struct {
		what string
		call func() error
	}{
		{"SetDesc over the size limit", func() error { return p.w.SetDesc(ctx, strings.Repeat("d", 70<<10)) }},
		{"SetDesc not UTF-8", func() error { return p.w.SetDesc(ctx, "\xff") }},
		{"SetMeta with a bad weight", func() error { return p.w.SetMeta(ctx, map[string]string{"weight": "x"}) }},
		{"SetMeta with 65 keys", func() error { return p.w.SetMeta(ctx, manyKeys(65)) }},
		{"SetMeta with a control character in a key", func() error { return p.w.SetMeta(ctx, map[string]string{"a\nb": "v"}) }},
		{"SetState(9)", func() error { return p.w.SetState(ctx, svcwatch.State(9)) }},
	}
	for _, c := range badCalls {
		if err := c.call(); !errors.Is(err, svcwatch.ErrInvalid) {
			t.Errorf("%s = %v, want ErrInvalid", c.what, err)
		}
	}
	if err := p.w.Start(ctx); err == nil {
		t.Errorf("a second Start = nil, want an error")
	}
	// Nothing bad was applied: self is as it started.
	s := p.w.Self()
	if s.Desc != "" || s.Meta != nil || s.State != svcwatch.Serving {
		t.Errorf("after refused calls Self() = %+v, want it unchanged", s)
	}
}

func manyKeys(n int) map[string]string {
	m := make(map[string]string, n)
	for i := 0; i < n; i++ {
		m[fmt.Sprintf("k%d", i)] = "v"
	}
	return m
}
