package main

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"go.uber.org/goleak"

	"github.com/svcwatch/svcwatch/internal/redistest"
)

// The binary built by `go build`, run as a user would run it: nothing installed.
func TestBinaryOnMiniredis(t *testing.T) {
	checkStory(t, runBinary(t, buildBinary(t)))
}

// The same binary against a real redis-server (skipped without the binary unless
// SVCWATCH_REQUIRE_REDIS=1).
func TestBinaryOnRealRedis(t *testing.T) {
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	checkStory(t, runBinary(t, buildBinary(t), "-redis", srv.Addr()))
}

// run itself, on a miniredis owned by the test; afterwards no goroutine of any
// process is left, the killed game server's watcher included.
func TestRunOnMiniredis(t *testing.T) {
	leakOpts := []goleak.Option{
		goleak.IgnoreCurrent(),
		goleak.IgnoreAnyFunction("github.com/alicebob/miniredis/v2/server.(*Server).servePeer"),
		goleak.IgnoreAnyFunction("github.com/alicebob/miniredis/v2/server.(*Server).serve"),
		goleak.IgnoreAnyFunction("github.com/alicebob/miniredis/v2/server.(*Server).ServeConn"),
	}
	mr := miniredis.RunT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, mr.Addr(), &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	checkStory(t, out.String())
	mr.Close()
	goleak.VerifyNone(t, leakOpts...)
}

func buildBinary(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go tool not found: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "gamecluster")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, goTool, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// runBinary runs the program with a 60s limit and returns its standard output; it
// fails t unless the program exits 0.
func runBinary(t *testing.T, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	began := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v after %v\nstdout:\n%s\nstderr:\n%s", bin, strings.Join(args, " "), err,
			time.Since(began).Round(time.Millisecond), stdout.String(), stderr.String())
	}
	if stderr.Len() > 0 {
		t.Logf("stderr:\n%s", stderr.String())
	}
	return stdout.String()
}

// logLine is one parsed line: "+2.41s  gate-1   connected to game-2 (...)".
type logLine struct {
	at   float64 // seconds since the start
	who  string
	text string
}

var lineRE = regexp.MustCompile(`^\+(\d+\.\d+)s\s+(\S+)\s+(.*)$`)

func parseLog(t *testing.T, out string) []logLine {
	t.Helper()
	var lines []logLine
	for _, s := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		m := lineRE.FindStringSubmatch(s)
		if m == nil {
			t.Errorf("line not in the log format: %q", s)
			continue
		}
		at, _ := strconv.ParseFloat(m[1], 64)
		lines = append(lines, logLine{at: at, who: m[2], text: m[3]})
	}
	return lines
}

// checkStory checks the order of events, never their exact timing.
func checkStory(t *testing.T, out string) {
	t.Helper()
	defer func() {
		if t.Failed() {
			t.Logf("output:\n%s", out)
		}
	}()
	lines := parseLog(t, out)
	// find returns the index of the first line of who, in [from, to), whose text
	// has prefix, or -1.
	find := func(from, to int, who, prefix string) int {
		for i := from; i < to && i < len(lines); i++ {
			if lines[i].who == who && strings.HasPrefix(lines[i].text, prefix) {
				return i
			}
		}
		return -1
	}
	must := func(from, to int, who, prefix, when string) int {
		t.Helper()
		i := find(from, to, who, prefix)
		if i < 0 {
			t.Errorf("%s: no line %q from %s", when, prefix, who)
		}
		return i
	}
	end := len(lines)
	kill := must(0, end, "main", "killing game-2", "the story")
	restart := must(0, end, "main", "restarting game-2", "the story")
	if kill < 0 || restart < 0 || restart < kill {
		t.Fatalf("kill at line %d, restart at line %d", kill, restart)
	}

	// The mesh before the kill: the gate dials both games, both games dial chat,
	// and chat, which only accepts, dials nobody.
	const before = "before the kill"
	must(0, kill, "gate-1", "connected to game-1 ", before)
	must(0, kill, "gate-1", "connected to game-2 ", before)
	must(0, kill, "game-1", "connected to chat-1 ", before)
	must(0, kill, "game-2", "connected to chat-1 ", before)
	must(0, kill, "game-1", `accepted gate-1, it said "hello from gate-1"`, before)
	must(0, kill, "chat-1", `accepted game-2, it said "hello from game-2"`, before)
	if i := find(0, end, "chat-1", "connected to "); i >= 0 {
		t.Errorf("chat-1 dialed someone: %q", lines[i].text)
	}
	firstUp := must(0, kill, "gate-1", "sees game-2 up at ", before)

	// After the kill: game-2 says nothing more; the gate loses the connection,
	// and drops game-2 only when its registration expires (no deregistration
	// reached Redis: that would remove it at once).
	const after = "between the kill and the restart"
	if i := find(kill+1, restart, "game-2", ""); i >= 0 {
		t.Errorf("the killed game-2 still talks: %q", lines[i].text)
	}
	must(kill, restart, "gate-1", "connection to game-2 closed", after)
	gone := must(kill, restart, "gate-1", "sees game-2 gone (removed", after)
	must(kill, restart, "chat-1", "sees game-2 gone (removed", after)
	must(kill, restart, "game-1", "sees game-2 gone (removed", after)
	if gone > 0 {
		// A lower bound only: expiry needs the TTL (2s) minus at most one
		// keepalive (0.4s) after the last heartbeat; a deregistration would take ms.
		if d := lines[gone].at - lines[kill].at; d < 1.0 {
			t.Errorf("gate-1 dropped game-2 %.2fs after the kill: too soon for an expiry", d)
		}
	}

	// After the restart: a new incarnation, and the gate and chat reconnect.
	const restarted = "after the restart"
	secondUp := must(restart, end, "gate-1", "sees game-2 up at ", restarted)
	must(restart, end, "gate-1", "connected to game-2 ", restarted)
	must(restart, end, "game-2", "connected to chat-1 ", restarted)
	must(restart, end, "chat-1", `accepted game-2, it said "hello from game-2"`, restarted)
	if firstUp >= 0 && secondUp >= 0 {
		inc := regexp.MustCompile(`incarnation (\w+)`)
		a, b := inc.FindString(lines[firstUp].text), inc.FindString(lines[secondUp].text)
		if a == "" || a == b {
			t.Errorf("the restarted game-2 should be a new incarnation: %q then %q", lines[firstUp].text, lines[secondUp].text)
		}
	}

	// A clean end.
	for _, id := range []string{"gate-1", "game-1", "game-2", "chat-1"} {
		must(restart, end, id, "stopped: deregistered", "at the end")
	}
	if len(lines) == 0 || lines[len(lines)-1].who != "main" || lines[len(lines)-1].text != "done" {
		t.Errorf("the last line is not %q", "main done")
	}
	for _, l := range lines {
		if strings.Contains(l.text, "[error]") {
			t.Errorf("the library logged an error: %s %s", l.who, l.text)
		}
	}
}
