package svcwatch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Waits poll up to connWait; nothing in these tests asserts on timing.
const connWait = 10 * time.Second

// connLeakCheck registers a goroutine leak check that runs after every other
// cleanup of the test. Goroutines alive before the test (other tests' leftovers)
// are ignored so the check blames only this test.
func connLeakCheck(t *testing.T) {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(connWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// testServer is a loopback TCP listener that hands accepted conns to the test.
type testServer struct {
	ln       net.Listener
	addr     string
	accepted chan net.Conn
	done     chan struct{}
}

func startServer(t *testing.T, addr string) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	s := &testServer{ln: ln, addr: ln.Addr().String(), accepted: make(chan net.Conn, 128), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case s.accepted <- c:
			default:
				c.Close()
			}
		}
	}()
	t.Cleanup(s.stop)
	return s
}

// stop closes the listener and every accepted conn; it is idempotent.
func (s *testServer) stop() {
	s.ln.Close()
	<-s.done
	for {
		select {
		case c := <-s.accepted:
			c.Close()
		default:
			return
		}
	}
}

// next returns the next conn the server accepted.
func (s *testServer) next(t *testing.T) net.Conn {
	t.Helper()
	select {
	case c := <-s.accepted:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(connWait):
		t.Fatalf("server %s accepted nothing", s.addr)
		return nil
	}
}

// expectEOF asserts that the client side of server conn c gets closed.
func expectEOF(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(connWait))
	var b [1]byte
	if _, err := c.Read(b[:]); err != io.EOF {
		t.Fatalf("server read: got %v, want EOF", err)
	}
}

// tcpDialer dials inst.Name over TCP and counts attempts and failures.
type tcpDialer struct {
	calls, fails atomic.Int64
	mu           sync.Mutex
	seen         []Instance
}

func (d *tcpDialer) dial(ctx context.Context, inst Instance) (net.Conn, error) {
	d.calls.Add(1)
	d.mu.Lock()
	d.seen = append(d.seen, inst)
	d.mu.Unlock()
	var nd net.Dialer
	c, err := nd.DialContext(ctx, "tcp", inst.Name)
	if err != nil {
		d.fails.Add(1)
	}
	return c, err
}

func (d *tcpDialer) instances() []Instance {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Instance(nil), d.seen...)
}

// hookLog records hook calls in order.
type hookLog struct {
	mu     sync.Mutex
	events []string
}

func (h *hookLog) options() []ConnOption {
	return []ConnOption{
		WithOnConnect(func(inst Instance, c io.Closer) {
			if _, ok := c.(net.Conn); !ok {
				panic("OnConnect: not a net.Conn")
			}
			h.add(fmt.Sprintf("connect %s %s %s", inst.Key(), inst.Incarnation, inst.Name))
		}),
		WithOnDisconnect(func(inst Instance, err error) {
			h.add(fmt.Sprintf("disconnect %s %s %s %v", inst.Key(), inst.Incarnation, inst.Name, err))
		}),
	}
}

func (h *hookLog) add(e string) {
	h.mu.Lock()
	h.events = append(h.events, e)
	h.mu.Unlock()
}

func (h *hookLog) get() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.events...)
}

func fastBackoff() ConnOption { return WithBackoff(5*time.Millisecond, 50*time.Millisecond) }

