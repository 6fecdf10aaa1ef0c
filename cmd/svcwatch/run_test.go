//go:build unix

package main

// run_test.go: `svcwatch run` as a user runs it: the built binary, a shell
// script as CMD, a real redis-server, and Go watchers as the peers.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch"
	"github.com/svcwatch/svcwatch/internal/redistest"
	"github.com/svcwatch/svcwatch/protocol"
)

// childScript is CMD in these tests. It records its pid and the SVCWATCH_
// environment, records each signal it gets, and exits with the status
// written into $CHILD_DIR/exit ("usr1": killed by SIGUSR1). CHILD_MODE=ignore
// ignores SIGTERM and SIGINT. The environment is written last, once the traps
// are set: waitChild waits for it, and the tests signal the child right after.
const childScript = `
echo $$ > "$CHILD_DIR/pid"
trap 'echo HUP >> "$CHILD_DIR/signals"' HUP
if [ "$CHILD_MODE" = ignore ]; then
  trap '' TERM INT
else
  trap 'echo TERM >> "$CHILD_DIR/signals"; exit 0' TERM
  trap 'echo INT >> "$CHILD_DIR/signals"; exit 0' INT
fi
env | grep '^SVCWATCH_' > "$CHILD_DIR/env.tmp"; mv "$CHILD_DIR/env.tmp" "$CHILD_DIR/env"
while [ ! -e "$CHILD_DIR/exit" ]; do sleep 0.05; done
code=$(cat "$CHILD_DIR/exit")
[ "$code" = usr1 ] && kill -USR1 $$
exit "$code"
`

// sidecar is one `svcwatch run` process with the child script as CMD.
type sidecar struct {
	t      *testing.T
	cmd    *exec.Cmd
	stderr *syncBuffer
	dir    string // the child's files
	done   chan struct{}
	code   int    // exit status, once done is closed
	http   string // SVCWATCH_HTTP as the child got it
	env    map[string]string
}

// buildRun builds the command into a temporary directory.
func buildRun(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	bin := filepath.Join(t.TempDir(), "svcwatch")
	if out, err := exec.Command(goBin, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startSidecar runs `svcwatch -addr addr run flags -- sh childScript` and,
// unless noWait, waits until the child has started.
func startSidecar(t *testing.T, bin, addr, mode string, noWait bool, flags ...string) *sidecar {
	t.Helper()
	dir := t.TempDir()
	script := filepath.Join(dir, "child.sh")
	if err := os.WriteFile(script, []byte(childScript), 0o600); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"-addr", addr, "run"}, flags...)
	args = append(args, "--", "/bin/sh", script)
	s := &sidecar{t: t, cmd: exec.Command(bin, args...), stderr: &syncBuffer{}, dir: dir, done: make(chan struct{})}
	s.cmd.Env = append(os.Environ(), "CHILD_DIR="+dir, "CHILD_MODE="+mode)
	s.cmd.Stdout, s.cmd.Stderr = s.stderr, s.stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := s.cmd.Wait()
		s.code = s.cmd.ProcessState.ExitCode()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			s.code = -1000
		}
		close(s.done)
	}()
	t.Cleanup(func() {
		select {
		case <-s.done:
		default:
			_ = s.cmd.Process.Kill()
			<-s.done
		}
		// The child dies with the sidecar (Pdeathsig); end it anyway off Linux.
		if pid := s.childPid(); pid > 0 {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
		if t.Failed() {
			t.Logf("sidecar output:\n%s", s.stderr)
		}
	})
	if !noWait {
		s.waitChild()
	}
	return s
}

// waitChild waits until the child has written its environment.
func (s *sidecar) waitChild() {
	s.t.Helper()
	var b []byte
	s.eventually("the child to start", func() bool {
		var err error
		b, err = os.ReadFile(filepath.Join(s.dir, "env"))
		return err == nil
	})
	s.env = map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			s.env[k] = v
		}
	}
	s.http = s.env["SVCWATCH_HTTP"]
	if s.http == "" {
		s.t.Fatalf("the child got no SVCWATCH_HTTP: %q", b)
	}
}

