package svcwatch

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

// waitTimeout is how long a test waits for an event before failing: generous,
// because CI machines are shared; tests never assert on how fast things are.
const waitTimeout = 15 * time.Second

// eventually polls cond until it holds or waitTimeout passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// backend is one kind of Redis the behaviour suite runs on.
type backend struct {
	name string
	// client returns a new client to the backend, closed at cleanup.
	client func(t testing.TB) redis.UniversalClient
	// mr is set on miniredis: server time stands still there unless a test moves it.
	mr *miniredis.Miniredis
	// fast settings keep real-time tests short.
	ttl, keepAlive time.Duration
	// opts go to every watcher of the backend (e.g. a key prefix).
	opts []Option
}

func miniBackend(t testing.TB) *backend {
	mr := miniredis.RunT(t)
	return &backend{
		name: "miniredis",
		mr:   mr,
		client: func(t testing.TB) redis.UniversalClient {
			c := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
			t.Cleanup(func() { c.Close() })
			return c
		},
		ttl: time.Second, keepAlive: 100 * time.Millisecond,
	}
}

// forEachBackend runs f as a subtest on miniredis, on a real redis-server, and on
// Redis Cluster and Sentinel.
func forEachBackend(t *testing.T, f func(t *testing.T, b *backend)) {
	t.Run("miniredis", func(t *testing.T) { f(t, miniBackend(t)) })
	t.Run("redis", func(t *testing.T) { f(t, realBackend(t)) })
	// Least privilege: no KEYS, CONFIG, INFO or FLUSHALL; only the prefix's keys
	// and channels.
	t.Run("redis-acl", func(t *testing.T) { f(t, aclBackend(t, DefaultKeyPrefix)) })
	t.Run("redis-acl-prefix", func(t *testing.T) { f(t, aclBackend(t, "studio7")) })
	// One shared Cluster and one shared Sentinel setup (cluster_test.go,
	// sentinel_test.go), a key prefix of its own per subtest.
	t.Run("redis-cluster", func(t *testing.T) { f(t, clusterBackend(t)) })
	t.Run("redis-sentinel", func(t *testing.T) { f(t, sentinelBackend(t)) })
}

// checkLeaks fails t if goroutines started during the test outlive it. Call it
// first, so that its cleanup runs after every other.
func checkLeaks(t *testing.T) {
	opts := []goleak.Option{
		goleak.IgnoreCurrent(),
		// miniredis serves each connection on a goroutine of its own; the
		// client's pool keeps connections open until the client closes.
		goleak.IgnoreAnyFunction("github.com/alicebob/miniredis/v2/server.(*Server).servePeer"),
		goleak.IgnoreAnyFunction("github.com/alicebob/miniredis/v2/server.(*Server).serve"),
		goleak.IgnoreAnyFunction("github.com/alicebob/miniredis/v2/server.(*Server).ServeConn"),
	}
	if strings.Contains(t.Name(), "sentinel") {
		// go-redis v9.17's FailoverClient may subscribe to its sentinel after
		// Close (setSentinel is not checked against Close), leaving that
		// subscription's goroutines to nobody. They are go-redis's own PubSub
		// goroutines: on Sentinel only, those are not counted (every other
		// topology still checks the watcher's own PubSub).
		opts = append(opts,
			goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9.(*sentinelFailover).listen"),
			goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9.(*channel).initHealthCheck.func1"),
			goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9.(*PubSub).ReceiveTimeout"))
	}
	t.Cleanup(func() { goleak.VerifyNone(t, opts...) })
}

type event struct {
	op       string // add, update, remove
	inst     Instance
	old      Instance // update only
	watching string   // the watcher's own key
}

func (e event) String() string { return e.op + " " + e.inst.ID + "@" + e.inst.Incarnation }

// recorder is a Handler that keeps every event it was given.
type recorder struct {
	self string
	mu   sync.Mutex
	evs  []event
	// concurrent detects handler calls that overlap.
	inCall, overlapped bool
}

func (r *recorder) note(e event) {
	r.mu.Lock()
	if r.inCall {
		r.overlapped = true
	}
	r.inCall = true
	e.watching = r.self
	r.evs = append(r.evs, e)
	r.mu.Unlock()
	time.Sleep(time.Microsecond) // widen the window in which an overlap would show
	r.mu.Lock()
	r.inCall = false
	r.mu.Unlock()
}

func (r *recorder) overlappedCalls() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.overlapped
}

