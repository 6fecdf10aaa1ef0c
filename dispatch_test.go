package svcwatch

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Unit tests of the dispatcher, without Redis: merging, ordering, the bounded
// backlog, panics, flush, stop and wait.

// hookHandler records every event in rec, after calling hook (when set) on the
// dispatch goroutine; hook may block or panic.
type hookHandler struct {
	rec  *recorder
	hook func(op string, inst Instance)
}

func (h *hookHandler) call(op string, inst Instance) {
	if h.hook != nil {
		h.hook(op, inst)
	}
}

func (h *hookHandler) OnAdd(inst Instance) { h.call("add", inst); h.rec.OnAdd(inst) }
func (h *hookHandler) OnUpdate(old, cur Instance) {
	h.call("update", cur)
	h.rec.OnUpdate(old, cur)
}
func (h *hookHandler) OnRemove(inst Instance) { h.call("remove", inst); h.rec.OnRemove(inst) }

// gate blocks a handler until the test opens it.
type gate struct {
	entered chan struct{} // gets a value each time a handler blocks
	release chan struct{}
	once    sync.Once
}

func newGate() *gate {
	return &gate{entered: make(chan struct{}, 1), release: make(chan struct{})}
}

// block is called by a handler: it waits until open.
func (g *gate) block() {
	select {
	case g.entered <- struct{}{}:
	default:
	}
	<-g.release
}

func (g *gate) open() { g.once.Do(func() { close(g.release) }) }

// waitEntered waits until a handler is blocked in the gate.
func (g *gate) waitEntered(t *testing.T) {
	t.Helper()
	select {
	case <-g.entered:
	case <-time.After(waitTimeout):
		t.Fatal("timed out waiting for the handler to block")
	}
}

// gatedHandler returns a handler that records into rec and blocks in g on any
// event about the instance with ID "gate".
func gatedHandler(rec *recorder, g *gate) *hookHandler {
	return &hookHandler{rec: rec, hook: func(op string, inst Instance) {
		if inst.ID == "gate" {
			g.block()
		}
	}}
}

func dInst(id, incarnation, desc string) Instance {
	return Instance{Table: "t", ID: id, Name: "127.0.0.1:" + id, Incarnation: incarnation, Desc: desc}
}

func enq(d *dispatcher, inst Instance) { d.enqueue(inst.Key(), &inst) }

// startDispatcher runs d; at cleanup it stops d and waits for its goroutine. Gates
// given are opened first, so that a blocked handler cannot hold up the cleanup.
func startDispatcher(t *testing.T, d *dispatcher, gates ...*gate) {
	t.Helper()
	go d.run()
	t.Cleanup(func() {
		for _, g := range gates {
			g.open()
		}
		d.stop()
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if err := d.wait(ctx); err != nil {
			t.Errorf("dispatcher did not end after stop: %v", err)
		}
	})
}

func flushOK(t *testing.T, d *dispatcher) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := d.flush(ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
}

// describe renders events with their descs: "add a@1 d0, update a@1 d0->d1".
func describe(evs []event) string {
	var s []string
	for _, e := range evs {
		x := e.op + " " + e.inst.ID + "@" + e.inst.Incarnation + " "
		if e.op == "update" {
			x += e.old.Desc + "->"
		}
		s = append(s, x+e.inst.Desc)
	}
	return strings.Join(s, ", ")
}

func expectEvents(t *testing.T, rec *recorder, want string) {
	t.Helper()
	if got := describe(rec.events()); got != want {
		t.Errorf("events:\n got  %s\n want %s", got, want)
	}
	if rec.overlappedCalls() {
		t.Error("handler calls overlapped")
	}
}

func TestDispatchMergesPerKey(t *testing.T) {
	checkLeaks(t)
	g := newGate()
	rec := &recorder{}
	d := newDispatcher([]Handler{gatedHandler(rec, g)}, "", quietLogger())
	// Before run starts: many changes to one key merge into its latest state.
	for i := 0; i <= 1000; i++ {
		enq(d, dInst("a", "1", fmt.Sprintf("d%d", i)))
	}
	startDispatcher(t, d, g)
	flushOK(t, d)
	expectEvents(t, rec, "add a@1 d1000")

	// Changes to a key the handler knows, made while it is busy, merge into one
	// update from what it was told to the latest.
	enq(d, dInst("gate", "1", "g"))
	g.waitEntered(t)
	for i := 1001; i <= 2000; i++ {
		enq(d, dInst("a", "1", fmt.Sprintf("d%d", i)))
	}
	g.open()
	flushOK(t, d)
	expectEvents(t, rec, "add a@1 d1000, add gate@1 g, update a@1 d1000->d2000")
}