// eventually is eventually that also gives up when the sidecar has exited.
func (s *sidecar) eventually(what string, cond func() bool) {
	s.t.Helper()
	eventually(s.t, what, func() bool {
		select {
		case <-s.done:
			if !cond() {
				s.t.Fatalf("the sidecar exited (status %d) before %s:\n%s", s.code, what, s.stderr)
			}
			return true
		default:
			return cond()
		}
	})
}

func (s *sidecar) childPid() int {
	b, err := os.ReadFile(filepath.Join(s.dir, "pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

func (s *sidecar) signals() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "signals"))
	return strings.Join(strings.Fields(string(b)), " ")
}

// exitChild makes the child exit with status code.
func (s *sidecar) exitChild(code int) { s.exitChildWith(strconv.Itoa(code)) }

// exitChildWith writes how the child ends, whole before the child sees it.
func (s *sidecar) exitChildWith(how string) {
	s.t.Helper()
	tmp := filepath.Join(s.dir, "exit.tmp")
	if err := os.WriteFile(tmp, []byte(how), 0o600); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, "exit")); err != nil {
		s.t.Fatal(err)
	}
}

func (s *sidecar) signal(sig os.Signal) {
	s.t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.t.Fatal(err)
	}
}

// wait waits for the sidecar to exit and returns its status.
func (s *sidecar) wait() int {
	s.t.Helper()
	select {
	case <-s.done:
		return s.code
	case <-time.After(waitTimeout):
		s.t.Fatalf("the sidecar did not exit:\n%s", s.stderr)
		return 0
	}
}

// call makes one request to the sidecar's API and returns the status, the
// X-Svcwatch-Index header and the body.
func (s *sidecar) call(method, path, body string) (int, string, []byte) {
	s.t.Helper()
	req, err := http.NewRequest(method, "http://"+s.http+path, strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		s.t.Errorf("%s %s: Content-Type %q", method, path, ct)
	}
	return resp.StatusCode, resp.Header.Get("X-Svcwatch-Index"), b
}

// table is GET /v1/tables/{table}, which must answer 200.
func (s *sidecar) table(path string) runTable {
	s.t.Helper()
	code, hdr, b := s.call("GET", "/v1/tables/"+path, "")
	if code != http.StatusOK {
		s.t.Fatalf("GET %s: %d %s", path, code, b)
	}
	var out runTable
	if err := json.Unmarshal(b, &out); err != nil {
		s.t.Fatal(err)
	}
	if hdr != strconv.FormatUint(out.Index, 10) {
		s.t.Errorf("X-Svcwatch-Index %q, body index %d", hdr, out.Index)
	}
	return out
}

func (s *sidecar) stats() runStats {
	s.t.Helper()
	code, _, b := s.call("GET", "/v1/stats", "")
	var st runStats
	if err := json.Unmarshal(b, &st); code != http.StatusOK || err != nil {
		s.t.Fatalf("stats: %d %s %v", code, b, err)
	}
	return st
}

// observer is a Go process watching tables: the peers' view of the sidecar.
type observer struct {
	w      *svcwatch.RedisServiceWatcher
	mu     sync.Mutex
	events []string // "add ID state", "update ID state", "remove ID"
}

