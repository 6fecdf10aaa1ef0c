package watchertest

// lifecycle.go: the subtests about a process's life: a clean Stop, a crash,
// a restart with the same ID (a new incarnation) and a second process claiming
// a live ID (ErrDuplicateID).

import (
	"errors"
	"sync"
	"time"

	"github.com/svcwatch/svcwatch"
)

// Stop deregisters (peers hear at once, not after the TTL), is idempotent,
// and leaves a watcher that refuses to start again.
func testStop(h *harness) {
	t := h.t
	tb := h.table("game")
	// A TTL longer than the suite's timeout: if peers hear of the stop, it was
	// the deregistration, not the expiry.
	long := 4 * h.f.Timeout
	p := h.start(tb, "p", svcwatch.WithTTL(long), svcwatch.WithKeepAliveInterval(long/5))
	w := h.start(tb, "w")
	h.sees(w, tb, "p,w")
	began := time.Now()
	if err := h.stop(p); err != nil {
		t.Fatal(err)
	}
	h.eventually("w to hear p removed", func() bool { return w.rec.has("remove", tb, "p") })
	t.Logf("a clean stop reached a peer in %v", time.Since(began).Round(time.Millisecond))
	if st := p.w.Stats(); st.Registered {
		t.Errorf("Stats().Registered after Stop = true")
	}
	if err := p.w.Stop(h.ctx()); err != nil {
		t.Errorf("second Stop = %v, want nil", err)
	}
	if err := p.w.Start(h.ctx()); !errors.Is(err, svcwatch.ErrStopped) {
		t.Errorf("Start after Stop = %v, want ErrStopped", err)
	}
	if err := p.w.Watch(h.ctx(), h.table("other")); !errors.Is(err, svcwatch.ErrStopped) {
		t.Errorf("Watch after Stop = %v, want ErrStopped", err)
	}
	if err := p.w.SetDesc(h.ctx(), "x"); !errors.Is(err, svcwatch.ErrStopped) {
		t.Errorf("SetDesc after Stop = %v, want ErrStopped", err)
	}
	// Stop of a watcher never started is fine too.
	idle := h.mustBuild(self(tb, "idle"))
	if err := h.stop(idle); err != nil {
		t.Errorf("Stop of a watcher never started = %v", err)
	}
	if w.rec.has("add", tb, "idle") {
		t.Errorf("a watcher never started was seen: %s", w.rec)
	}
}

// After Stop returns, no handler of the stopped watcher is called, whatever
// its peers do (the recorder reports a breach at cleanup).
func testNoHandlerAfterStop(h *harness) {
	tb := h.table("game")
	s := h.start(tb, "s")
	w := h.start(tb, "w")
	if err := h.stop(s); err != nil {
		h.t.Fatal(err)
	}
	for _, id := range []string{"a", "b", "c"} {
		h.start(tb, id)
	}
	h.sees(w, tb, "a,b,c,w")
	if n := s.rec.count("add", tb, "a"); n != 0 {
		h.t.Errorf("the stopped watcher heard of a")
	}
}

// A Start with a live ID and the same Name is a restart: the old incarnation
// is replaced at once; peers hear OnRemove(old) then OnAdd(new); the old one
// stands down (Registered false, WithOnRegistrationLost told with
// ErrReplaced) and its Stop does not remove the new one.
func testRestart(h *harness) {
	t := h.t
	tb := h.table("game")
	w := h.start(tb, "w")
	var (
		mu   sync.Mutex
		lost []error
	)
	onLost := svcwatch.WithOnRegistrationLost(func(_ svcwatch.Instance, err error) {
		mu.Lock()
		lost = append(lost, err)
		mu.Unlock()
	})
	old := h.start(tb, "p", onLost)
	h.sees(w, tb, "p,w")
	oldInc := old.w.Self().Incarnation

	cur := h.start(tb, "p")
	newInc := cur.w.Self().Incarnation
	if newInc == "" || newInc == oldInc {
		t.Fatalf("the restart's incarnation %q, the old one %q: want a new one", newInc, oldInc)
	}
	h.eventually("w to hear the new incarnation", func() bool {
		inst, _ := w.w.Lookup(tb, "p")
		return inst.Incarnation == newInc && w.rec.count("add", tb, "p") == 2
	}, func() string { return "events: " + w.rec.String() })
	evs := w.rec.about(tb, "p")
	if len(evs) != 3 || evs[0].op != "add" || evs[1].op != "remove" || evs[2].op != "add" ||
		evs[1].inst.Incarnation != oldInc || evs[2].inst.Incarnation != newInc {
		t.Errorf("p's events at w = %v, want add(old), remove(old %s), add(new %s)", evs, short(oldInc), short(newInc))
	}
	h.eventually("the old incarnation to stand down", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(lost) > 0 && !old.w.Stats().Registered
	})
	mu.Lock()
	if !errors.Is(lost[0], svcwatch.ErrReplaced) {
		t.Errorf("WithOnRegistrationLost got %v, want ErrReplaced", lost[0])
	}
	mu.Unlock()
	if !cur.w.Stats().Registered {
		t.Errorf("the new incarnation is not registered")
	}

	// The old one's Stop must not deregister the new one.
	if err := h.stop(old); err != nil {
		t.Errorf("Stop of the replaced incarnation: %v", err)
	}
	h.start(tb, "probe")
	h.sees(w, tb, "p,probe,w")
	if inst, _ := w.w.Lookup(tb, "p"); inst.Incarnation != newInc || w.rec.count("remove", tb, "p") != 1 {
		t.Errorf("after the old incarnation stopped, w has p@%s; events: %s", short(inst.Incarnation), w.rec)
	}
}

