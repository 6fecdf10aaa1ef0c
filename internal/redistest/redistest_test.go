//go:build unix

package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// eventually polls f until it returns nil or fails t after timeout.
func eventually(t *testing.T, timeout time.Duration, f func() error) {
	t.Helper()
	if err := poll(timeout, f); err != nil {
		t.Fatal(err)
	}
}

func TestFreePort(t *testing.T) {
	seen := map[int]bool{}
	for i := 0; i < 20; i++ {
		p := FreePort(t)
		if p <= 0 || p == 6379 || seen[p] {
			t.Fatalf("bad or repeated port %d", p)
		}
		seen[p] = true
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			t.Fatalf("port %d not free: %v", p, err)
		}
		l.Close()
	}
}

func TestServerRestartWithoutPersist(t *testing.T) {
	s := StartServer(t, ServerOptions{})
	if s.Port() == 6379 || s.Addr() != fmt.Sprintf("127.0.0.1:%d", s.Port()) {
		t.Fatalf("bad addr %s", s.Addr())
	}
	c := s.Client(t)
	if err := c.Set(ctx(t), "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	port := s.Port()

	s.Kill(t)
	if s.Running() {
		t.Fatal("running after Kill")
	}
	if _, err := probe(s.Addr()); err == nil {
		t.Fatal("killed server still answers PING")
	}
	s.Kill(t) // no-op

	s.Start(t)
	if s.Port() != port {
		t.Fatalf("port changed %d -> %d", port, s.Port())
	}
	if v, err := c.Get(ctx(t), "k").Result(); !errors.Is(err, redis.Nil) {
		t.Fatalf("without Persist the key survived a kill: %q, %v", v, err)
	}

	if err := c.Set(ctx(t), "k2", "v2", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s.Restart(t)
	if n := s.Do(t, "DBSIZE"); n != int64(0) {
		t.Fatalf("DBSIZE after Restart = %v, want 0", n)
	}
}

func TestServerRestartWithPersist(t *testing.T) {
	s := StartServer(t, ServerOptions{Persist: true})
	c := s.Client(t)
	for i := 0; i < 100; i++ {
		if err := c.Set(ctx(t), fmt.Sprintf("k%d", i), i, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	s.Restart(t)
	if v, err := c.Get(ctx(t), "k99").Result(); err != nil || v != "99" {
		t.Fatalf("after Restart with Persist: %q, %v", v, err)
	}
	if n := s.Do(t, "DBSIZE"); n != int64(100) {
		t.Fatalf("DBSIZE = %v, want 100", n)
	}
}

func TestServerDo(t *testing.T) {
	s := StartServer(t, ServerOptions{Args: []string{"--maxmemory", "12mb"}})
	if v := s.Do(t, "SET", "a", "1"); v != "OK" {
		t.Fatalf("SET = %v", v)
	}
	if v := s.Do(t, "GET", "a"); v != "1" {
		t.Fatalf("GET = %v", v)
	}
	if v := s.Do(t, "GET", "missing"); v != nil {
		t.Fatalf("GET missing = %v, want nil", v)
	}
	v := s.Do(t, "CONFIG", "GET", "maxmemory")
	if a, ok := v.([]any); !ok || len(a) != 2 || a[1] != "12582912" {
		t.Fatalf("Args not applied: CONFIG GET maxmemory = %#v", v)
	}
	v = s.Do(t, "CONFIG", "GET", "appendonly")
	if a, ok := v.([]any); !ok || len(a) != 2 || a[1] != "no" {
		t.Fatalf("CONFIG GET appendonly = %#v", v)
	}
}

func TestServerFreezeThaw(t *testing.T) {
	s := StartServer(t, ServerOptions{})
	c := s.Client(t, func(o *redis.Options) {
		o.ContextTimeoutEnabled = true
		o.MaxRetries = -1
	})
	if err := c.Ping(ctx(t)).Err(); err != nil {
		t.Fatal(err)
	}

	s.Freeze(t)
	short, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	err := c.Ping(short).Err()
	cancel()
	if err == nil {
		t.Fatal("PING succeeded on a frozen server")
	}

	s.Thaw(t)
	eventually(t, 10*time.Second, func() error { return c.Ping(ctx(t)).Err() })
}

// TestCleanupKillsFrozenServer checks that cleanup kills a SIGSTOPped server
// and reaps it.
func TestCleanupKillsFrozenServer(t *testing.T) {
	var pid int
	var dir string
	t.Run("frozen", func(t *testing.T) {
		s := StartServer(t, ServerOptions{})
		s.Freeze(t)
		pid, dir = s.proc.pid, s.Dir()
	})
	if pid == 0 {
		t.Fatal("subtest did not start a server")
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("pid %d still exists after cleanup: %v", pid, err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("dir %s not removed", dir)
	}
}

func TestServerACL(t *testing.T) {
	s := StartServer(t, ServerOptions{ACL: []string{
		"user app on >pw ~svcwatch:* &svcwatch:* +@all -@dangerous",
	}})
	app := s.Client(t, func(o *redis.Options) {
		o.Username = "app"
		o.Password = "pw"
	})
	if err := app.Set(ctx(t), "svcwatch:x", "1", 0).Err(); err != nil {
		t.Fatalf("allowed SET: %v", err)
	}
	if err := app.Keys(ctx(t), "*").Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Fatalf("KEYS for a -@dangerous user: err = %v, want NOPERM", err)
	}
	if err := app.Set(ctx(t), "other", "1", 0).Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Fatalf("SET outside ~svcwatch:*: err = %v, want NOPERM", err)
	}
	// The default user (admin) is unrestricted.
	if v := s.Do(t, "KEYS", "*"); len(v.([]any)) != 1 {
		t.Fatalf("admin KEYS = %v", v)
	}
	// ACL survives a restart (the aclfile stays in the dir).
	s.Restart(t)
	if err := app.Keys(ctx(t), "*").Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Fatalf("KEYS after restart: err = %v, want NOPERM", err)
	}
	if err := app.Ping(ctx(t)).Err(); err != nil {
		t.Fatalf("app PING after restart: %v", err)
	}
}

// TestStartRetriesWhileBusy occupies the port of a killed server and frees
// it later: Start must retry until it can bind.
func TestStartRetriesWhileBusy(t *testing.T) {
	s := StartServer(t, ServerOptions{})
	s.Kill(t)
	l, err := net.Listen("tcp", s.Addr())
	if err != nil {
		t.Fatalf("cannot occupy %s: %v", s.Addr(), err)
	}
	go func() {
		// Free the port once Start has seen it busy at least once.
		_ = poll(10*time.Second, func() error {
			if strings.Contains(tail(s.log, 0, 1000), "Address already in use") {
				return nil
			}
			return errors.New("not yet")
		})
		l.Close()
	}()
	s.Start(t)
	if !strings.Contains(s.LogTail(), "Ready to accept connections") {
		t.Fatalf("log tail: %s", s.LogTail())
	}
}

// fakeTB records Fatalf and Skip instead of failing or skipping the real
// test.
type fakeTB struct {
	testing.TB
	mu       sync.Mutex
	fatal    string
	skip     string
	cleanups []func()
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.fatal = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}
func (f *fakeTB) Fatal(args ...any) { f.Fatalf("%s", fmt.Sprint(args...)) }
func (f *fakeTB) Skip(args ...any) {
	f.mu.Lock()
	f.skip = fmt.Sprint(args...)
	f.mu.Unlock()
	runtime.Goexit()
}
func (f *fakeTB) Errorf(format string, args ...any) { f.Fatalf(format, args...) }
func (f *fakeTB) Cleanup(fn func())                 { f.cleanups = append(f.cleanups, fn) }
func (f *fakeTB) runCleanups() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}

// runFake calls f with a fakeTB on a goroutine of its own (Fatalf and Skip end
// it), runs the fakeTB's cleanups and returns it.
func runFake(t *testing.T, f func(tb testing.TB)) *fakeTB {
	fk := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(fk)
	}()
	<-done
	fk.runCleanups()
	return fk
}