// testLogger sends the manager's logs to t.Log, shown only on failure or -v.
// Every manager goroutine ends before its test does, so no log comes late.
func testLogger(t *testing.T) ConnOption {
	return WithConnLogger(slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

func newTestManager(t *testing.T, d *tcpDialer, opts ...ConnOption) *ConnManager[net.Conn] {
	t.Helper()
	m := NewConnManager(d.dial, append([]ConnOption{fastBackoff(), testLogger(t)}, opts...)...)
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return m
}

func waitConn(t *testing.T, m *ConnManager[net.Conn], key string, accept func(net.Conn) bool) net.Conn {
	t.Helper()
	var got net.Conn
	waitFor(t, "connection to "+key, func() bool {
		c, ok := m.Get(key)
		if ok && (accept == nil || accept(c)) {
			got = c
			return true
		}
		return false
	})
	return got
}

func peer(id, addr string) Instance {
	return Instance{Table: "game/test/gate", ID: id, Name: addr, Desc: `{"v":1}`, Incarnation: "inc1"}
}

func TestConnManagerConnectOnAdd(t *testing.T) {
	connLeakCheck(t)
	srv := startServer(t, "127.0.0.1:0")
	var d tcpDialer
	var hooks hookLog
	m := newTestManager(t, &d, hooks.options()...)

	p := peer("a", srv.addr)
	if _, ok := m.Get(p.Key()); ok {
		t.Fatal("Get before OnAdd reported a conn")
	}
	m.OnAdd(p)
	c := waitConn(t, m, p.Key(), nil)
	sc := srv.next(t)
	if c.RemoteAddr().String() != srv.addr || sc.RemoteAddr().String() != c.LocalAddr().String() {
		t.Fatalf("conn %v->%v does not match accepted %v", c.LocalAddr(), c.RemoteAddr(), sc.RemoteAddr())
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"connect game/test/gate/a inc1 " + srv.addr,
		"disconnect game/test/gate/a inc1 " + srv.addr + " <nil>",
	}
	if got := hooks.get(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("hooks: got %q, want %q", got, want)
	}
	expectEOF(t, sc)
}

func TestConnManagerCloseOnRemove(t *testing.T) {
	connLeakCheck(t)
	srv := startServer(t, "127.0.0.1:0")
	var d tcpDialer
	var hooks hookLog
	m := newTestManager(t, &d, hooks.options()...)

	p := peer("a", srv.addr)
	m.OnAdd(p)
	waitConn(t, m, p.Key(), nil)
	sc := srv.next(t)
	m.OnRemove(p)
	if _, ok := m.Get(p.Key()); ok {
		t.Fatal("Get after OnRemove reported a conn")
	}
	expectEOF(t, sc)
	waitFor(t, "OnDisconnect", func() bool { return len(hooks.get()) == 2 })
	if got, want := hooks.get()[1], "disconnect game/test/gate/a inc1 "+srv.addr+" <nil>"; got != want {
		t.Fatalf("hook: got %q, want %q", got, want)
	}
	m.OnRemove(p) // unknown now: no-op
	if n := d.calls.Load(); n != 1 {
		t.Fatalf("dials: got %d, want 1", n)
	}
}

func TestConnManagerDescUpdateKeepsConn(t *testing.T) {
	connLeakCheck(t)
	srv := startServer(t, "127.0.0.1:0")
	var d tcpDialer
	m := newTestManager(t, &d)

	p := peer("a", srv.addr)
	m.OnAdd(p)
	c1 := waitConn(t, m, p.Key(), nil)
	cur := p
	cur.Desc = `{"v":2}`
	m.OnUpdate(p, cur)
	if c, ok := m.Get(p.Key()); !ok || c != c1 {
		t.Fatalf("Desc-only update changed the conn: got %v %v", c, ok)
	}
	if n := d.calls.Load(); n != 1 {
		t.Fatalf("dials: got %d, want 1", n)
	}
	// A later redial uses the new Desc.
	m.Invalidate(p.Key())
	waitConn(t, m, p.Key(), func(c net.Conn) bool { return c != c1 })
	seen := d.instances()
	if last := seen[len(seen)-1]; last.Desc != cur.Desc {
		t.Fatalf("redial saw Desc %q, want %q", last.Desc, cur.Desc)
	}
}

func TestConnManagerNameUpdateReconnects(t *testing.T) {
	connLeakCheck(t)
	srvA := startServer(t, "127.0.0.1:0")
	srvB := startServer(t, "127.0.0.1:0")
	var d tcpDialer
	var hooks hookLog
	m := newTestManager(t, &d, hooks.options()...)

	p := peer("a", srvA.addr)
	m.OnAdd(p)
	waitConn(t, m, p.Key(), nil)
	scA := srvA.next(t)
	cur := p
	cur.Name = srvB.addr
	m.OnUpdate(p, cur)
	c := waitConn(t, m, p.Key(), func(c net.Conn) bool { return c.RemoteAddr().String() == srvB.addr })
	scB := srvB.next(t)
	if scB.RemoteAddr().String() != c.LocalAddr().String() {
		t.Fatal("server B accepted a different conn")
	}
	expectEOF(t, scA)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"connect game/test/gate/a inc1 " + srvA.addr,
		"disconnect game/test/gate/a inc1 " + srvA.addr + " <nil>",
		"connect game/test/gate/a inc1 " + srvB.addr,
		"disconnect game/test/gate/a inc1 " + srvB.addr + " <nil>",
	}
	if got := hooks.get(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("hooks: got %q, want %q", got, want)
	}
}

func TestConnManagerIncarnationUpdateReconnects(t *testing.T) {
	connLeakCheck(t)
	srv := startServer(t, "127.0.0.1:0")
	var d tcpDialer
	var hooks hookLog
	m := newTestManager(t, &d, hooks.options()...)

	p := peer("a", srv.addr)
	m.OnAdd(p)
	c1 := waitConn(t, m, p.Key(), nil)
	sc1 := srv.next(t)
	cur := p
	cur.Incarnation = "inc2"
	m.OnUpdate(p, cur)
	waitConn(t, m, p.Key(), func(c net.Conn) bool { return c != c1 })
	srv.next(t)
	expectEOF(t, sc1)

	// Replacement by remove+add, as the watcher reports a restart.
	next := cur
	next.Incarnation = "inc3"
	m.OnRemove(cur)
	m.OnAdd(next)
	waitFor(t, "hooks", func() bool { return len(hooks.get()) == 5 })
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, inc := range []string{"inc1", "inc2", "inc3"} {
		want = append(want,
			"connect game/test/gate/a "+inc+" "+srv.addr,
			"disconnect game/test/gate/a "+inc+" "+srv.addr+" <nil>")
	}
	if got := hooks.get(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("hooks: got %q, want %q", got, want)
	}
}

// Rapid replacements must never interleave hooks of one key.
func TestConnManagerHookOrderUnderChurn(t *testing.T) {
	connLeakCheck(t)
	srv := startServer(t, "127.0.0.1:0")
	var d tcpDialer
	var hooks hookLog
	m := newTestManager(t, &d, hooks.options()...)

	p := peer("a", srv.addr)
	m.OnAdd(p)
	for i := 0; i < 50; i++ {
		cur := p
		cur.Incarnation = fmt.Sprint("inc", i+2)
		if i%2 == 0 {
			m.OnUpdate(p, cur)
		} else {
			m.OnRemove(p)
			m.OnAdd(cur)
		}
		p = cur
		if i%10 == 0 {
			waitConn(t, m, p.Key(), nil)
		}
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	ev := hooks.get()
	if len(ev)%2 != 0 {
		t.Fatalf("unpaired hooks: %q", ev)
	}
	for i := 0; i < len(ev); i += 2 {
		var inc string
		fmt.Sscanf(ev[i], "connect game/test/gate/a %s", &inc)
		if want := "disconnect game/test/gate/a " + inc + " " + srv.addr + " <nil>"; inc == "" || ev[i+1] != want {
			t.Fatalf("hooks %d-%d: %q then %q", i, i+1, ev[i], ev[i+1])
		}
	}
}

func TestConnManagerInvalidateRedials(t *testing.T) {
	connLeakCheck(t)
	srv := startServer(t, "127.0.0.1:0")
	var d tcpDialer
	var hooks hookLog
	m := newTestManager(t, &d, hooks.options()...)

	m.Invalidate("no/such") // unknown key: no-op
	p := peer("a", srv.addr)
	m.OnAdd(p)
	c1 := waitConn(t, m, p.Key(), nil)
	sc1 := srv.next(t)
	m.Invalidate(p.Key())
	if c, ok := m.Get(p.Key()); ok && c == c1 {
		t.Fatal("Get returned the invalidated conn")
	}
	expectEOF(t, sc1)
	waitConn(t, m, p.Key(), func(c net.Conn) bool { return c != c1 })
	srv.next(t)
	if got, want := hooks.get()[1], "disconnect game/test/gate/a inc1 "+srv.addr+" "+ErrConnInvalidated.Error(); got != want {
		t.Fatalf("hook: got %q, want %q", got, want)
	}
}

// A handshake that fails in OnConnect: Invalidate from the hook keeps that
// connection from ever being published, and the peer is redialed.
func TestConnManagerInvalidateFromOnConnect(t *testing.T) {
	connLeakCheck(t)
	srv := startServer(t, "127.0.0.1:0")
	var d tcpDialer
	var m *ConnManager[net.Conn]
	var first atomic.Value // the conn whose handshake "failed"
	var disconnects atomic.Int64
	m = newTestManager(t, &d,
		WithOnConnect(func(inst Instance, c io.Closer) {
			if first.CompareAndSwap(nil, c) {
				m.Invalidate(inst.Key())
			}
		}),
		WithOnDisconnect(func(_ Instance, err error) {
			if errors.Is(err, ErrConnInvalidated) {
				disconnects.Add(1)
			}
		}))
	p := peer("a", srv.addr)
	m.OnAdd(p)
	expectEOF(t, srv.next(t)) // the first conn is closed without ever being used
	c := waitConn(t, m, p.Key(), nil)
	srv.next(t)
	if c == first.Load() {
		t.Fatal("Get returned the conn invalidated in OnConnect")
	}
	if d.calls.Load() < 2 || disconnects.Load() != 1 {
		t.Fatalf("dials %d, invalidated disconnects %d; want a redial after one", d.calls.Load(), disconnects.Load())
	}
}

// A peer whose connection breaks and never comes back is warned about once.
func TestConnManagerWarnsOncePerFailingStreak(t *testing.T) {
	connLeakCheck(t)
	srv := startServer(t, "127.0.0.1:0")
	var d tcpDialer
	logs := &logCounter{}
	m := newTestManager(t, &d, WithConnLogger(logs.logger()))
	p := peer("a", srv.addr)
	m.OnAdd(p)
	waitConn(t, m, p.Key(), nil)
	srv.stop()
	m.Invalidate(p.Key())
	waitFor(t, "several failed redials", func() bool { return d.fails.Load() >= 3 })
	if got := logs.count("dial failed"); got < 3 {
		t.Fatalf("dial failures logged %d times, want every one (Warn once, then Debug)", got)
	}
	warns := 0
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "dial failed") && strings.Contains(line, "level=WARN") {
			warns++
		}
	}
	if warns != 1 {
		t.Fatalf("%d warnings for one streak of failures, want 1:\n%s", warns, logs)
	}
}

