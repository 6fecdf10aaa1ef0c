package redistest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

// silence is how long a connection must stay quiet to count as getting no
// answer. Only the negative checks wait for it; answers are awaited with
// generous deadlines.
const silence = 300 * time.Millisecond

// verifyNoLeaksAtEnd checks, after every cleanup registered later (the
// proxy's and the clients'), that no goroutine started after this call is
// left.
func verifyNoLeaksAtEnd(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

// proxyGoroutines returns the stacks of the goroutines running Proxy
// methods now, "" when there is none.
func proxyGoroutines() string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "redistest.(*Proxy).") && !strings.Contains(g, "redistest.proxyGoroutines") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

// echoServer echoes every connection on 127.0.0.1 and counts what it gets.
type echoServer struct {
	ln net.Listener
	wg sync.WaitGroup

	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	accepted int
	received int64
}

// startEcho starts an echo server that t's cleanup closes (listener and
// connections) and waits for.
func startEcho(t *testing.T) *echoServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &echoServer{ln: ln, conns: map[net.Conn]struct{}{}}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.mu.Lock()
			e.conns[c] = struct{}{}
			e.accepted++
			e.mu.Unlock()
			e.wg.Add(1)
			go e.serve(c)
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		e.mu.Lock()
		for c := range e.conns {
			_ = c.Close()
		}
		e.mu.Unlock()
		e.wg.Wait()
	})
	return e
}

// serve echoes c; on EOF it finishes writing and closes.
func (e *echoServer) serve(c net.Conn) {
	defer e.wg.Done()
	defer func() {
		e.mu.Lock()
		delete(e.conns, c)
		e.mu.Unlock()
		_ = c.Close()
	}()
	buf := make([]byte, 16<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			e.mu.Lock()
			e.received += int64(n)
			e.mu.Unlock()
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (e *echoServer) Addr() string { return e.ln.Addr().String() }

// stats returns the number of accepted connections and bytes received.
func (e *echoServer) stats() (accepted int, received int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.accepted, e.received
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// roundTrip writes msg on c and expects it echoed back.
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read %q: %v", msg, err)
	}
	if string(got) != msg {
		t.Fatalf("echoed %q, want %q", got, msg)
	}
}

// expectSilence writes msg on c, which must succeed, and expects no answer
// (no data, no EOF, no reset) within silence.
func expectSilence(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write into a silent connection failed: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(silence))
	n, err := c.Read(make([]byte, 64))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("silent connection answered: %d bytes, %v", n, err)
	}
}

// waitConns polls until p holds want connections.
func waitConns(t *testing.T, p *Proxy, want int) {
	t.Helper()
	eventually(t, waitTimeout, func() error {
		if n := p.Conns(); n != want {
			return fmt.Errorf("proxy holds %d connections, want %d", n, want)
		}
		return nil
	})
}

func TestProxyForwards(t *testing.T) {
	e := startEcho(t)
	verifyNoLeaksAtEnd(t)
	p := StartProxy(t, e.Addr())
	if p.Target() != e.Addr() {
		t.Fatalf("Target %q, want %q", p.Target(), e.Addr())
	}

	a, b := dial(t, p.Addr()), dial(t, p.Addr())
	roundTrip(t, a, "hello a")
	roundTrip(t, b, "hello b")
	roundTrip(t, a, "again a")
	waitConns(t, p, 2)

	// A payload far larger than the socket buffers, written while reading,
	// then a half close: everything comes back, then EOF.
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	_ = a.SetDeadline(time.Now().Add(30 * time.Second))
	werr := make(chan error, 1)
	go func() {
		_, err := a.Write(payload)
		if err == nil {
			err = a.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(a)
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write payload: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echoed %d bytes, want %d identical ones", len(got), len(payload))
	}
	waitConns(t, p, 1) // a ended on both sides; b is still open

	_ = b.Close()
	waitConns(t, p, 0)
	if accepted, _ := e.stats(); accepted != 2 {
		t.Fatalf("target accepted %d connections, want 2", accepted)
	}

	// A target that refuses: the client's connection is closed, not held.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	_ = dead.Close()
	q := StartProxy(t, deadAddr)
	c := dial(t, q.Addr())
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("proxy to a closed port: read %d bytes, %v; want EOF or reset", n, err)
	}
	waitConns(t, q, 0)
}

func TestProxyStall(t *testing.T) {
	e := startEcho(t)
	verifyNoLeaksAtEnd(t)
	p := StartProxy(t, e.Addr())

	old := dial(t, p.Addr())
	roundTrip(t, old, "before the stall")
	_, before := e.stats()

	p.Stall()
	expectSilence(t, old, "lost in the middle")
	if _, after := e.stats(); after != before {
		t.Fatalf("target received %d bytes after the stall", after-before)
	}
	expectSilence(t, old, "still lost") // the socket is still open, writes still succeed

	fresh := dial(t, p.Addr())
	roundTrip(t, fresh, "after the stall")
	waitConns(t, p, 2)

	// The stalled connection is held open even when its client goes away:
	// nobody reads it, so nobody notices.
	_ = old.Close()
	roundTrip(t, fresh, "still forwarding")
	if n := p.Conns(); n != 2 {
		t.Fatalf("proxy holds %d connections, want 2 (one stalled)", n)
	}

	// A second stall stalls the fresh one as well.
	p.Stall()
	expectSilence(t, fresh, "lost too")
	roundTrip(t, dial(t, p.Addr()), "third")
}

