// Package redistest starts real Redis servers, clusters and sentinels from the
// redis-server binary for use in tests.
//
// Every process listens on 127.0.0.1 on a free port (never 6379) and runs in
// its own process group with its own temporary directory and log file.
//
// There are two ways to start things. StartServer, StartCluster and
// StartSentinel tie them to a testing.TB: they skip the test when redis-server
// is missing (see Require), fail it when the start fails, and register a
// t.Cleanup that closes what they started. NewServer, NewCluster and
// NewSentinel need no testing.TB, for things that outlive one test (e.g.
// shared by a whole test binary and closed after m.Run): they return an error
// instead (one that matches ErrMissing when the binary is missing; see
// SkipOrFatal) and the caller must call Close, which kills the processes
// (frozen or not), waits for them and removes their directories. The Start
// functions are thin wrappers over the New ones.
//
// Each running process is watched by one goroutine until it exits, so leak
// checks (goleak) should run after cleanups, e.g. with goleak.VerifyTestMain.
//
// All waits are polls against a generous deadline; nothing asserts timing.
package redistest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// RequireEnv is the environment variable that turns skips for a missing
// redis-server (or redis-cli) binary into test failures when set to "1".
const RequireEnv = "SVCWATCH_REQUIRE_REDIS"

const (
	startTimeout  = 20 * time.Second // start of one process, retries on a busy port included
	waitTimeout   = 10 * time.Second // simple state waits (kill, freeze, sync)
	pollInterval  = 25 * time.Millisecond
	logTailLines  = 40
	maxBusFreeTop = 55535 // data ports below this keep port+10000 valid
)

// ErrMissing is matched (errors.Is) by the error of NewServer, NewCluster
// and NewSentinel when a binary they need (redis-server, redis-cli) is not on
// PATH or this OS cannot run the helpers. Tests usually skip then; see
// SkipOrFatal.
var ErrMissing = errors.New("redistest: redis binary missing")

// missingError is an ErrMissing with a message of its own.
type missingError struct{ msg string }

func (e *missingError) Error() string        { return e.msg }
func (e *missingError) Is(target error) bool { return target == ErrMissing }

// Require skips t (or fails it when env SVCWATCH_REQUIRE_REDIS=1) if
// redis-server is not on PATH or this OS cannot run the helpers. Every
// exported helper that starts a process for a testing.TB does the same.
func Require(t testing.TB) {
	t.Helper()
	requireBinary(t, "redis-server")
}

// SkipOrFatal does nothing when err is nil. When err matches ErrMissing it
// skips t, or fails it when env SVCWATCH_REQUIRE_REDIS=1; any other error
// fails t. It is what StartServer, StartCluster and StartSentinel do with the
// error of NewServer, NewCluster and NewSentinel.
func SkipOrFatal(t testing.TB, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if errors.Is(err, ErrMissing) {
		missing(t, err.Error())
	}
	t.Fatal(err)
}

// requireBinary returns the absolute path of name, or skips/fails t.
func requireBinary(t testing.TB, name string) string {
	t.Helper()
	path, err := lookBinary(name)
	SkipOrFatal(t, err)
	return path
}

// lookBinary returns the absolute path of name, or an error matching
// ErrMissing.
func lookBinary(name string) (string, error) {
	if !procSupported {
		return "", &missingError{"redistest: processes cannot be controlled on this OS"}
	}
	path, err := exec.LookPath(name)
	if err != nil {
		return "", &missingError{fmt.Sprintf("redistest: %s not found on PATH: %v", name, err)}
	}
	return path, nil
}

func missing(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s (%s=1)", msg, RequireEnv)
	}
	t.Skip(msg)
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// FreePort returns a TCP port that was free on 127.0.0.1 a moment ago
// (listen on 127.0.0.1:0, take the port, close). A port is never returned
// twice by one test binary.
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := freePort(0)
	if err != nil {
		t.Fatalf("redistest: FreePort: %v", err)
	}
	return p
}

// freePort returns a fresh free port; below limit when limit > 0.
func freePort(limit int) (int, error) {
	var lastErr error
	for i := 0; i < 1000; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			lastErr = err
			continue
		}
		p := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if limit > 0 && p >= limit {
			continue
		}
		portsMu.Lock()
		given := portsGiven[p]
		portsGiven[p] = true
		portsMu.Unlock()
		if !given {
			return p, nil
		}
	}
	if lastErr == nil {
		lastErr = errors.New("no suitable port found")
	}
	return 0, lastErr
}

// poll calls f until it returns nil or timeout passes; it returns the last
// error wrapped with the timeout.
func poll(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still failing after %v: %w", timeout, err)
		}
		time.Sleep(pollInterval)
	}
}

// fileSize returns the size of path, 0 when it does not exist.
func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// tail returns the last n lines of path starting at byte offset from.
func tail(path string, from int64, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	if from > 0 && from <= int64(len(b)) {
		b = b[from:]
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	s := strings.Join(lines, "\n")
	if strings.TrimSpace(s) == "" {
		return "(empty)"
	}
	return s
}

// parseInfo turns INFO / CLUSTER INFO output into a map.
func parseInfo(s string) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = v
		}
	}
	return m
}

// probe sends PING and INFO server over a raw connection and returns the
// server's process_id. It needs no client library state, so it is cheap to
// call in a tight poll.
func probe(addr string) (int, error) {
	conn, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	r := bufio.NewReader(conn)
	if _, err := conn.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return 0, err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, err
	}
	if line = strings.TrimSpace(line); line != "+PONG" {
		return 0, fmt.Errorf("PING answered %q", line)
	}
	if _, err := conn.Write([]byte("*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")); err != nil {
		return 0, err
	}
	line, err = r.ReadString('\n')
	if err != nil {
		return 0, err
	}
	line = strings.TrimSpace(line)
	if !strings.HasPrefix(line, "$") {
		return 0, fmt.Errorf("INFO answered %q", line)
	}
	n, err := strconv.Atoi(line[1:])
	if err != nil || n < 0 {
		return 0, fmt.Errorf("INFO answered %q", line)
	}
	buf := make([]byte, n+2)
	if _, err := io.ReadFull(r, buf); err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(parseInfo(string(bytes.TrimSpace(buf)))["process_id"])
	if err != nil {
		return 0, fmt.Errorf("INFO server has no process_id: %v", err)
	}
	return pid, nil
}

// ctxTimeout is a helper for short admin calls.
func ctxTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