func TestConnManagerRedialAfterListenerReturns(t *testing.T) {
	connLeakCheck(t)
	srv := startServer(t, "127.0.0.1:0")
	var d tcpDialer
	m := newTestManager(t, &d)

	p := peer("a", srv.addr)
	m.OnAdd(p)
	c1 := waitConn(t, m, p.Key(), nil)
	srv.next(t)

	srv.stop() // the peer goes down but stays registered
	m.Invalidate(p.Key())
	waitFor(t, "failed redials", func() bool { return d.fails.Load() >= 3 })
	if _, ok := m.Get(p.Key()); ok {
		t.Fatal("Get reported a conn while the peer is down")
	}

	srv2 := startServer(t, srv.addr) // back on the same port
	c2 := waitConn(t, m, p.Key(), nil)
	if c2 == c1 {
		t.Fatal("got the old conn back")
	}
	srv2.next(t)
}

func TestConnManagerNoDialAfterClose(t *testing.T) {
	connLeakCheck(t)
	srv := startServer(t, "127.0.0.1:0")
	var d tcpDialer
	m := NewConnManager(d.dial, fastBackoff(), testLogger(t))

	p := peer("a", srv.addr)
	m.OnAdd(p)
	waitConn(t, m, p.Key(), nil)
	sc := srv.next(t)
	down := peer("down", "127.0.0.1:1") // refused: keeps redialing until Close
	m.OnAdd(down)
	waitFor(t, "failed dials", func() bool { return d.fails.Load() >= 2 })

	if err := m.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	expectEOF(t, sc)
	n := d.calls.Load()
	if _, ok := m.Get(p.Key()); ok {
		t.Fatal("Get after Close reported a conn")
	}
	cur := p
	cur.Incarnation = "inc2"
	m.OnAdd(peer("b", srv.addr))
	m.OnUpdate(p, cur)
	m.Invalidate(p.Key())
	m.OnRemove(p)
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if got := d.calls.Load(); got != n {
		t.Fatalf("dials after Close: %d", got-n)
	}
	if _, ok := m.Get(peer("b", "").Key()); ok {
		t.Fatal("Get after Close reported a conn")
	}
}

