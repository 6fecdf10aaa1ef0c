package watchertest

// self.go: the subtests about what a process says of itself: SetDesc,
// SetMeta, SetState (peers get OnUpdate; observers get copies) and Drain.

import (
	"context"
	"errors"
	"maps"
	"strconv"
	"sync/atomic"

	"github.com/svcwatch/svcwatch"
)

// waitUpdate waits until w heard an OnUpdate of table/id whose current
// instance satisfies ok, and returns that event.
func (h *harness) waitUpdate(w *node, table, id, what string, ok func(svcwatch.Instance) bool) event {
	h.t.Helper()
	var got event
	h.eventually(name(w)+" to hear "+what, func() bool {
		for _, e := range w.rec.about(table, id) {
			if e.op == "update" && ok(e.inst) {
				got = e
				return true
			}
		}
		return false
	}, func() string { return "events: " + w.rec.String() })
	return got
}

// SetDesc: peers get OnUpdate(old, cur) with the same incarnation; Self shows it.
func testSetDesc(h *harness) {
	t := h.t
	tb := h.table("game")
	p := h.startInst(svcwatch.Instance{Table: tb, ID: "p", Name: "10.9.0.1:p", Desc: `{"v":1}`})
	w := h.start(tb, "w")
	if err := p.w.SetDesc(h.ctx(), `{"v":2}`); err != nil {
		t.Fatalf("SetDesc: %v", err)
	}
	if got := p.w.Self().Desc; got != `{"v":2}` {
		t.Errorf("Self().Desc = %q after SetDesc", got)
	}
	e := h.waitUpdate(w, tb, "p", "the new desc", func(i svcwatch.Instance) bool { return i.Desc == `{"v":2}` })
	if e.old.Desc != `{"v":1}` || e.old.Incarnation != e.inst.Incarnation || e.inst.Incarnation != p.w.Self().Incarnation {
		t.Errorf("OnUpdate(old %+v, cur %+v): want the old desc and one incarnation", e.old, e.inst)
	}
	var v struct{ V int }
	if err := e.inst.Decode(&v); err != nil || v.V != 2 {
		t.Errorf("Decode of the new desc = %+v, %v", v, err)
	}
	if w.rec.count("remove", tb, "p") != 0 {
		t.Errorf("SetDesc made peers remove the process: %s", w.rec)
	}
}

// SetMeta: peers get OnUpdate; every map handed out is the caller's own.
func testSetMeta(h *harness) {
	t := h.t
	tb := h.table("game")
	p := h.startInst(svcwatch.Instance{Table: tb, ID: "p", Name: "10.9.0.1:p", Meta: map[string]string{"zone": "1"}})
	w := h.start(tb, "w")
	if got, _ := w.w.Lookup(tb, "p"); got.Meta["zone"] != "1" {
		t.Errorf("the initial Meta did not reach a peer: %v", got.Meta)
	}
	meta := map[string]string{"zone": "2", "weight": "3"}
	if err := p.w.SetMeta(h.ctx(), meta); err != nil {
		t.Fatalf("SetMeta: %v", err)
	}
	meta["zone"] = "mutated by the caller"
	if got := p.w.Self().Meta; !maps.Equal(got, map[string]string{"zone": "2", "weight": "3"}) {
		t.Errorf("Self().Meta = %v: the watcher must keep a copy", got)
	}
	s := p.w.Self()
	s.Meta["zone"] = "mutated by an observer"
	if got := p.w.Self().Meta["zone"]; got != "2" {
		t.Errorf("Self().Meta shares its map with the watcher (zone = %q)", got)
	}
	e := h.waitUpdate(w, tb, "p", "the new meta", func(i svcwatch.Instance) bool { return i.Meta["zone"] == "2" })
	if e.old.Meta["zone"] != "1" || e.inst.Weight() != 3 {
		t.Errorf("OnUpdate old meta %v, cur meta %v (weight %d)", e.old.Meta, e.inst.Meta, e.inst.Weight())
	}
	got, _ := w.w.Lookup(tb, "p")
	got.Meta["zone"] = "mutated"
	if again, _ := w.w.Lookup(tb, "p"); again.Meta["zone"] != "2" {
		t.Errorf("Lookup shares its Meta map with the watcher")
	}
	// Empty Meta is none.
	if err := p.w.SetMeta(h.ctx(), nil); err != nil {
		t.Fatalf("SetMeta(nil): %v", err)
	}
	h.waitUpdate(w, tb, "p", "meta cleared", func(i svcwatch.Instance) bool { return len(i.Meta) == 0 })
}

// SetState: peers get OnUpdate with the new state; Self and Stats show it.
func testSetState(h *harness) {
	t := h.t
	tb := h.table("game")
	p := h.start(tb, "p")
	w := h.start(tb, "w")
	for _, s := range []svcwatch.State{svcwatch.Draining, svcwatch.Unhealthy, svcwatch.Serving} {
		if err := p.w.SetState(h.ctx(), s); err != nil {
			t.Fatalf("SetState(%v): %v", s, err)
		}
		if got := p.w.Self().State; got != s {
			t.Errorf("Self().State = %v after SetState(%v)", got, s)
		}
		if got := p.w.Stats().State; got != s {
			t.Errorf("Stats().State = %v after SetState(%v)", got, s)
		}
		h.eventually("w to see p "+s.String(), func() bool {
			inst, _ := w.w.Lookup(tb, "p")
			return inst.State == s
		})
	}
	if n := w.rec.count("update", tb, "p"); n < 1 || w.rec.count("remove", tb, "p") != 0 {
		t.Errorf("events at w: %s; want updates and no remove", w.rec)
	}
}

