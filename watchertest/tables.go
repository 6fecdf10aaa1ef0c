package watchertest

// tables.go: the subtests about the tables a watcher watches over time:
// Unwatch, WatchPrefix, UnwatchPrefix and Tables.

import (
	"errors"
	"slices"

	"github.com/svcwatch/svcwatch"
)

func (h *harness) needPrefixes() {
	h.t.Helper()
	if h.f.NoPrefixes {
		h.t.Skip("watchertest: the backend says it does not implement WatchPrefix (Factory.NoPrefixes)")
	}
}

// Unwatch: OnRemove for each peer of the table, then nothing more about it;
// self's table cannot be unwatched; a table not watched is a no-op.
func testUnwatch(h *harness) {
	t := h.t
	own, other := h.table("gate"), h.table("game")
	h.start(other, "g1")
	h.start(other, "g2")
	w := h.start(own, "gate", svcwatch.WithTables(other))
	tw := w.w
	if got := tw.Tables(); !slices.Equal(got, sorted(own, other)) {
		t.Errorf("Tables() = %v, want %v", got, sorted(own, other))
	}
	ctx := h.ctx()
	if err := tw.Unwatch(ctx, other); err != nil {
		t.Fatalf("Unwatch: %v", err)
	}
	h.eventually("OnRemove of g1 and g2", func() bool {
		return w.rec.has("remove", other, "g1") && w.rec.has("remove", other, "g2")
	}, func() string { return "events: " + w.rec.String() })
	if got := w.w.Services(other); got != nil {
		t.Errorf("Services of an unwatched table = [%s], want nil", idsOf(got))
	}
	if _, ok := w.w.Lookup(other, "g1"); ok {
		t.Errorf("Lookup still finds g1 of an unwatched table")
	}
	if got := tw.Tables(); !slices.Equal(got, []string{own}) {
		t.Errorf("Tables() after Unwatch = %v, want [%s]", got, own)
	}
	// Nothing more about it: g3 joins the unwatched table; a probe in our own
	// table orders the check after it.
	h.start(other, "g3")
	h.start(own, "probe")
	h.sees(w, own, "gate,probe")
	if w.rec.has("add", other, "g3") {
		t.Errorf("an event about an unwatched table: %s", w.rec)
	}
	if err := tw.Unwatch(ctx, other); err != nil {
		t.Errorf("Unwatch of a table not watched = %v, want nil", err)
	}
	if err := tw.Unwatch(ctx, own); !errors.Is(err, svcwatch.ErrInvalid) {
		t.Errorf("Unwatch of self's own table = %v, want ErrInvalid", err)
	}
	if err := tw.Unwatch(ctx, "a b"); !errors.Is(err, svcwatch.ErrInvalid) {
		t.Errorf("Unwatch(%q) = %v, want ErrInvalid", "a b", err)
	}
	// Watching it again brings its peers back, as new adds.
	if err := w.w.Watch(ctx, other); err != nil {
		t.Fatalf("Watch again: %v", err)
	}
	if w.rec.count("add", other, "g1") != 2 || !w.rec.has("add", other, "g3") {
		t.Errorf("Watch after Unwatch did not add the peers again: %s", w.rec)
	}
}