func TestConnManagerBlockedPeerDoesNotBlockOthers(t *testing.T) {
	connLeakCheck(t)
	srv := startServer(t, "127.0.0.1:0")
	var d tcpDialer
	entered := make(chan string, 2)
	exited := make(chan error, 2)
	dial := func(ctx context.Context, inst Instance) (net.Conn, error) {
		if inst.Name == "blackhole" {
			// A peer that never answers: block until canceled.
			entered <- inst.ID
			<-ctx.Done()
			exited <- ctx.Err()
			return nil, ctx.Err()
		}
		return d.dial(ctx, inst)
	}
	m := NewConnManager(dial, fastBackoff(), testLogger(t), WithDialTimeout(time.Hour))
	defer func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()

	hole1, hole2 := peer("h1", "blackhole"), peer("h2", "blackhole")
	m.OnAdd(hole1)
	m.OnAdd(hole2)
	<-entered
	<-entered
	good := peer("good", srv.addr)
	m.OnAdd(good)
	waitConn(t, m, good.Key(), nil)
	srv.next(t)

	m.OnRemove(hole1) // cancels its dial; hole2's is canceled by Close
	select {
	case err := <-exited:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("blocked dial ended with %v, want Canceled", err)
		}
	case <-time.After(connWait):
		t.Fatal("OnRemove did not cancel the blocked dial")
	}
}