func newObserver(t *testing.T, addr string, tables ...string) *observer {
	t.Helper()
	o := &observer{}
	note := func(format string, args ...any) {
		o.mu.Lock()
		defer o.mu.Unlock()
		o.events = append(o.events, fmt.Sprintf(format, args...))
	}
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	w, err := svcwatch.NewRedisServiceWatcher(c, svcwatch.Instance{Table: tables[0]}, svcwatch.WatchOnly(),
		svcwatch.WithTables(tables[1:]...),
		svcwatch.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		svcwatch.WithHandler(svcwatch.HandlerFuncs{
			Add:    func(in svcwatch.Instance) { note("add %s %s", in.ID, in.State) },
			Update: func(_, in svcwatch.Instance) { note("update %s %s", in.ID, in.State) },
			Remove: func(in svcwatch.Instance) { note("remove %s", in.ID) },
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stop(t, w)
		_ = c.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	o.w = w
	return o
}

func (o *observer) log() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return strings.Join(o.events, "; ")
}

// lookup is the observer's view of one instance.
func (o *observer) lookup(table, id string) (svcwatch.Instance, bool) { return o.w.Lookup(table, id) }

// registered reports whether Redis holds a record of table/id: the state
// right after the sidecar exited, with no expiry involved.
func registered(t *testing.T, srv *redistest.Server, table, id string) bool {
	t.Helper()
	n, _ := srv.Do(t, "HEXISTS", protocol.TableKeys("svcwatch", table).Inst, id).(int64)
	return n == 1
}

func TestRun(t *testing.T) {
	if !runSupported {
		t.Skip("svcwatch run needs Unix")
	}
	noEnvAuth(t)
	bin := buildRun(t)
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	addr := srv.Addr()

	t.Run("serves its child", func(t *testing.T) { testRunServes(t, bin, srv) })
	t.Run("child exit status", func(t *testing.T) {
		const table = "game/prod/v1/exit"
		obs := newObserver(t, addr, table)
		// A TTL far beyond the waits: a removal seen is the deregistration.
		s := startSidecar(t, bin, addr, "", false, "-table", table, "-id", "e1", "-name", "127.0.0.1:9101", "-ttl", "60s")
		eventually(t, "peers to see e1", func() bool { _, ok := obs.lookup(table, "e1"); return ok })
		s.exitChild(3)
		if code := s.wait(); code != 3 {
			t.Errorf("exit status %d, want the child's 3:\n%s", code, s.stderr)
		}
		if registered(t, srv, table, "e1") {
			t.Error("e1 still in Redis after the sidecar exited")
		}
		eventually(t, "peers to see e1 removed", func() bool { return strings.Contains(obs.log(), "remove e1") })

		// Killed by signal N: 128+N, as a shell says.
		s = startSidecar(t, bin, addr, "", false, "-table", table, "-id", "e2", "-name", "127.0.0.1:9107")
		s.exitChildWith("usr1")
		if code, want := s.wait(), 128+int(syscall.SIGUSR1); code != want {
			t.Errorf("child killed by SIGUSR1: exit status %d, want %d:\n%s", code, want, s.stderr)
		}
	})
	t.Run("grace then kill", func(t *testing.T) {
		const table = "game/prod/v1/grace"
		s := startSidecar(t, bin, addr, "ignore", false, "-table", table, "-id", "k1", "-name", "127.0.0.1:9102",
			"-ttl", "60s", "-grace", "300ms")
		pid := s.childPid()
		s.signal(syscall.SIGTERM)
		if code := s.wait(); code != 128+int(syscall.SIGKILL) {
			t.Errorf("exit status %d, want %d (the child was killed):\n%s", code, 128+int(syscall.SIGKILL), s.stderr)
		}
		if !strings.Contains(s.stderr.String(), "did not exit within -grace") {
			t.Errorf("no word of the kill:\n%s", s.stderr)
		}
		if processAlive(pid) {
			t.Errorf("child %d still running", pid)
		}
		if registered(t, srv, table, "k1") {
			t.Error("k1 still in Redis after the sidecar exited")
		}
	})
	t.Run("signals forwarded", func(t *testing.T) {
		s := startSidecar(t, bin, addr, "", false, "-table", "game/prod/v1/sig", "-id", "s1", "-name", "127.0.0.1:9103")
		s.signal(syscall.SIGHUP) // passed on; nobody stops
		s.eventually("the child to get SIGHUP", func() bool { return s.signals() == "HUP" })
		s.signal(syscall.SIGINT)
		if code := s.wait(); code != 0 {
			t.Errorf("exit status %d, want the child's 0:\n%s", code, s.stderr)
		}
		if got := s.signals(); got != "HUP INT" {
			t.Errorf("the child got %q, want HUP INT", got)
		}
	})
	t.Run("health", func(t *testing.T) {
		const table = "game/prod/v1/health"
		var healthy atomic.Bool
		hs := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			if healthy.Load() {
				return
			}
			http.Error(rw, "loading maps", http.StatusServiceUnavailable)
		})}
		ln := listenLoopback(t)
		go func() { _ = hs.Serve(ln) }()
		t.Cleanup(func() { _ = hs.Close() })
		obs := newObserver(t, addr, table)
		s := startSidecar(t, bin, addr, "", false, "-table", table, "-id", "h1", "-name", "127.0.0.1:9104",
			"-ttl", "5s", "-keepalive", "500ms", "-health", "http://"+ln.Addr().String()+"/healthz")
		state := func() svcwatch.State { in, _ := obs.lookup(table, "h1"); return in.State }
		eventually(t, "peers to see h1 unhealthy", func() bool { return state() == svcwatch.Unhealthy })
		if st := s.stats(); st.State != "unhealthy" {
			t.Errorf("stats state %q", st.State)
		}
		healthy.Store(true)
		eventually(t, "peers to see h1 serving", func() bool {
			in, ok := obs.lookup(table, "h1")
			return ok && in.State == svcwatch.Serving
		})
		s.exitChild(0)
		s.wait()
	})
	t.Run("sidecar killed", func(t *testing.T) {
		if _, err := os.Stat("/proc/self/stat"); err != nil {
			t.Skip("the parent-death signal is Linux only")
		}
		s := startSidecar(t, bin, addr, "", false, "-table", "game/prod/v1/killed", "-id", "d1", "-name", "127.0.0.1:9105")
		pid := s.childPid()
		s.signal(syscall.SIGKILL)
		s.wait()
		eventually(t, "the child to die with the sidecar", func() bool { return !processAlive(pid) })
	})
	t.Run("duplicate id", func(t *testing.T) {
		const table = "game/prod/v1/dup"
		registerInstance(t, addr, svcwatch.Instance{Table: table, ID: "d1", Name: "127.0.0.1:9108"})
		s := startSidecar(t, bin, addr, "", true, "-table", table, "-id", "d1", "-name", "127.0.0.1:9109")
		if code := s.wait(); code != 1 || !strings.Contains(s.stderr.String(), "duplicate id") {
			t.Errorf("exit status %d, want 1 with the reason:\n%s", code, s.stderr)
		}
		if _, err := os.Stat(filepath.Join(s.dir, "env")); err == nil {
			t.Error("the child was started")
		}
	})
	t.Run("redis late", func(t *testing.T) { testRunRedisLate(t, bin) })
	t.Run("watch prefix", func(t *testing.T) { testRunPrefix(t, bin, addr) })
	t.Run("1000 waiters", func(t *testing.T) { testRunWaiters(t, bin, srv) })
}