// A Start with a live ID and another Name is a second process: ErrDuplicateID,
// and the holder is untouched. Once the holder stops, the ID is free.
func testDuplicate(h *harness) {
	t := h.t
	tb := h.table("game")
	w := h.start(tb, "w")
	holder := h.start(tb, "p")
	h.sees(w, tb, "p,w")
	inc := holder.w.Self().Incarnation

	dup := self(tb, "p")
	dup.Name = "10.9.0.2:other"
	n, err := h.startErr(dup)
	if !errors.Is(err, svcwatch.ErrDuplicateID) {
		t.Fatalf("Start of a second process with a live ID = %v, want ErrDuplicateID", err)
	}
	if err := h.stop(n); err != nil {
		t.Errorf("Stop after a failed Start: %v", err)
	}
	h.start(tb, "probe")
	h.sees(w, tb, "p,probe,w")
	if inst, _ := w.w.Lookup(tb, "p"); inst.Incarnation != inc || inst.Name != holder.w.Self().Name ||
		w.rec.count("remove", tb, "p") != 0 || w.rec.count("add", tb, "p") != 1 {
		t.Errorf("the holder was touched: w has p@%s at %s; events: %s", short(inst.Incarnation), inst.Name, w.rec)
	}
	mark := holder.w.Stats().Heartbeats
	h.eventually("the holder to keep heartbeating", func() bool { return holder.w.Stats().Heartbeats > mark })
	if !holder.w.Stats().Registered {
		t.Errorf("the holder is no longer registered")
	}

	if err := h.stop(holder); err != nil {
		t.Fatal(err)
	}
	second := h.startInst(dup)
	h.eventually("w to see the second process at its address", func() bool {
		inst, _ := w.w.Lookup(tb, "p")
		return inst.Incarnation == second.w.Self().Incarnation && inst.Name == dup.Name
	})
}

// WithoutRestartReplace: any live holder, even at the same Name, makes Start
// fail with ErrDuplicateID.
func testDuplicateWithoutRestartReplace(h *harness) {
	t := h.t
	tb := h.table("game")
	w := h.start(tb, "w")
	holder := h.start(tb, "p")
	h.sees(w, tb, "p,w")
	n, err := h.startErr(self(tb, "p"), svcwatch.WithoutRestartReplace())
	if !errors.Is(err, svcwatch.ErrDuplicateID) {
		t.Fatalf("Start with the same Name and WithoutRestartReplace = %v, want ErrDuplicateID", err)
	}
	_ = h.stop(n)
	h.start(tb, "probe")
	h.sees(w, tb, "p,probe,w")
	if inst, _ := w.w.Lookup(tb, "p"); inst.Incarnation != holder.w.Self().Incarnation || w.rec.count("remove", tb, "p") != 0 {
		t.Errorf("the holder was touched; events: %s", w.rec)
	}
}

// A process that stops heartbeating without deregistering is removed at its
// peers about a TTL later; the live ones are not.
func testCrash(h *harness) {
	t := h.t
	tb := h.table("game")
	a, b, c := h.start(tb, "a"), h.start(tb, "b"), h.start(tb, "c")
	for _, n := range []*node{a, b, c} {
		h.sees(n, tb, "a,b,c")
	}
	h.crash(a)
	began := time.Now()
	h.passTime(h.f.TTL+h.f.TTL/2, b, c)
	for _, n := range []*node{b, c} {
		h.eventually(name(n)+" to hear a removed", func() bool { return n.rec.has("remove", tb, "a") },
			func() string { return "events: " + n.rec.String() })
	}
	if h.f.AdvanceTime == nil {
		t.Logf("a crash was detected at the peers %v after it (TTL %v)", time.Since(began).Round(time.Millisecond), h.f.TTL)
	}
	if b.rec.has("remove", tb, "c") || c.rec.has("remove", tb, "b") {
		t.Errorf("a live process was removed: b heard %s; c heard %s", b.rec, c.rec)
	}
	for _, n := range []*node{b, c} {
		if !n.w.Stats().Registered {
			t.Errorf("%s is no longer registered", name(n))
		}
	}
}

// An expired holder does not block its ID: another process (another Name)
// takes it.
func testExpiredHolderReplaced(h *harness) {
	t := h.t
	tb := h.table("game")
	w := h.start(tb, "w")
	p := h.start(tb, "p")
	h.sees(w, tb, "p,w")
	h.crash(p)
	h.passTime(h.f.TTL+h.f.TTL/2, w)
	h.eventually("w to hear p expire", func() bool { return w.rec.has("remove", tb, "p") })
	other := self(tb, "p")
	other.Name = "10.9.0.2:other"
	n, err := h.startErr(other)
	if err != nil {
		t.Fatalf("Start with the ID of an expired process: %v", err)
	}
	h.eventually("w to see the new holder", func() bool {
		inst, _ := w.w.Lookup(tb, "p")
		return inst.Incarnation == n.w.Self().Incarnation && inst.Name == other.Name
	})
}