// What is set before Start is what Start registers.
func testSetBeforeStart(h *harness) {
	t := h.t
	tb := h.table("game")
	w := h.start(tb, "w")
	p := h.mustBuild(self(tb, "p"))
	ctx := h.ctx()
	if err := p.w.SetDesc(ctx, "early"); err != nil {
		t.Fatalf("SetDesc before Start: %v", err)
	}
	if err := p.w.SetMeta(ctx, map[string]string{"k": "v"}); err != nil {
		t.Fatalf("SetMeta before Start: %v", err)
	}
	if err := p.w.SetState(ctx, svcwatch.Draining); err != nil {
		t.Fatalf("SetState before Start: %v", err)
	}
	if err := p.w.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	h.eventually("w to hear p added", func() bool { return w.rec.has("add", tb, "p") })
	add := w.rec.about(tb, "p")[0].inst
	if add.Desc != "early" || add.Meta["k"] != "v" || add.State != svcwatch.Draining {
		t.Errorf("p was added as %+v; want the desc, meta and state set before Start", add)
	}
}

// Drain: peers see Draining while wait runs (Pick skips it), then OnRemove.
func testDrain(h *harness) {
	t := h.t
	tb := h.table("game")
	p := h.start(tb, "p")
	h.start(tb, "q")
	w := h.start(tb, "w")
	h.sees(w, tb, "p,q,w")
	waited := false
	err := p.w.Drain(h.ctx(), func(ctx context.Context) error {
		waited = true
		h.eventually("w to see p draining", func() bool {
			inst, _ := w.w.Lookup(tb, "p")
			return inst.State == svcwatch.Draining
		})
		for _, k := range keys(200) {
			if inst, ok := w.w.Pick(tb, k); ok && inst.ID == "p" {
				t.Errorf("Pick(%q) chose p while it drains", k)
				break
			}
		}
		return nil
	})
	if err != nil || !waited {
		t.Fatalf("Drain = %v (wait called: %v)", err, waited)
	}
	p.rec.markStopped()
	h.eventually("w to hear p removed", func() bool { return w.rec.has("remove", tb, "p") })
	if err := p.w.Start(h.ctx()); !errors.Is(err, svcwatch.ErrStopped) {
		t.Errorf("Start after Drain = %v, want ErrStopped", err)
	}
}

// Drain whose wait fails: the error comes back and the process stays
// registered and draining.
func testDrainWaitFails(h *harness) {
	t := h.t
	tb := h.table("game")
	p := h.start(tb, "p")
	w := h.start(tb, "w")
	boom := errors.New("watchertest: players still online")
	if err := p.w.Drain(h.ctx(), func(context.Context) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("Drain = %v, want the wait's error", err)
	}
	if st := p.w.Stats(); !st.Registered || st.State != svcwatch.Draining {
		t.Errorf("after a failed Drain, Stats() = %+v; want registered and draining", st)
	}
	h.eventually("w to see p draining", func() bool {
		inst, _ := w.w.Lookup(tb, "p")
		return inst.State == svcwatch.Draining
	})
	if w.rec.has("remove", tb, "p") {
		t.Errorf("a failed Drain removed the process: %s", w.rec)
	}
	// It can go back to serving.
	if err := p.w.SetState(h.ctx(), svcwatch.Serving); err != nil {
		t.Fatalf("SetState(Serving): %v", err)
	}
	h.eventually("w to see p serving again", func() bool {
		inst, _ := w.w.Lookup(tb, "p")
		return inst.State == svcwatch.Serving
	})
}

// WithHealthCheck: a failing check makes the process Unhealthy at its peers
// (Pick skips it); the first passing check restores the state it had set.
func testHealthCheck(h *harness) {
	t := h.t
	tb := h.table("game")
	var sick atomic.Bool
	check := svcwatch.WithHealthCheck(func(context.Context) error {
		if sick.Load() {
			return errors.New("watchertest: the game loop hangs")
		}
		return nil
	})
	p := h.start(tb, "p", check)
	w := h.start(tb, "w")
	h.sees(w, tb, "p,w")
	sick.Store(true)
	h.eventually("w to see p unhealthy", func() bool {
		inst, _ := w.w.Lookup(tb, "p")
		return inst.State == svcwatch.Unhealthy
	})
	if st := p.w.Stats(); st.State != svcwatch.Unhealthy || !st.Registered {
		t.Errorf("Stats() of the unhealthy process = %+v; want registered and unhealthy", st)
	}
	for _, k := range keys(100) {
		if inst, _ := w.w.Pick(tb, k); inst.ID == "p" {
			t.Fatalf("Pick(%q) chose the unhealthy process", k)
		}
	}
	sick.Store(false)
	h.eventually("w to see p serving again", func() bool {
		inst, _ := w.w.Lookup(tb, "p")
		return inst.State == svcwatch.Serving
	})
	if w.rec.has("remove", tb, "p") {
		t.Errorf("a failing health check removed the process: %s", w.rec)
	}
}

func keys(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = "player-" + strconv.Itoa(i)
	}
	return out
}