func TestConnManagerDialTimeout(t *testing.T) {
	connLeakCheck(t)
	var attempts atomic.Int64
	var badCtx atomic.Bool
	dial := func(ctx context.Context, inst Instance) (net.Conn, error) {
		attempts.Add(1)
		if _, ok := ctx.Deadline(); !ok {
			badCtx.Store(true)
		}
		<-ctx.Done()
		if !errors.Is(ctx.Err(), context.DeadlineExceeded) && ctx.Err() != context.Canceled {
			badCtx.Store(true)
		}
		return nil, ctx.Err()
	}
	m := NewConnManager(dial, fastBackoff(), testLogger(t), WithDialTimeout(10*time.Millisecond))
	m.OnAdd(peer("a", "blackhole"))
	waitFor(t, "timed-out dials to be retried", func() bool { return attempts.Load() >= 3 })
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if badCtx.Load() {
		t.Fatal("dial ctx had no deadline or ended for another reason")
	}
}

func TestConnManagerFilter(t *testing.T) {
	connLeakCheck(t)
	srvA := startServer(t, "127.0.0.1:0")
	srvC := startServer(t, "127.0.0.1:0")
	var d tcpDialer
	self := peer("b", "")
	m := newTestManager(t, &d, WithConnFilter(func(p Instance) bool {
		return self.ID < p.ID && p.Desc != "draining"
	}))

	a, c := peer("a", srvA.addr), peer("c", srvC.addr)
	m.OnAdd(a)
	m.OnAdd(c)
	waitConn(t, m, c.Key(), nil)
	scC := srvC.next(t)
	if _, ok := m.Get(a.Key()); ok {
		t.Fatal("rejected peer has a conn")
	}
	a2 := a
	a2.Desc = `{"v":2}`
	m.OnUpdate(a, a2) // still rejected

	// An update that makes c rejected closes it; one that accepts it again dials.
	drain := c
	drain.Desc = "draining"
	m.OnUpdate(c, drain)
	if _, ok := m.Get(c.Key()); ok {
		t.Fatal("filtered-out peer still has a conn")
	}
	expectEOF(t, scC)
	m.OnUpdate(drain, c)
	waitConn(t, m, c.Key(), nil)
	srvC.next(t)

	for _, inst := range d.instances() {
		if inst.ID != "c" {
			t.Fatalf("dialed rejected peer %s", inst.Key())
		}
	}
	if n := d.calls.Load(); n != 2 {
		t.Fatalf("dials: got %d, want 2", n)
	}
}