func TestDispatchNewIncarnationIsRemoveThenAdd(t *testing.T) {
	checkLeaks(t)
	g := newGate()
	rec := &recorder{}
	d := newDispatcher([]Handler{gatedHandler(rec, g)}, "", quietLogger())
	startDispatcher(t, d, g)
	enq(d, dInst("a", "1", "x"))
	flushOK(t, d)

	// While the handler is busy, the old incarnation changes and then a new one
	// takes its place: merged, but told as remove(what it knew) then add(new).
	enq(d, dInst("gate", "1", "g"))
	g.waitEntered(t)
	enq(d, dInst("a", "1", "y"))
	enq(d, dInst("a", "2", "z"))
	g.open()
	flushOK(t, d)
	// A new incarnation with the same desc is still a remove and an add.
	enq(d, dInst("a", "3", "z"))
	flushOK(t, d)
	expectEvents(t, rec, "add a@1 x, add gate@1 g, remove a@1 x, add a@2 z, remove a@2 z, add a@3 z")
}

func TestDispatchAddThenRemoveDeliversNothing(t *testing.T) {
	checkLeaks(t)
	g := newGate()
	rec := &recorder{}
	d := newDispatcher([]Handler{gatedHandler(rec, g)}, "", quietLogger())
	a := dInst("a", "1", "x")
	enq(d, a)
	enq(d, dInst("a", "1", "y"))
	d.enqueue(a.Key(), nil)
	enq(d, dInst("b", "1", "x"))
	startDispatcher(t, d, g)
	flushOK(t, d)
	expectEvents(t, rec, "add b@1 x")

	// The same while the handler is busy; and once b is known, a remove then an
	// add of the same state tells nothing either: the latest state is what the
	// handler already has.
	b := dInst("b", "1", "x")
	c := dInst("c", "1", "x")
	enq(d, dInst("gate", "1", "g"))
	g.waitEntered(t)
	d.enqueue(b.Key(), nil)
	enq(d, b)
	enq(d, c)
	d.enqueue(c.Key(), nil)
	g.open()
	flushOK(t, d)
	expectEvents(t, rec, "add b@1 x, add gate@1 g")
}

func TestDispatchOrderFollowsFirstEnqueue(t *testing.T) {
	checkLeaks(t)
	g := newGate()
	rec := &recorder{}
	d := newDispatcher([]Handler{gatedHandler(rec, g)}, "", quietLogger())
	enq(d, dInst("c", "1", "c1"))
	enq(d, dInst("a", "1", "a1"))
	enq(d, dInst("b", "1", "b1"))
	enq(d, dInst("a", "1", "a2"))
	enq(d, dInst("c", "1", "c2"))
	enq(d, dInst("d", "1", "d1"))
	startDispatcher(t, d, g)
	flushOK(t, d)
	expectEvents(t, rec, "add c@1 c2, add a@1 a2, add b@1 b1, add d@1 d1")

	// After delivery a key goes to the back of the queue again.
	enq(d, dInst("gate", "1", "g"))
	g.waitEntered(t)
	enq(d, dInst("d", "1", "d2"))
	enq(d, dInst("c", "1", "c3"))
	enq(d, dInst("d", "1", "d3"))
	g.open()
	flushOK(t, d)
	expectEvents(t, rec, "add c@1 c2, add a@1 a2, add b@1 b1, add d@1 d1, add gate@1 g, "+
		"update d@1 d1->d3, update c@1 c2->c3")
}

