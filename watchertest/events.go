package watchertest

// events.go: the subtests about discovery and events: who sees whom, the
// peers delivered before Start and Watch return, the order of one peer's
// events, and handlers that call their watcher or panic.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"

	"github.com/svcwatch/svcwatch"
)

// Three processes see each other (self included in Services, sorted, never
// in events), each peer added once; Stats counts what happened.
func testDiscover(h *harness) {
	t := h.t
	tb := h.table("game")
	a, b, c := h.start(tb, "a"), h.start(tb, "b"), h.start(tb, "c")
	for _, n := range []*node{a, b, c} {
		h.sees(n, tb, "a,b,c")
	}
	for _, n := range []*node{a, b, c} {
		me := n.w.Self().ID
		for _, id := range []string{"a", "b", "c"} {
			want := 1
			if id == me {
				want = 0
			}
			if got := n.rec.count("add", tb, id); got != want {
				t.Errorf("%s got %d OnAdd for %s, want %d; events: %s", me, got, id, want, n.rec)
			}
		}
		if got, ok := n.w.Lookup(tb, "b"); !ok || got.Name != self(tb, "b").Name || got.Incarnation == "" || got.RegisteredAt.IsZero() {
			t.Errorf("%s: Lookup(b) = %+v, %v; want b with its name, an incarnation and a registration time", me, got, ok)
		}
		if _, ok := n.w.Lookup(tb, "nobody"); ok {
			t.Errorf("%s: Lookup(nobody) found something", me)
		}
		s := n.w.Self()
		if s.Incarnation == "" || s.RegisteredAt.IsZero() {
			t.Errorf("%s: Self() = %+v, want an incarnation and a registration time after Start", me, s)
		}
		if got, _ := n.w.Lookup(tb, me); got.Incarnation != s.Incarnation {
			t.Errorf("%s: Lookup(self) incarnation %q, Self() %q", me, got.Incarnation, s.Incarnation)
		}
	}
	// Stats: registered, connected, loaded, counting events and heartbeats.
	mark := a.w.Stats().Heartbeats
	h.eventually("two more heartbeats of a", func() bool { return a.w.Stats().Heartbeats >= mark+2 })
	st := a.w.Stats()
	if !st.Registered || !st.Connected || st.FullLoads == 0 || st.LastSync.IsZero() {
		t.Errorf("a.Stats() = %+v: want Registered, Connected, FullLoads > 0, LastSync set", st)
	}
	if st.Events != uint64(a.rec.len()) {
		t.Errorf("a.Stats().Events = %d, but its handler was called %d times", st.Events, a.rec.len())
	}
	if st.State != svcwatch.Serving {
		t.Errorf("a.Stats().State = %v, want serving", st.State)
	}
}

// When Start returns, OnAdd has been delivered for every peer already there.
func testStartDeliversExisting(h *harness) {
	tb := h.table("game")
	h.start(tb, "a")
	h.start(tb, "b")
	c := h.start(tb, "c")
	// No waiting: Start's return is the promise.
	if !c.rec.has("add", tb, "a") || !c.rec.has("add", tb, "b") {
		h.t.Errorf("Start returned before OnAdd of the peers already present; events: %s", c.rec)
	}
	if got := idsOf(c.w.Services(tb)); got != "a,b,c" {
		h.t.Errorf("Services after Start = [%s], want [a,b,c]", got)
	}
}

// When Watch returns, the table is loaded and OnAdd delivered for its peers.
func testWatchDeliversExisting(h *harness) {
	t := h.t
	own, other := h.table("gate"), h.table("game")
	h.start(other, "g1")
	h.start(other, "g2")
	w := h.start(own, "gate")
	if got := w.w.Services(other); got != nil {
		t.Errorf("Services of a table not watched = %v, want nil", got)
	}
	if err := w.w.Watch(h.ctx(), other); err != nil {
		t.Fatalf("Watch: %v", err)
	}
	if !w.rec.has("add", other, "g1") || !w.rec.has("add", other, "g2") {
		t.Errorf("Watch returned before OnAdd of the table's peers; events: %s", w.rec)
	}
	if got := idsOf(w.w.Services(other)); got != "g1,g2" {
		t.Errorf("Services(%s) after Watch = [%s], want [g1,g2]", other, got)
	}
	if !slices.Contains(w.w.Tables(), other) || !slices.Contains(w.w.Tables(), own) {
		t.Errorf("Tables() = %v, want both %s and %s", w.w.Tables(), own, other)
	}
	// Watching it again is harmless: no second OnAdd.
	if err := w.w.Watch(h.ctx(), other); err != nil {
		t.Errorf("second Watch: %v", err)
	}
	// Later changes of the watched table arrive too.
	h.start(other, "g3")
	h.sees(w, other, "g1,g2,g3")
	if n := w.rec.count("add", other, "g1"); n != 1 {
		t.Errorf("g1 added %d times, want once; events: %s", n, w.rec)
	}
}

// WithTables: the tables are watched from Start, and loaded when it returns.
func testWithTables(h *harness) {
	own, other := h.table("gate"), h.table("game")
	h.start(other, "g1")
	w := h.start(own, "gate", svcwatch.WithTables(other))
	if !w.rec.has("add", other, "g1") {
		h.t.Errorf("Start with WithTables returned before OnAdd of g1; events: %s", w.rec)
	}
}