// processAlive reports whether pid runs (a zombie does not).
func processAlive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true // no /proc: kill(0) said it exists
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func listenLoopback(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// testRunRedisLate starts the sidecar while Redis is down: CMD starts anyway,
// the API says the table is not loaded yet, and the registration follows
// when Redis is back.
func testRunRedisLate(t *testing.T, bin string) {
	const table = "game/prod/v1/late"
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	srv.Kill(t)
	s := startSidecar(t, bin, srv.Addr(), "", false, "-table", table, "-id", "l1", "-name", "127.0.0.1:9106")
	if !strings.Contains(s.stderr.String(), "starting CMD anyway") {
		t.Errorf("the sidecar did not say it starts CMD unregistered:\n%s", s.stderr)
	}
	code, hdr, b := s.call("GET", "/v1/tables/"+table, "")
	if code != http.StatusServiceUnavailable || hdr != "0" || !strings.Contains(string(b), "not loaded yet") {
		t.Errorf("before Redis: %d index %q %s", code, hdr, b)
	}
	// A query for the load waits for it.
	loaded := s.queryAsync(http.DefaultClient, "/v1/tables/"+table+"?index=0&wait=1m")
	s.eventually("the query to wait", func() bool { return s.stats().Waiters == 1 })
	srv.Start(t)
	obs := newObserver(t, srv.Addr(), table)
	eventually(t, "peers to see l1", func() bool { _, ok := obs.lookup(table, "l1"); return ok })
	if out := receive(t, loaded, "the query waiting for the load"); out.Index == 0 || ids(out.Instances) != "l1" {
		t.Errorf("the waiting query answered %+v", out)
	}
	s.exitChild(0)
	if code := s.wait(); code != 0 {
		t.Errorf("exit %d", code)
	}
}

// TestRunUsage checks the refusals that come before anything starts: exit
// status 2 and a message that says what to fix.
func TestRunUsage(t *testing.T) {
	noEnvAuth(t)
	// A port nobody listens on: a case that wrongly passed would find no
	// Redis, never the developer's.
	nowhere := "127.0.0.1:" + strconv.Itoa(redistest.FreePort(t))
	ok := []string{"-table", "game/prod/v1/gate", "-id", "g1", "-name", "127.0.0.1:9000"}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"run"}, "needs the command to run"},
		{append(append([]string{"run"}, ok...), "--"), "needs the command to run"},
		{[]string{"run", "-table", "t/a", "--", "true"}, "-id, -name required"},
		{append(append([]string{"run"}, ok...), "-http", "0.0.0.0:0", "--", "true"), "not a loopback address"},
		{append(append([]string{"run"}, ok...), "-http", ":0", "--", "true"), "not a loopback address"},
		{append(append([]string{"run"}, ok...), "-http", "nonsense", "--", "true"), "-http"},
		{append(append([]string{"run"}, ok...), "-meta", "novalue", "--", "true"), "not key=value"},
		{append(append([]string{"run"}, ok...), "-meta", "a=1", "-meta", "a=2", "--", "true"), "given twice"},
		{append(append([]string{"run"}, ok...), "-meta", "weight=heavy", "--", "true"), "weight"},
		{append(append([]string{"run"}, ok...), "-state", "unhealthy", "--", "true"), "-state"},
		{append(append([]string{"run"}, ok...), "-health", "ftp://x/y", "--", "true"), "-health"},
		{append(append([]string{"run"}, ok...), "-grace", "-1s", "--", "true"), "-grace"},
		{append(append([]string{"run"}, ok...), "-ttl", "1s", "-keepalive", "1s", "--", "true"), "twice the keepalive"},
		{append(append([]string{"run"}, ok...), "-watch", "bad{table}", "--", "true"), "table"},
		{[]string{"run", "-table", "a b", "-id", "g1", "-name", "h:1", "--", "true"}, "white space"},
		{append(append([]string{"run"}, ok...), "-watch-prefix", "/", "--", "true"), "prefix"},
	} {
		_, errOut, code := runCmd(t, append([]string{"-addr", nowhere}, c.args...)...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%q: exit %d, want 2 and %q in:\n%s", c.args, code, c.want, errOut)
		}
	}

	// CMD that cannot start: a shell's 127 and 126, and nothing registered
	// (Redis is never asked: nobody listens at nowhere).
	for cmd, want := range map[string]int{"/nonexistent/cmd": 127, "svcwatch-no-such-command": 127, "/etc/passwd": 126} {
		_, errOut, exited := runCmd(t, append(append([]string{"-addr", nowhere, "run"}, ok...), "--", cmd)...)
		if exited != want || !strings.Contains(errOut, "cannot start") {
			t.Errorf("CMD %s: exit %d, want %d:\n%s", cmd, exited, want, errOut)
		}
	}

	// -h explains every flag.
	_, errOut, code := runCmd(t, "run", "-h")
	if code != 0 {
		t.Errorf("run -h: exit %d", code)
	}
	for _, f := range []string{"-table", "-id", "-name", "-desc", "-meta", "-state", "-ttl", "-keepalive", "-health",
		"-watch", "-watch-prefix", "-http", "-http-public", "-grace", "SVCWATCH_HTTP", "/v1/tables/{table}", "?index=N&wait=30s",
		"/v1/pick/{table}?key=K", "/v1/self/state"} {
		if !strings.Contains(errOut, f) {
			t.Errorf("run -h does not mention %s:\n%s", f, errOut)
		}
	}
}