func TestDispatchSkipsSelf(t *testing.T) {
	checkLeaks(t)
	rec := &recorder{}
	self := dInst("self", "1", "x")
	d := newDispatcher([]Handler{rec}, self.Key(), quietLogger())
	startDispatcher(t, d)
	enq(d, self)
	enq(d, dInst("a", "1", "x"))
	enq(d, dInst("self", "1", "y"))
	flushOK(t, d)
	enq(d, dInst("self", "2", "y"))
	d.enqueue(self.Key(), nil)
	enq(d, dInst("b", "1", "x"))
	flushOK(t, d)
	expectEvents(t, rec, "add a@1 x, add b@1 x")
}

func TestDispatchBacklogBounded(t *testing.T) {
	checkLeaks(t)
	const keys, changes = 100, 100_000
	g := newGate()
	rec := &recorder{}
	d := newDispatcher([]Handler{gatedHandler(rec, g)}, "", quietLogger())
	startDispatcher(t, d, g)
	enq(d, dInst("gate", "1", "g"))
	g.waitEntered(t)

	maxQueue, maxPending := 0, 0
	for i := 0; i < changes; i++ {
		enq(d, dInst(fmt.Sprintf("k%03d", i%keys), "1", fmt.Sprint(i)))
		if i%1000 == 999 {
			d.mu.Lock()
			maxQueue = max(maxQueue, len(d.queue))
			maxPending = max(maxPending, len(d.pending))
			d.mu.Unlock()
		}
	}
	t.Logf("after %d changes over %d keys with the handler blocked: queue %d, pending %d at most",
		changes, keys, maxQueue, maxPending)
	if maxQueue > keys || maxPending > keys {
		t.Errorf("backlog grew past one entry per key: queue %d, pending %d, keys %d", maxQueue, maxPending, keys)
	}
	if maxPending != keys {
		t.Errorf("pending holds %d keys, want all %d", maxPending, keys)
	}

	g.open()
	flushOK(t, d)
	evs := rec.events()
	if len(evs) != keys+1 {
		t.Fatalf("%d events delivered, want %d (one per key and the gate)", len(evs), keys+1)
	}
	for k, e := range evs[1:] {
		want := fmt.Sprint(changes - keys + k) // the last change to key k
		if e.op != "add" || e.inst.ID != fmt.Sprintf("k%03d", k) || e.inst.Desc != want {
			t.Errorf("event %d = %s %s desc %s, want add k%03d desc %s", k+1, e.op, e.inst.ID, e.inst.Desc, k, want)
		}
	}
}

func TestDispatchRecoversHandlerPanic(t *testing.T) {
	checkLeaks(t)
	logs := &logCounter{}
	first, second := &recorder{}, &recorder{}
	panicky := &hookHandler{rec: first, hook: func(op string, inst Instance) {
		if inst.ID == "boom" {
			panic("handler bug")
		}
	}}
	d := newDispatcher([]Handler{panicky, second}, "", logs.logger())
	startDispatcher(t, d)
	enq(d, dInst("boom", "1", "x"))
	enq(d, dInst("a", "1", "x"))
	flushOK(t, d)
	enq(d, dInst("boom", "1", "y"))
	enq(d, dInst("b", "1", "x"))
	flushOK(t, d)
	// The panicking handler missed the boom events but got the rest; the next
	// handler got them all.
	expectEvents(t, first, "add a@1 x, add b@1 x")
	expectEvents(t, second, "add boom@1 x, add a@1 x, update boom@1 x->y, add b@1 x")
	if n := logs.count("handler panicked"); n != 2 {
		t.Errorf("%d panics logged, want 2:\n%s", n, logs)
	}
}

func TestDispatchFlushWaitsForEarlierEvents(t *testing.T) {
	checkLeaks(t)
	g := newGate()
	rec := &recorder{}
	d := newDispatcher([]Handler{&hookHandler{rec: rec, hook: func(op string, inst Instance) {
		if inst.ID == "a" {
			g.block()
		}
	}}}, "", quietLogger())
	startDispatcher(t, d, g)
	enq(d, dInst("a", "1", "x"))
	enq(d, dInst("b", "1", "x"))
	enq(d, dInst("c", "1", "x"))
	g.waitEntered(t)

	type result struct {
		err error
		evs []event // what had been delivered when flush returned
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		err := d.flush(ctx)
		done <- result{err, rec.events()}
	}()
	// flush must not return while the handler is still on the first event.
	select {
	case r := <-done:
		t.Fatalf("flush returned (%v) while the first event was still being delivered", r.err)
	case <-time.After(100 * time.Millisecond):
	}
	g.open()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("flush: %v", r.err)
		}
		if got, want := describe(r.evs), "add a@1 x, add b@1 x, add c@1 x"; got != want {
			t.Errorf("when flush returned, delivered: %s; want %s", got, want)
		}
	case <-time.After(waitTimeout):
		t.Fatal("flush did not return after the events were delivered")
	}
}