// A dial that completes after its peer was removed must not be stored.
func TestConnManagerLateDialIsClosed(t *testing.T) {
	connLeakCheck(t)
	srv := startServer(t, "127.0.0.1:0")
	dialed := make(chan struct{})
	release := make(chan struct{})
	var connects atomic.Int64
	dial := func(ctx context.Context, inst Instance) (net.Conn, error) {
		// Ignore cancellation on purpose to force the race.
		var nd net.Dialer
		c, err := nd.DialContext(context.Background(), "tcp", inst.Name)
		close(dialed)
		<-release
		return c, err
	}
	m := NewConnManager(dial, fastBackoff(), testLogger(t),
		WithOnConnect(func(Instance, io.Closer) { connects.Add(1) }))
	defer m.Close()

	p := peer("a", srv.addr)
	m.OnAdd(p)
	<-dialed
	sc := srv.next(t)
	m.OnRemove(p)
	close(release)
	expectEOF(t, sc)
	if _, ok := m.Get(p.Key()); ok {
		t.Fatal("late conn was stored")
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if n := connects.Load(); n != 0 {
		t.Fatalf("OnConnect called %d times for a late conn", n)
	}
}

// A peer removed while OnConnect runs gets its conn closed, never published,
// and OnDisconnect pairs the OnConnect.
func TestConnManagerRemovedDuringOnConnect(t *testing.T) {
	connLeakCheck(t)
	srv := startServer(t, "127.0.0.1:0")
	var d tcpDialer
	var hooks hookLog
	inHook := make(chan struct{})
	release := make(chan struct{})
	opts := append(hooks.options()[1:], WithOnConnect(func(inst Instance, c io.Closer) {
		hooks.add("connect")
		close(inHook)
		<-release
	}))
	m := newTestManager(t, &d, opts...)

	p := peer("a", srv.addr)
	m.OnAdd(p)
	<-inHook
	if _, ok := m.Get(p.Key()); ok {
		t.Fatal("conn published before OnConnect returned")
	}
	sc := srv.next(t)
	m.OnRemove(p)
	close(release)
	expectEOF(t, sc)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	want := []string{"connect", "disconnect game/test/gate/a inc1 " + srv.addr + " <nil>"}
	if got := hooks.get(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("hooks: got %q, want %q", got, want)
	}
}

type failCloser struct{ err error }

func (f failCloser) Close() error { return f.err }

func TestConnManagerCloseReturnsCloseErrors(t *testing.T) {
	connLeakCheck(t)
	errBoom := errors.New("boom")
	m := NewConnManager(func(ctx context.Context, inst Instance) (failCloser, error) {
		return failCloser{err: errBoom}, nil
	}, fastBackoff(), testLogger(t))
	m.OnAdd(peer("a", "x"))
	m.OnAdd(peer("b", "y"))
	waitFor(t, "connections", func() bool {
		_, ok1 := m.Get(peer("a", "").Key())
		_, ok2 := m.Get(peer("b", "").Key())
		return ok1 && ok2
	})
	if err := m.Close(); !errors.Is(err, errBoom) {
		t.Fatalf("Close: got %v, want %v", err, errBoom)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// Concurrent Get/Invalidate/updates must be race-free and leave no goroutine.
func TestConnManagerConcurrentUse(t *testing.T) {
	connLeakCheck(t)
	srv := startServer(t, "127.0.0.1:0")
	var d tcpDialer
	m := newTestManager(t, &d)
	stopDrain, drained := make(chan struct{}), make(chan struct{})
	go func() { // drain the server so its buffer never fills
		defer close(drained)
		for {
			select {
			case c := <-srv.accepted:
				c.Close()
			case <-stopDrain:
				return
			}
		}
	}()
	t.Cleanup(func() { close(stopDrain); <-drained })

	p := peer("a", srv.addr)
	key := p.Key()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	stopped := false
	halt := func() {
		if !stopped {
			stopped = true
			close(stop)
			wg.Wait()
		}
	}
	defer halt()
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if c, ok := m.Get(key); ok {
					_ = c.LocalAddr()
					m.Invalidate(key)
				}
				time.Sleep(time.Millisecond)
			}
		}()
	}
	for i := 0; i < 100; i++ {
		m.OnAdd(p)
		cur := p
		cur.Desc = fmt.Sprint(i)
		m.OnUpdate(p, cur)
		if i%3 == 0 {
			m.OnRemove(cur)
		}
		p = cur
		time.Sleep(100 * time.Microsecond)
	}
	halt()
	m.OnAdd(p) // the loop may end removed
	waitConn(t, m, key, nil)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestConnBackoffBounds(t *testing.T) {
	b := backoff{min: 100 * time.Millisecond, max: 10 * time.Second}
	for attempt := 0; attempt < 100; attempt++ {
		step := b.max
		if attempt < 7 {
			step = b.min << attempt
		}
		for i := 0; i < 20; i++ {
			if d := b.delay(attempt); d < step/2 || d > step {
				t.Fatalf("attempt %d: backoff %v outside [%v, %v]", attempt, d, step/2, step)
			}
		}
	}
}

func TestConnOptionsDefaults(t *testing.T) {
	m := NewConnManager(func(context.Context, Instance) (io.Closer, error) { return nil, errors.New("unused") },
		WithBackoff(0, -1), nil)
	defer m.Close()
	if m.cfg.dialTimeout != 5*time.Second || m.cfg.backoff.min != 100*time.Millisecond ||
		m.cfg.backoff.max != 10*time.Second || m.cfg.logger == nil || m.cfg.filter != nil {
		t.Fatalf("defaults: %+v", m.cfg)
	}
	m2 := NewConnManager(func(context.Context, Instance) (io.Closer, error) { return nil, errors.New("unused") },
		WithBackoff(time.Second, time.Millisecond))
	defer m2.Close()
	if m2.cfg.backoff.min != time.Second || m2.cfg.backoff.max != time.Second {
		t.Fatalf("max below min: %v..%v", m2.cfg.backoff.min, m2.cfg.backoff.max)
	}
	// A nil dial does not panic: every dial fails with ErrInvalid.
	m3 := NewConnManager[io.Closer](nil, WithConnLogger(quietLogger()))
	defer m3.Close()
	if _, err := m3.dial(context.Background(), Instance{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("nil dial: %v, want ErrInvalid", err)
	}
}

// A dial that panics is a failed dial: logged (Warn once, with the stack) and
// retried with backoff; the process lives on and the peer ends connected.
func TestConnManagerDialPanicRetries(t *testing.T) {
	connLeakCheck(t)
	srv := startServer(t, "127.0.0.1:0")
	var d tcpDialer
	var attempts atomic.Int64
	dial := func(ctx context.Context, inst Instance) (net.Conn, error) {
		if attempts.Add(1) <= 2 {
			panic("dial boom")
		}
		return d.dial(ctx, inst)
	}
	logs := &logCounter{}
	m := NewConnManager(dial, fastBackoff(), WithConnLogger(logs.logger()))
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})

	p := peer("a", srv.addr)
	m.OnAdd(p)
	waitConn(t, m, p.Key(), nil)
	srv.next(t)
	if n := attempts.Load(); n != 3 {
		t.Fatalf("dial attempts: got %d, want 3 (two panics, then a success)", n)
	}
	var warns, failed, stacks int
	logs.mu.Lock()
	lines := append([]string(nil), logs.msgs...)
	logs.mu.Unlock()
	for _, line := range lines {
		if !strings.Contains(line, "dial failed") {
			continue
		}
		failed++
		if !strings.Contains(line, "panic=dial boom") || !strings.Contains(line, "dial panicked") {
			t.Errorf("panicked dial logged without the panic: %s", line)
		}
		if strings.Contains(line, "level=WARN") {
			warns++
		}
		if strings.Contains(line, "stack=") && strings.Contains(line, "TestConnManagerDialPanicRetries") {
			stacks++
		}
	}
	if failed != 2 || warns != 1 || stacks < 1 {
		t.Fatalf("%d dial failures logged, %d at Warn, %d with the stack; want 2, 1, >= 1:\n%s", failed, warns, stacks, logs)
	}
}