// A watch-only watcher sees everyone and is seen by no one.
func testWatchOnly(h *harness) {
	t := h.t
	tb := h.table("game")
	a := h.start(tb, "a")
	wo := h.watcher(tb)
	h.start(tb, "b")
	h.sees(wo, tb, "a,b")
	h.sees(a, tb, "a,b")
	// Events trail the view. Had the watch-only watcher registered (before b),
	// a would hear of it before b's add.
	h.eventually("a to hear b's add", func() bool { return a.rec.has("add", tb, "b") },
		func() string { return "events: " + a.rec.String() })
	if n := len(a.rec.events()); n != 1 {
		t.Errorf("a heard %d events, want 1 (b's add): the watch-only watcher must not register; events: %s", n, a.rec)
	}
	if st := wo.w.Stats(); st.Registered {
		t.Errorf("watch-only Stats().Registered = true")
	}
	if err := wo.w.SetDesc(h.ctx(), "x"); !errors.Is(err, svcwatch.ErrInvalid) {
		t.Errorf("SetDesc on a watch-only watcher = %v, want ErrInvalid", err)
	}
}

// One peer's events come in the order they were made: add, updates that
// follow each other (merging may skip some, never go back), remove; the
// latest state before the remove.
func testEventOrder(h *harness) {
	t := h.t
	tb := h.table("game")
	w := h.start(tb, "w")
	p := h.start(tb, "p")
	h.sees(w, tb, "p,w")
	const changes = 20
	for i := 1; i <= changes; i++ {
		if err := p.w.SetDesc(h.ctx(), "d"+strconv.Itoa(i)); err != nil {
			t.Fatalf("SetDesc %d: %v", i, err)
		}
	}
	// Heard, not only in the view: events trail it, and an update still
	// queued at the removal is merged into it.
	h.eventually("w to hear p's last desc", func() bool {
		evs := w.rec.about(tb, "p")
		return len(evs) > 0 && evs[len(evs)-1].inst.Desc == "d"+strconv.Itoa(changes)
	}, func() string { return "events: " + w.rec.String() })
	if err := h.stop(p); err != nil {
		t.Fatal(err)
	}
	h.eventually("w to hear p removed", func() bool { return w.rec.has("remove", tb, "p") })

	evs := w.rec.about(tb, "p")
	if len(evs) < 2 || evs[0].op != "add" || evs[len(evs)-1].op != "remove" {
		t.Fatalf("p's events = %v, want add, updates..., remove", evs)
	}
	last := 0
	prev := evs[0].inst
	for _, e := range evs[1 : len(evs)-1] {
		if e.op != "update" {
			t.Fatalf("p's events = %v: %s in the middle", evs, e.op)
		}
		if e.old.Desc != prev.Desc || e.old.Incarnation != prev.Incarnation {
			t.Errorf("update's old (desc %q) is not what was delivered before (desc %q)", e.old.Desc, prev.Desc)
		}
		n, _ := strconv.Atoi(e.inst.Desc[1:])
		if n <= last {
			t.Errorf("updates went back: desc d%d after d%d", n, last)
		}
		last, prev = n, e.inst
	}
	if rm := evs[len(evs)-1].inst; rm.Desc != "d"+strconv.Itoa(changes) || rm.Incarnation != evs[0].inst.Incarnation {
		t.Errorf("OnRemove carried desc %q incarnation %q, want the last state (d%d, %q)",
			rm.Desc, rm.Incarnation, changes, evs[0].inst.Incarnation)
	}
	t.Logf("%d changes reached the watcher as %d events (merging is allowed)", changes, len(evs))
}

// A handler may call its watcher's methods, Watch included, without a deadlock.
func testHandlerCallsWatcher(h *harness) {
	t := h.t
	tb, other := h.table("gate"), h.table("game")
	h.start(other, "g1")
	var (
		mu      sync.Mutex
		w       svcwatch.Watcher
		results []string
	)
	handler := svcwatch.HandlerFuncs{Add: func(inst svcwatch.Instance) {
		mu.Lock()
		me := w
		mu.Unlock()
		if inst.ID != "trigger" || me == nil {
			return
		}
		_ = me.Services(tb)
		_, _ = me.Lookup(tb, inst.ID)
		_ = me.Stats()
		_ = me.Self()
		_, _ = me.Pick(tb, "k")
		err := me.Watch(context.Background(), other)
		mu.Lock()
		results = append(results, fmt.Sprint(err))
		mu.Unlock()
	}}
	n := h.start(tb, "gate", svcwatch.WithHandler(handler))
	mu.Lock()
	w = n.w
	mu.Unlock()
	h.start(tb, "trigger")
	h.eventually("the handler's Watch to return", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(results) > 0
	})
	mu.Lock()
	if results[0] != "<nil>" {
		t.Errorf("Watch from a handler = %s, want nil", results[0])
	}
	mu.Unlock()
	h.eventually("g1 added after the handler's Watch", func() bool { return n.rec.has("add", other, "g1") })
}

// A handler that panics is recovered; later events still flow.
func testHandlerPanic(h *harness) {
	tb := h.table("game")
	panicked := make(chan struct{}, 1)
	bomb := svcwatch.HandlerFuncs{Add: func(inst svcwatch.Instance) {
		if inst.ID == "a" {
			select {
			case panicked <- struct{}{}:
			default:
			}
			panic("watchertest: a handler panics")
		}
	}}
	w := h.start(tb, "w", svcwatch.WithHandler(bomb))
	h.start(tb, "a")
	h.eventually("the panicking handler to run", func() bool { return len(panicked) == 1 })
	h.start(tb, "b")
	h.eventually("b added after the panic", func() bool { return w.rec.has("add", tb, "b") }, func() string { return w.rec.String() })
}
