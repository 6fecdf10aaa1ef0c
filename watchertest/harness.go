package watchertest

// harness.go: what every subtest uses: building and starting watchers through
// the Factory, stopping them at cleanup, polling with a deadline, letting
// store time pass, and checking the recorders' invariants at the end.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svcwatch/svcwatch"
)

// harness is one subtest's view of the Factory.
type harness struct {
	t    *testing.T
	f    Factory
	base string // the subtest's own table root

	mu    sync.Mutex
	nodes []*node
}

// node is one process of a subtest: its watcher and what its handler heard.
type node struct {
	w       svcwatch.Watcher
	rec     *recorder
	crashed bool // guarded by harness.mu
	stopped bool // guarded by harness.mu
}

func newHarness(t *testing.T, f Factory, run string) *harness {
	h := &harness{t: t, f: f, base: tableBase(run, t.Name())}
	// Registered first, so it runs after every Stop.
	t.Cleanup(h.checkBreaches)
	return h
}

// table returns a table of this subtest.
func (h *harness) table(name string) string { return h.base + "/" + name }

// self returns the Instance of process id in table, with an address of its own.
func self(table, id string) svcwatch.Instance {
	return svcwatch.Instance{Table: table, ID: id, Name: "10.9.0.1:" + id}
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// build makes an unstarted watcher for inst through the Factory, with the
// suite's options first; Stop runs at cleanup unless the node crashed.
func (h *harness) build(inst svcwatch.Instance, opts ...svcwatch.Option) (*node, error) {
	h.t.Helper()
	rec := &recorder{}
	all := []svcwatch.Option{
		svcwatch.WithTTL(h.f.TTL), svcwatch.WithKeepAliveInterval(h.f.KeepAlive),
		svcwatch.WithHandler(rec), svcwatch.WithLogger(quietLogger()),
	}
	all = append(all, opts...)
	w, err := h.f.New(h.t, inst, all...)
	if err != nil {
		return nil, err
	}
	if w == nil {
		h.t.Fatalf("Factory.New(%s) returned a nil watcher and no error", inst.Key())
	}
	if s := w.Self(); s.ID != "" {
		rec.selfKey = s.Key()
	}
	n := &node{w: w, rec: rec}
	h.mu.Lock()
	h.nodes = append(h.nodes, n)
	h.mu.Unlock()
	h.t.Cleanup(func() { h.stop(n) })
	return n, nil
}

// mustBuild is build that fails the test on error.
func (h *harness) mustBuild(inst svcwatch.Instance, opts ...svcwatch.Option) *node {
	h.t.Helper()
	n, err := h.build(inst, opts...)
	if err != nil {
		h.t.Fatalf("build %s: %v", inst.Key(), err)
	}
	return n
}

// startErr builds and starts a watcher, returning Start's error.
func (h *harness) startErr(inst svcwatch.Instance, opts ...svcwatch.Option) (*node, error) {
	h.t.Helper()
	n := h.mustBuild(inst, opts...)
	ctx, cancel := context.WithTimeout(context.Background(), h.f.Timeout)
	defer cancel()
	return n, n.w.Start(ctx)
}

// start builds and starts process id in table; it fails the test if Start fails.
func (h *harness) start(table, id string, opts ...svcwatch.Option) *node {
	h.t.Helper()
	return h.startInst(self(table, id), opts...)
}

func (h *harness) startInst(inst svcwatch.Instance, opts ...svcwatch.Option) *node {
	h.t.Helper()
	n, err := h.startErr(inst, opts...)
	if err != nil {
		h.t.Fatalf("start %s: %v", inst.Key(), err)
	}
	return n
}

// watcher starts a watch-only watcher of table.
func (h *harness) watcher(table string, opts ...svcwatch.Option) *node {
	h.t.Helper()
	return h.startInst(svcwatch.Instance{Table: table}, append([]svcwatch.Option{svcwatch.WatchOnly()}, opts...)...)
}

// stop stops n (once; never a crashed node) and marks its recorder, so that
// a handler call after it is a breach.
func (h *harness) stop(n *node) error {
	h.mu.Lock()
	skip := n.crashed || n.stopped
	n.stopped = true
	h.mu.Unlock()
	if skip {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), h.f.Timeout)
	defer cancel()
	err := n.w.Stop(ctx)
	n.rec.markStopped()
	if err != nil {
		h.t.Errorf("Stop %s: %v", n.w.Self().Key(), err)
	}
	return err
}

// crash ends n as SIGKILL would, through the Factory; it skips the subtest if
// the Factory cannot.
func (h *harness) crash(n *node) {
	h.t.Helper()
	if h.f.Crash == nil {
		h.t.Skip("watchertest: Factory.Crash is nil: the backend cannot simulate a crash")
	}
	h.mu.Lock()
	n.crashed = true
	h.mu.Unlock()
	h.f.Crash(h.t, n.w)
	n.rec.markStopped()
}

func (h *harness) checkBreaches() {
	h.mu.Lock()
	nodes := append([]*node(nil), h.nodes...)
	h.mu.Unlock()
	for _, n := range nodes {
		for _, b := range n.rec.breaches() {
			h.t.Errorf("watcher %s: %s", n.w.Self().Key(), b)
		}
	}
}

// eventually polls cond until it holds or the suite's timeout passes; then it
// fails the test with what and the detail detail returns (if any).
func (h *harness) eventually(what string, cond func() bool, detail ...func() string) {
	h.t.Helper()
	deadline := time.Now().Add(h.f.Timeout)
	for !cond() {
		if time.Now().After(deadline) {
			msg := "timed out waiting for " + what
			for _, d := range detail {
				msg += "\n" + d()
			}
			h.t.Fatal(msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sees waits until n's view of table lists exactly ids (sorted, comma-separated).
// Events trail the view: it also waits until n's handler was told of the same
// peers (self never is), so that what follows may count events.
func (h *harness) sees(n *node, table, ids string) {
	h.t.Helper()
	var peers []string
	self := n.w.Self()
	for _, id := range strings.Split(ids, ",") {
		if id != "" && (id != self.ID || table != self.Table) {
			peers = append(peers, id)
		}
	}
	told := strings.Join(peers, ",")
	h.eventually(fmt.Sprintf("%s to see %s = [%s]", name(n), table, ids),
		func() bool { return idsOf(n.w.Services(table)) == ids && n.rec.known(table) == told },
		func() string {
			return fmt.Sprintf("it sees [%s], its handler was told of [%s]; events: %s",
				idsOf(n.w.Services(table)), n.rec.known(table), n.rec)
		})
}

// passTime lets store time pass d while the live nodes keep heartbeating: on a
// store with a standing clock it moves the clock in steps of TTL/5, each after
// every live node heartbeated again; on real time it does nothing (the caller
// polls for the outcome).
func (h *harness) passTime(d time.Duration, live ...*node) {
	h.t.Helper()
	if h.f.AdvanceTime == nil {
		return
	}
	step := h.f.TTL / 5
	for passed := time.Duration(0); passed < d; passed += step {
		for _, n := range live {
			mark := n.w.Stats().Heartbeats
			h.eventually("a heartbeat of "+name(n), func() bool { return n.w.Stats().Heartbeats > mark })
		}
		h.f.AdvanceTime(step)
	}
}

func name(n *node) string {
	s := n.w.Self()
	if s.ID == "" {
		return "watch-only watcher of " + s.Table
	}
	return s.Key()
}

func idsOf(insts []svcwatch.Instance) string {
	s := make([]string, len(insts))
	for i, inst := range insts {
		s[i] = inst.ID
	}
	return strings.Join(s, ",")
}