// TestNewServerWithoutTB starts a server with no testing.TB: it answers,
// Close kills and reaps it and removes its dir, Close is idempotent, and a
// closed server cannot be started again.
func TestNewServerWithoutTB(t *testing.T) {
	s, err := NewServer(ServerOptions{})
	SkipOrFatal(t, err)
	t.Cleanup(func() { _ = s.Close() }) // in case the test fails before Close
	if !s.Running() || s.Port() == 0 || s.Port() == 6379 {
		t.Fatalf("bad server %s, running %v", s, s.Running())
	}
	s.mu.Lock()
	pid := s.proc.pid
	s.mu.Unlock()
	dir := s.Dir()

	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	if v, err := c.Ping(ctx(t)).Result(); err != nil || v != "PONG" {
		t.Fatalf("PING = %q, %v", v, err)
	}
	c.Close()

	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if s.Running() {
		t.Fatal("running after Close")
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("pid %d still exists after Close: %v", pid, err)
	}
	if _, err := probe(s.Addr()); err == nil {
		t.Fatal("closed server still answers PING")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("dir %s not removed: %v", dir, err)
	}
	if f := runFake(t, func(tb testing.TB) { s.Start(tb) }); !strings.Contains(f.fatal, "closed") {
		t.Fatalf("Start after Close: fatal %q", f.fatal)
	}
}

