package etcd

// helpers_test.go: processes for the etcd-specific tests: a watcher with a
// handler that records its events, started on a client of its own.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/svcwatch/svcwatch"
)

// recorder keeps the events a watcher's handler got.
type recorder struct {
	mu  sync.Mutex
	evs []string // "add id@inc", "update id", "remove id@inc"
}

func (r *recorder) note(s string) {
	r.mu.Lock()
	r.evs = append(r.evs, s)
	r.mu.Unlock()
}

func (r *recorder) OnAdd(i svcwatch.Instance)       { r.note("add " + i.ID + "@" + i.Incarnation) }
func (r *recorder) OnUpdate(_, i svcwatch.Instance) { r.note("update " + i.ID) }
func (r *recorder) OnRemove(i svcwatch.Instance)    { r.note("remove " + i.ID + "@" + i.Incarnation) }

// count returns how many events start with prefix ("remove a@" ...).
func (r *recorder) count(prefix string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.evs {
		if strings.HasPrefix(e, prefix) {
			n++
		}
	}
	return n
}

func (r *recorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.evs, ", ")
}

type node struct {
	w   *EtcdServiceWatcher
	rec *recorder
	cli *clientv3.Client
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// fast are the settings of the fault tests: a 1s TTL (etcd's smallest lease).
var fast = []svcwatch.Option{svcwatch.WithTTL(time.Second), svcwatch.WithKeepAliveInterval(200 * time.Millisecond)}

// startNode starts process id of table on a client of endpoint; Stop runs
// at cleanup.
func startNode(t *testing.T, endpoint, table, id string, opts ...svcwatch.Option) *node {
	t.Helper()
	rec := &recorder{}
	self := svcwatch.Instance{Table: table, ID: id, Name: "10.9.0.1:" + id}
	all := append(append([]svcwatch.Option{svcwatch.WithHandler(rec), svcwatch.WithLogger(quietLogger())}, fast...), opts...)
	if id == "" {
		self = svcwatch.Instance{Table: table}
		all = append(all, svcwatch.WatchOnly())
	}
	cli := newClient(t, endpoint)
	w, err := NewEtcdServiceWatcher(cli, self, all...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if err := w.Stop(ctx); err != nil {
			t.Errorf("stop %s: %v", self.Key(), err)
		}
	})
	if err := w.Start(ctxT(t)); err != nil {
		t.Fatalf("start %s: %v", self.Key(), err)
	}
	return &node{w: w, rec: rec, cli: cli}
}

// eventually polls cond until it holds or waitTimeout passes.
func eventually(t testing.TB, what string, cond func() bool, detail ...func() string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			msg := "timed out waiting for " + what
			for _, d := range detail {
				msg += "\n" + d()
			}
			t.Fatal(msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ids(insts []svcwatch.Instance) string {
	s := make([]string, len(insts))
	for i, inst := range insts {
		s[i] = inst.ID
	}
	return strings.Join(s, ",")
}

// sees waits until n's view of table is exactly want (ids, sorted).
func sees(t testing.TB, n *node, table, want string) {
	t.Helper()
	eventually(t, fmt.Sprintf("%s to see %s", n.w.Self().Key(), want),
		func() bool { return ids(n.w.Services(table)) == want },
		func() string { return "it sees " + ids(n.w.Services(table)) + "; events: " + n.rec.String() })
}

// crash ends the watcher the way SIGKILL ends its process: the heartbeat and
// the sources stop, nothing is deregistered, no handler is called after it
// returns. The lease expires a TTL later.
func (w *EtcdServiceWatcher) crash(ctx context.Context) error {
	w.mu.Lock()
	w.state = stateStopped
	run := w.run
	w.mu.Unlock()
	if run == nil {
		return w.b.StopEvents(ctx)
	}
	run.attemptCancel()
	run.hbCancel()
	run.cancel()
	errs := []error{w.waitSources(ctx)}
	w.mu.Lock()
	hb := run.hbStarted
	w.mu.Unlock()
	if hb {
		errs = append(errs, waitDone(ctx, run.hbDone, "heartbeat"))
	}
	errs = append(errs, w.b.StopEvents(ctx))
	return errors.Join(errs...)
}