func TestDispatchFlushAndWaitInsideHandlerReturnAtOnce(t *testing.T) {
	checkLeaks(t)
	rec := &recorder{}
	var d *dispatcher
	var mu sync.Mutex
	var errs []string
	h := &hookHandler{rec: rec, hook: func(op string, inst Instance) {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		var err error
		switch inst.ID {
		case "flush":
			err = d.flush(ctx)
		case "wait":
			err = d.wait(ctx)
		default:
			return
		}
		if err != nil {
			mu.Lock()
			errs = append(errs, fmt.Sprintf("%s in a handler: %v", inst.ID, err))
			mu.Unlock()
		}
	}}
	d = newDispatcher([]Handler{h}, "", quietLogger())
	startDispatcher(t, d)
	enq(d, dInst("flush", "1", "x"))
	enq(d, dInst("wait", "1", "x"))
	enq(d, dInst("a", "1", "x"))
	flushOK(t, d)
	// Events keep flowing afterwards.
	enq(d, dInst("b", "1", "x"))
	flushOK(t, d)
	expectEvents(t, rec, "add flush@1 x, add wait@1 x, add a@1 x, add b@1 x")
	mu.Lock()
	defer mu.Unlock()
	for _, e := range errs {
		t.Error(e)
	}
}

func TestDispatchStop(t *testing.T) {
	checkLeaks(t)
	g := newGate()
	var stopped atomic.Bool
	var lateCalls atomic.Int32
	first, second := &recorder{}, &recorder{}
	hook := func(op string, inst Instance) {
		if stopped.Load() {
			lateCalls.Add(1)
		}
		if inst.ID == "a" {
			g.block()
		}
	}
	late := func(op string, inst Instance) {
		if stopped.Load() {
			lateCalls.Add(1)
		}
	}
	d := newDispatcher([]Handler{&hookHandler{rec: first, hook: hook}, &hookHandler{rec: second, hook: late}},
		"", quietLogger())
	startDispatcher(t, d, g)
	enq(d, dInst("a", "1", "x"))
	enq(d, dInst("b", "1", "x"))
	enq(d, dInst("c", "1", "x"))
	g.waitEntered(t)

	// Two flushes wait behind the blocked handler.
	flushErrs := make(chan error, 2)
	for i := 0; i < 2; i++ {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			flushErrs <- d.flush(ctx)
		}()
	}
	eventually(t, "both flushes queued", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		n := 0
		for _, q := range d.queue {
			if q.barrier != nil {
				n++
			}
		}
		return n == 2
	})

	d.stop()
	stopped.Store(true)
	for i := 0; i < 2; i++ {
		select {
		case err := <-flushErrs:
			if !errors.Is(err, ErrStopped) {
				t.Errorf("a flush pending at stop returned %v, want ErrStopped", err)
			}
		case <-time.After(waitTimeout):
			t.Fatal("a flush pending at stop did not return")
		}
	}
	// A flush after stop fails at once; an enqueue after stop is dropped.
	if err := d.flush(context.Background()); !errors.Is(err, ErrStopped) {
		t.Errorf("flush after stop returned %v, want ErrStopped", err)
	}
	enq(d, dInst("d", "1", "x"))
	d.stop() // twice is fine

	g.open() // the event in progress finishes
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := d.wait(ctx); err != nil {
		t.Fatalf("wait after stop: %v", err)
	}
	if n := lateCalls.Load(); n != 0 {
		t.Errorf("%d handler calls after stop", n)
	}
	// The first handler finished the event it was in; nothing else was delivered,
	// not even that event to the second handler.
	expectEvents(t, first, "add a@1 x")
	expectEvents(t, second, "")
}