func (r *recorder) OnAdd(inst Instance)        { r.note(event{op: "add", inst: inst}) }
func (r *recorder) OnUpdate(old, cur Instance) { r.note(event{op: "update", inst: cur, old: old}) }
func (r *recorder) OnRemove(inst Instance)     { r.note(event{op: "remove", inst: inst}) }

func (r *recorder) events() []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]event(nil), r.evs...)
}

// has reports whether an event op about id was recorded.
func (r *recorder) has(op, id string) bool {
	for _, e := range r.events() {
		if e.op == op && e.inst.ID == id {
			return true
		}
	}
	return false
}

func (r *recorder) count(op, id string) int {
	n := 0
	for _, e := range r.events() {
		if e.op == op && e.inst.ID == id {
			n++
		}
	}
	return n
}

func (r *recorder) String() string {
	var s []string
	for _, e := range r.events() {
		s = append(s, e.String())
	}
	return strings.Join(s, ", ")
}

// node is one process in a test: a watcher and what its handler saw.
type node struct {
	w   *RedisServiceWatcher
	rec *recorder
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newNode builds and starts a watcher for table/id with fast settings; Stop runs
// at cleanup.
func (b *backend) newNode(t *testing.T, table, id string, opts ...Option) *node {
	t.Helper()
	n, err := b.startNode(t, Instance{Table: table, ID: id, Name: "127.0.0.1:" + id}, opts...)
	if err != nil {
		t.Fatalf("start %s/%s: %v", table, id, err)
	}
	return n
}

func (b *backend) startNode(t *testing.T, self Instance, opts ...Option) (*node, error) {
	t.Helper()
	rec := &recorder{self: self.ID}
	all := append([]Option{
		WithTTL(b.ttl), WithKeepAliveInterval(b.keepAlive), WithHandler(rec), WithLogger(quietLogger()),
	}, b.opts...)
	all = append(all, opts...)
	w, err := NewRedisServiceWatcher(b.client(t), self, all...)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { stopNode(t, w) })
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		return nil, err
	}
	return &node{w: w, rec: rec}, nil
}

func stopNode(t testing.TB, w *RedisServiceWatcher) {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := w.Stop(ctx); err != nil {
		t.Errorf("stop %s: %v", w.Self().Key(), err)
	}
}

// crash ends a watcher the way SIGKILL would: no deregistration, no more
// heartbeats, no more events.
func crash(t testing.TB, w *RedisServiceWatcher) {
	w.mu.Lock()
	w.state = stateStopped
	run := w.run
	w.mu.Unlock()
	run.hbCancel()
	run.cancel()
	w.currentPubSub(run).Close()
	<-run.syncDone
	<-run.catDone
	if run.hbStarted {
		<-run.hbDone
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := w.b.StopEvents(ctx); err != nil {
		t.Fatal(err)
	}
}

// advancePastTTL makes server time pass d while the live nodes keep heartbeating:
// on miniredis it moves TIME in steps well under the silence threshold, each after
// every live node heartbeated again; on real Redis it waits d.
func (b *backend) advancePastTTL(t *testing.T, d time.Duration, live ...*node) {
	t.Helper()
	if b.mr == nil {
		time.Sleep(d)
		return
	}
	step := b.ttl / 5
	now := time.Now()
	for passed := time.Duration(0); passed < d; passed += step {
		marks := make([]uint64, len(live))
		for i, n := range live {
			marks[i] = n.w.Stats().Heartbeats
		}
		for i, n := range live {
			eventually(t, fmt.Sprintf("a heartbeat of %s", n.w.Self().ID), func() bool { return n.w.Stats().Heartbeats > marks[i] })
		}
		now = now.Add(step)
		b.mr.SetTime(now)
	}
}

func ids(insts []Instance) string {
	var s []string
	for _, i := range insts {
		s = append(s, i.ID)
	}
	return strings.Join(s, ",")
}

// logCounter is a slog handler that keeps the messages logged.
type logCounter struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logCounter) logger() *slog.Logger { return slog.New(l) }

func (l *logCounter) Enabled(context.Context, slog.Level) bool { return true }
func (l *logCounter) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	line := "level=" + r.Level.String() + " " + r.Message
	r.Attrs(func(a slog.Attr) bool { line += " " + a.String(); return true })
	l.msgs = append(l.msgs, line)
	return nil
}
func (l *logCounter) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logCounter) WithGroup(string) slog.Handler      { return l }

// count returns how many messages contain s.
func (l *logCounter) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if strings.Contains(m, s) {
			n++
		}
	}
	return n
}

func (l *logCounter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.msgs, "\n")
}