// An OnConnect that panics invalidates its connection: never published, closed,
// paired with an OnDisconnect that says so, and the peer is redialed. The hook
// may have called Invalidate before panicking: that must not leak onto the next
// connection.
func TestConnManagerOnConnectPanic(t *testing.T) {
	for _, invalidateFirst := range []bool{false, true} {
		t.Run(fmt.Sprint("invalidateFirst=", invalidateFirst), func(t *testing.T) {
			connLeakCheck(t)
			srv := startServer(t, "127.0.0.1:0")
			var d tcpDialer
			var hooks hookLog
			var m *ConnManager[net.Conn]
			var first atomic.Value // the conn whose OnConnect panicked
			var mu sync.Mutex
			var disconnectErrs []error
			logs := &logCounter{}
			m = newTestManager(t, &d, WithConnLogger(logs.logger()),
				WithOnConnect(func(inst Instance, c io.Closer) {
					hooks.add("connect " + c.(net.Conn).LocalAddr().String())
					if first.CompareAndSwap(nil, c) {
						if invalidateFirst {
							m.Invalidate(inst.Key())
						}
						panic("handshake boom")
					}
				}),
				WithOnDisconnect(func(inst Instance, err error) {
					mu.Lock()
					disconnectErrs = append(disconnectErrs, err)
					mu.Unlock()
					hooks.add(fmt.Sprintf("disconnect %v", err))
				}))
			p := peer("a", srv.addr)
			m.OnAdd(p)
			expectEOF(t, srv.next(t)) // the first conn is closed without ever being published
			var sawFirst atomic.Bool
			c := waitConn(t, m, p.Key(), func(c net.Conn) bool {
				if c == first.Load() {
					sawFirst.Store(true)
				}
				return true
			})
			srv.next(t)
			if sawFirst.Load() || c == first.Load() {
				t.Fatal("Get returned the conn whose OnConnect panicked")
			}
			waitFor(t, "OnDisconnect of the first conn", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(disconnectErrs) > 0
			})
			mu.Lock()
			err := disconnectErrs[0]
			mu.Unlock()
			if !errors.Is(err, ErrConnPanicked) || !errors.Is(err, ErrConnInvalidated) ||
				!strings.Contains(fmt.Sprint(err), "handshake boom") {
				t.Fatalf("OnDisconnect after a panicking OnConnect got %v, want ErrConnPanicked and ErrConnInvalidated", err)
			}
			if got, want := logs.count("OnConnect panicked"), 1; got != want {
				t.Fatalf("OnConnect panic logged %d times, want %d:\n%s", got, want, logs)
			}
			if err := m.Close(); err != nil {
				t.Fatal(err)
			}
			want := []string{
				"connect " + first.Load().(net.Conn).LocalAddr().String(),
				"disconnect " + err.Error(),
				"connect " + c.LocalAddr().String(),
				"disconnect <nil>",
			}
			if got := hooks.get(); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("hooks:\ngot  %q\nwant %q", got, want)
			}
		})
	}
}