func TestProxyBlackhole(t *testing.T) {
	e := startEcho(t)
	verifyNoLeaksAtEnd(t)
	p := StartProxy(t, e.Addr())

	old := dial(t, p.Addr())
	roundTrip(t, old, "before the blackhole")

	p.Blackhole(true)
	held := dial(t, p.Addr())
	expectSilence(t, held, "anybody there?")
	roundTrip(t, old, "existing connections are unaffected")
	waitConns(t, p, 2)
	if accepted, _ := e.stats(); accepted != 1 {
		t.Fatalf("target accepted %d connections, want 1 (no dial for a blackholed one)", accepted)
	}

	p.Blackhole(false)
	roundTrip(t, dial(t, p.Addr()), "after the blackhole")
	expectSilence(t, held, "still held") // what was blackholed stays so
	waitConns(t, p, 3)
}

func TestProxyClose(t *testing.T) {
	e := startEcho(t)
	verifyNoLeaksAtEnd(t)
	p, err := NewProxy(e.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close() // in case of an early failure

	// One connection of every kind: forwarding, stalled, blackholed.
	stalled := dial(t, p.Addr())
	roundTrip(t, stalled, "x")
	p.Stall()
	forwarding := dial(t, p.Addr())
	roundTrip(t, forwarding, "y")
	p.Blackhole(true)
	held := dial(t, p.Addr())
	waitConns(t, p, 3)

	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Close has waited for every goroutine of the proxy; one that has just
	// called wg.Done may still be returning, so allow it a moment.
	deadline := time.Now().Add(5 * time.Second)
	for g := proxyGoroutines(); g != ""; g = proxyGoroutines() {
		if time.Now().After(deadline) {
			t.Fatalf("goroutines of the proxy left after Close:\n%s", g)
		}
		time.Sleep(time.Millisecond)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if n := p.Conns(); n != 0 {
		t.Fatalf("closed proxy holds %d connections", n)
	}
	for _, c := range []net.Conn{stalled, forwarding, held} {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("after Close: read %d bytes, %v; want EOF or reset", n, err)
		}
	}
	p.Stall() // no-ops on a closed proxy
	p.Blackhole(false)
}

// proxyClient is a go-redis client for fault tests: one connection, no
// retries, short timeouts.
func proxyClient(t *testing.T, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{
		Addr:         addr,
		MaxRetries:   -1,
		PoolSize:     1,
		DialTimeout:  silence,
		ReadTimeout:  silence,
		WriteTimeout: silence,
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestProxyRedis(t *testing.T) {
	s := StartServer(t, ServerOptions{})
	verifyNoLeaksAtEnd(t)
	p := StartProxy(t, s.Addr())
	bg := context.Background()
	short := func() context.Context {
		c, cancel := context.WithTimeout(bg, silence)
		t.Cleanup(cancel)
		return c
	}

	c := proxyClient(t, p.Addr())
	if err := c.Set(ctx(t), "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx(t), "k").Result(); err != nil || v != "v" {
		t.Fatalf("GET through the proxy: %q, %v", v, err)
	}
	sub := c.Subscribe(ctx(t), "news")
	t.Cleanup(func() { _ = sub.Close() })
	if _, err := sub.Receive(ctx(t)); err != nil {
		t.Fatalf("SUBSCRIBE through the proxy: %v", err)
	}
	if got := s.Do(t, "PUBLISH", "news", "one"); got != int64(1) {
		t.Fatalf("PUBLISH reached %v subscribers, want 1", got)
	}
	if m, err := sub.ReceiveMessage(ctx(t)); err != nil || m.Payload != "one" {
		t.Fatalf("message through the proxy: %v, %v", m, err)
	}

	// A stalled subscription: the server still counts the subscriber and
	// writes to it, nothing arrives, and the subscriber gets no error
	// other than its own timeout.
	p.Stall()
	if got := s.Do(t, "PUBLISH", "news", "two"); got != int64(1) {
		t.Fatalf("PUBLISH to a stalled subscriber reached %v subscribers, want 1", got)
	}
	if msg, err := sub.ReceiveTimeout(ctx(t), silence); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("stalled subscription: got %v, %v; want a timeout", msg, err)
	}
	// The pooled connection of c is stalled too.
	if err := c.Ping(short()).Err(); err == nil {
		t.Fatal("PING on a stalled connection succeeded")
	}

	// New connections work: a new client, and c itself once it has dropped
	// its broken connection.
	if err := proxyClient(t, p.Addr()).Ping(ctx(t)).Err(); err != nil {
		t.Fatalf("PING on a new connection after the stall: %v", err)
	}
	eventually(t, waitTimeout, func() error { return c.Ping(ctx(t)).Err() })
	sub2 := proxyClient(t, p.Addr()).Subscribe(ctx(t), "news")
	t.Cleanup(func() { _ = sub2.Close() })
	if _, err := sub2.Receive(ctx(t)); err != nil {
		t.Fatalf("SUBSCRIBE after the stall: %v", err)
	}
	if got := s.Do(t, "PUBLISH", "news", "three"); got != int64(2) {
		t.Fatalf("PUBLISH reached %v subscribers, want 2 (one stalled)", got)
	}
	if m, err := sub2.ReceiveMessage(ctx(t)); err != nil || m.Payload != "three" {
		t.Fatalf("message after the stall: %v, %v", m, err)
	}

	// A blackholed connect: TCP connects, the handshake gets no answer.
	p.Blackhole(true)
	if err := proxyClient(t, p.Addr()).Ping(short()).Err(); err == nil {
		t.Fatal("PING through the blackhole succeeded")
	}
	p.Blackhole(false)
	if err := proxyClient(t, p.Addr()).Ping(ctx(t)).Err(); err != nil {
		t.Fatalf("PING after the blackhole: %v", err)
	}

	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// verifyNoLeaksAtEnd checks that no goroutine is left.
}