// TestMissingBinary checks that the New functions report a missing binary as
// ErrMissing and that the Start functions skip on it, or fail with
// SVCWATCH_REQUIRE_REDIS=1.
func TestMissingBinary(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	if _, err := NewServer(ServerOptions{}); !errors.Is(err, ErrMissing) {
		t.Fatalf("NewServer: err = %v, want ErrMissing", err)
	}
	if _, err := NewCluster(ClusterOptions{}); !errors.Is(err, ErrMissing) {
		t.Fatalf("NewCluster: err = %v, want ErrMissing", err)
	}
	if _, err := NewSentinel("m"); !errors.Is(err, ErrMissing) {
		t.Fatalf("NewSentinel: err = %v, want ErrMissing", err)
	}

	t.Setenv(RequireEnv, "")
	f := runFake(t, func(tb testing.TB) { StartServer(tb, ServerOptions{}) })
	if f.fatal != "" || !strings.Contains(f.skip, "redis-server not found") {
		t.Fatalf("StartServer without redis-server: skip %q, fatal %q; want a skip", f.skip, f.fatal)
	}
	t.Setenv(RequireEnv, "1")
	f = runFake(t, func(tb testing.TB) { StartCluster(tb, ClusterOptions{}) })
	if f.skip != "" || !strings.Contains(f.fatal, "not found") || !strings.Contains(f.fatal, RequireEnv) {
		t.Fatalf("StartCluster without redis-server, %s=1: skip %q, fatal %q; want a failure", RequireEnv, f.skip, f.fatal)
	}
}

func TestStartFailureShowsLogTail(t *testing.T) {
	Require(t)
	f := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		StartServer(f, ServerOptions{Args: []string{"--loadmodule", "/nonexistent/redistest-module.so"}})
	}()
	<-done
	f.runCleanups()
	if f.fatal == "" {
		t.Fatal("StartServer with a bad module did not fail")
	}
	if !strings.Contains(f.fatal, "/nonexistent/redistest-module.so") || !strings.Contains(f.fatal, "tail of") {
		t.Fatalf("failure message lacks the log tail:\n%s", f.fatal)
	}
	t.Logf("failure message:\n%s", f.fatal)
}

func TestCluster(t *testing.T) {
	c := StartCluster(t, ClusterOptions{Replicas: 1})
	if len(c.Nodes()) != 6 || len(c.Addrs()) != 6 {
		t.Fatalf("nodes = %d, addrs = %d, want 6", len(c.Nodes()), len(c.Addrs()))
	}
	cc := c.Client(t)
	const key = "svcwatch:cluster-key"
	if err := cc.Set(ctx(t), key, "hello", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if v, err := cc.Get(ctx(t), key).Result(); err != nil || v != "hello" {
		t.Fatalf("GET = %q, %v", v, err)
	}

	m := c.MasterForKey(t, key)
	if v := m.Do(t, "GET", key); v != "hello" {
		t.Fatalf("MasterForKey %s: GET = %v", m, v)
	}
	// Make sure the replica has the key before the master dies.
	if n := m.Do(t, "WAIT", 1, 5000); n != int64(1) {
		t.Fatalf("WAIT = %v", n)
	}

	m.Kill(t)
	c.WaitHealthy(t)
	m2 := c.MasterForKey(t, key)
	if m2 == m {
		t.Fatalf("slot still served by the killed node %s", m)
	}
	// go-redis keeps its slot map up to 10 s unless told otherwise.
	cc.ReloadState(ctx(t))
	eventually(t, 20*time.Second, func() error {
		v, err := cc.Get(ctx(t), key).Result()
		if err != nil {
			return err
		}
		if v != "hello" {
			return fmt.Errorf("GET = %q", v)
		}
		return nil
	})

	// The old master comes back as a replica of the promoted one.
	m.Start(t)
	c.WaitHealthy(t)
	eventually(t, 20*time.Second, func() error {
		r, err := m.role()
		if err != nil {
			return err
		}
		if r != "slave" {
			return fmt.Errorf("restarted master has role %s", r)
		}
		return nil
	})
	if got := c.MasterForKey(t, key); got != m2 {
		t.Fatalf("MasterForKey after rejoin = %s, want %s", got, m2)
	}
}

func TestSentinel(t *testing.T) {
	s := StartSentinel(t, "svcwatch-master")
	if s.MasterName() != "svcwatch-master" || s.SentinelAddr() == "" {
		t.Fatal("bad accessors")
	}
	m1 := s.Master(t)
	c := s.Client(t)
	if err := c.Set(ctx(t), "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n := m1.Do(t, "WAIT", 1, 5000); n != int64(1) {
		t.Fatalf("WAIT = %v", n)
	}

	s.Failover(t)
	m2 := s.Master(t)
	if m2 == m1 {
		t.Fatalf("master unchanged after Failover: %s", m1)
	}
	eventually(t, 20*time.Second, func() error {
		if err := c.Set(ctx(t), "k2", "v2", 0).Err(); err != nil {
			return err
		}
		v, err := c.Get(ctx(t), "k").Result()
		if err != nil {
			return err
		}
		if v != "v" {
			return fmt.Errorf("GET k = %q", v)
		}
		return nil
	})
	if v := m2.Do(t, "GET", "k2"); v != "v2" {
		t.Fatalf("write did not reach the new master: %v", v)
	}

	// A second failover goes back to the first node.
	s.Failover(t)
	if got := s.Master(t); got != m1 {
		t.Fatalf("second Failover: master %s, want %s", got, m1)
	}
}