// An OnDisconnect that panics is logged and otherwise ignored: reconnects go on
// and Close returns.
func TestConnManagerOnDisconnectPanic(t *testing.T) {
	connLeakCheck(t)
	srv := startServer(t, "127.0.0.1:0")
	var d tcpDialer
	var connects, disconnects atomic.Int64
	logs := &logCounter{}
	m := newTestManager(t, &d, WithConnLogger(logs.logger()),
		WithOnConnect(func(Instance, io.Closer) { connects.Add(1) }),
		WithOnDisconnect(func(Instance, error) {
			disconnects.Add(1)
			panic("disconnect boom")
		}))
	p := peer("a", srv.addr)
	m.OnAdd(p)
	c := waitConn(t, m, p.Key(), nil)
	srv.next(t)
	for i := 0; i < 2; i++ {
		m.Invalidate(p.Key())
		prev := c
		c = waitConn(t, m, p.Key(), func(c net.Conn) bool { return c != prev })
		srv.next(t)
	}
	// Removal and re-adding also still work after the panics.
	m.OnRemove(p)
	waitFor(t, "OnDisconnect after OnRemove", func() bool { return disconnects.Load() == 3 })
	m.OnAdd(p)
	waitConn(t, m, p.Key(), nil)
	srv.next(t)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if nc, nd := connects.Load(), disconnects.Load(); nc != 4 || nd != 4 {
		t.Fatalf("OnConnect %d, OnDisconnect %d; want 4 each", nc, nd)
	}
	if got := logs.count("OnDisconnect panicked"); got != 4 {
		t.Fatalf("OnDisconnect panic logged %d times, want 4:\n%s", got, logs)
	}
}

// A filter that panics (the dispatcher recovers it) leaves no lock held and the
// manager as it was.
func TestConnManagerFilterPanic(t *testing.T) {
	connLeakCheck(t)
	srv := startServer(t, "127.0.0.1:0")
	var d tcpDialer
	m := newTestManager(t, &d, WithConnFilter(func(p Instance) bool {
		if p.Desc == "boom" {
			panic("filter boom")
		}
		return true
	}))
	recovered := func(f func()) (r any) {
		defer func() { r = recover() }()
		f()
		return nil
	}

	p := peer("a", srv.addr)
	m.OnAdd(p)
	c1 := waitConn(t, m, p.Key(), nil)
	sc1 := srv.next(t)
	bad := p
	bad.Desc = "boom"
	bad.Name = "127.0.0.1:1" // would reconnect elsewhere if the update were applied
	if r := recovered(func() { m.OnUpdate(p, bad) }); r == nil {
		t.Fatal("OnUpdate: the filter's panic did not reach the dispatcher")
	}
	moved := bad
	moved.ID = "moved" // a key change: the old key must not be removed either
	if r := recovered(func() { m.OnUpdate(p, moved) }); r == nil {
		t.Fatal("OnUpdate with a new key: the filter's panic did not reach the dispatcher")
	}
	if r := recovered(func() { m.OnAdd(peer("b", "boom")) }); r != nil {
		t.Fatalf("OnAdd of an accepted peer panicked: %v", r)
	}
	if r := recovered(func() { b := peer("c", srv.addr); b.Desc = "boom"; m.OnAdd(b) }); r == nil {
		t.Fatal("OnAdd: the filter's panic did not reach the dispatcher")
	}

	// No lock is left held: a writer gets through, and the state is unchanged.
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Invalidate("no/such")
	}()
	waitFor(t, "the manager's lock", func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	})
	if c, ok := m.Get(p.Key()); !ok || c != c1 {
		t.Fatalf("the conn changed after a panicking filter: %v %v", c, ok)
	}
	if _, ok := m.Get(peer("c", "").Key()); ok {
		t.Fatal("a peer whose filter panicked was added")
	}
	m.OnRemove(peer("b", ""))
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	expectEOF(t, sc1)
	for _, inst := range d.instances() {
		if inst.Name != srv.addr && inst.Name != "boom" {
			t.Fatalf("dialed %s after a panicking filter", inst.Name)
		}
	}
}

// A draining or unhealthy peer keeps its connection (its players are still
// there); a filter that looks at the state can drop it if the user wants.
func TestConnManagerKeepsDrainingPeers(t *testing.T) {
	connLeakCheck(t)
	srv := startServer(t, "127.0.0.1:0")
	var d tcpDialer
	m := newTestManager(t, &d)
	p := peer("a", srv.addr)
	m.OnAdd(p)
	c1 := waitConn(t, m, p.Key(), nil)
	prev := p
	for _, s := range []State{Draining, Unhealthy, Serving} {
		cur := prev
		cur.State = s
		m.OnUpdate(prev, cur)
		if c, ok := m.Get(p.Key()); !ok || c != c1 {
			t.Fatalf("state %v: the connection changed: %v %v", s, c, ok)
		}
		prev = cur
	}
	if n := d.calls.Load(); n != 1 {
		t.Fatalf("dials: got %d, want 1", n)
	}

	// The filter sees the state.
	var d2 tcpDialer
	m2 := newTestManager(t, &d2, WithConnFilter(func(i Instance) bool { return i.State == Serving }))
	m2.OnAdd(p)
	waitConn(t, m2, p.Key(), nil)
	draining := p
	draining.State = Draining
	m2.OnUpdate(p, draining)
	if _, ok := m2.Get(p.Key()); ok {
		t.Fatal("a filter that refuses draining peers kept the connection")
	}
}