// WatchPrefix: every table under the prefix (whole segments) is loaded when it
// returns; a table that appears later is watched; UnwatchPrefix removes them.
func testWatchPrefix(h *harness) {
	h.needPrefixes()
	t := h.t
	prefix := h.table("prod")
	x1, x2 := prefix+"/v1/game", prefix+"/v2/game"
	outside := h.table("production") + "/v1/game" // shares the characters, not the segment
	h.start(x1, "a")
	h.start(x2, "b")
	h.start(outside, "z")
	w := h.watcher("", svcwatch.WithTables(h.table("gate")))
	tw := w.w
	ctx := h.ctx()
	if err := tw.WatchPrefix(ctx, prefix+"/"); err != nil { // a trailing '/' is the same prefix
		t.Fatalf("WatchPrefix: %v", err)
	}
	if !w.rec.has("add", x1, "a") || !w.rec.has("add", x2, "b") {
		t.Errorf("WatchPrefix returned before OnAdd of the tables under it; events: %s", w.rec)
	}
	if got, want := tw.Tables(), sorted(h.table("gate"), x1, x2); !slices.Equal(got, want) {
		t.Errorf("Tables() = %v, want %v", got, want)
	}
	// A table that appears later under the prefix is watched.
	x3 := prefix + "/v3/game"
	h.start(x3, "c")
	h.eventually("the new table's peer to arrive", func() bool { return w.rec.has("add", x3, "c") },
		func() string { return "events: " + w.rec.String() })
	if got := tw.Tables(); !slices.Contains(got, x3) {
		t.Errorf("Tables() = %v, want it to include %s", got, x3)
	}
	h.start(h.table("production")+"/v2/game", "z2")
	h.start(x1, "a2")
	h.sees(w, x1, "a,a2")
	if w.rec.has("add", outside, "z") || w.rec.has("add", h.table("production")+"/v2/game", "z2") {
		t.Errorf("a table outside the prefix (same characters, another segment) was watched: %s", w.rec)
	}
	if err := tw.WatchPrefix(ctx, prefix); err != nil {
		t.Errorf("WatchPrefix of a watched prefix = %v, want nil", err)
	}
	for _, bad := range []string{"", "/", "a b", "x/{y}"} {
		if err := tw.WatchPrefix(ctx, bad); !errors.Is(err, svcwatch.ErrInvalid) {
			t.Errorf("WatchPrefix(%q) = %v, want ErrInvalid", bad, err)
		}
	}

	if err := tw.UnwatchPrefix(ctx, prefix); err != nil {
		t.Fatalf("UnwatchPrefix: %v", err)
	}
	h.eventually("OnRemove of every peer under the prefix", func() bool {
		return w.rec.has("remove", x1, "a") && w.rec.has("remove", x1, "a2") &&
			w.rec.has("remove", x2, "b") && w.rec.has("remove", x3, "c")
	}, func() string { return "events: " + w.rec.String() })
	if got := tw.Tables(); !slices.Equal(got, []string{h.table("gate")}) {
		t.Errorf("Tables() after UnwatchPrefix = %v, want [%s]", got, h.table("gate"))
	}
	if err := tw.UnwatchPrefix(ctx, prefix); err != nil {
		t.Errorf("UnwatchPrefix of a prefix not watched = %v, want nil", err)
	}
	// Nothing more under it: a new table there brings no event.
	h.start(prefix+"/v4/game", "d")
	h.start(h.table("gate"), "probe")
	h.sees(w, h.table("gate"), "probe")
	if w.rec.has("add", prefix+"/v4/game", "d") {
		t.Errorf("an event about a table under an unwatched prefix: %s", w.rec)
	}
}

// A table watched both by name and by a prefix stays watched until both are
// undone.
func testPrefixAndName(h *harness) {
	h.needPrefixes()
	t := h.t
	prefix := h.table("prod")
	x1 := prefix + "/v1/game"
	h.start(x1, "a")
	w := h.start(h.table("gate"), "gate")
	tw := w.w
	ctx := h.ctx()
	if err := w.w.Watch(ctx, x1); err != nil {
		t.Fatal(err)
	}
	if err := tw.WatchPrefix(ctx, prefix); err != nil {
		t.Fatal(err)
	}
	if err := tw.UnwatchPrefix(ctx, prefix); err != nil {
		t.Fatal(err)
	}
	h.start(x1, "b")
	h.sees(w, x1, "a,b")
	if w.rec.has("remove", x1, "a") {
		t.Errorf("UnwatchPrefix dropped a table still watched by name: %s", w.rec)
	}
	if err := tw.WatchPrefix(ctx, prefix); err != nil {
		t.Fatal(err)
	}
	if err := tw.Unwatch(ctx, x1); err != nil {
		t.Fatal(err)
	}
	h.start(x1, "c")
	h.sees(w, x1, "a,b,c")
	if w.rec.has("remove", x1, "a") || !slices.Contains(tw.Tables(), x1) {
		t.Errorf("Unwatch dropped a table still covered by a prefix: Tables %v; events %s", tw.Tables(), w.rec)
	}
	if err := tw.UnwatchPrefix(ctx, prefix); err != nil {
		t.Fatal(err)
	}
	h.eventually("OnRemove of a, b and c once neither reason holds", func() bool {
		return w.rec.has("remove", x1, "a") && w.rec.has("remove", x1, "b") && w.rec.has("remove", x1, "c")
	}, func() string { return "events: " + w.rec.String() })
	if slices.Contains(tw.Tables(), x1) {
		t.Errorf("Tables() = %v still lists %s", tw.Tables(), x1)
	}

	// A table watched by name before it exists, that then appears under a
	// watched prefix, is covered by the prefix too: Unwatch keeps it.
	prefix2 := h.table("staging")
	y := prefix2 + "/v1/game"
	if err := tw.Watch(ctx, y); err != nil {
		t.Fatal(err)
	}
	if err := tw.WatchPrefix(ctx, prefix2); err != nil {
		t.Fatal(err)
	}
	h.start(y, "d")
	// A later table under the prefix, which only the prefix can find: once
	// it is seen, the prefix has found y too (on a store whose discovery
	// trails the named table's own sync).
	h.start(prefix2+"/v2/game", "f")
	h.sees(w, y, "d")
	h.sees(w, prefix2+"/v2/game", "f")
	if err := tw.Unwatch(ctx, y); err != nil {
		t.Fatal(err)
	}
	h.start(y, "e")
	h.sees(w, y, "d,e")
	if w.rec.has("remove", y, "d") || !slices.Contains(tw.Tables(), y) {
		t.Errorf("Unwatch dropped a table that appeared under a watched prefix: Tables %v; events %s", tw.Tables(), w.rec)
	}
}

func sorted(s ...string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
