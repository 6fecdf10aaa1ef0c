package main

import (
	"bytes"
	"context"
	"fmt"
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
	find := func(from, to int, who, prefix string) int { return findLine(lines, from, to, who, prefix) }
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
	join := must(0, end, "main", "6 players join", "the story")
	drain := must(0, end, "main", "draining game-3", "the story")
	drained := must(0, end, "main", "game-3 drained", "the story")
	goneAll := must(0, end, "main", "game-3 is gone from every peer", "the story")
	if !ascending(kill, restart, join, drain, drained, goneAll) {
		t.Fatalf("out of order or missing: kill at line %d, restart %d, players join %d, drain %d, drained %d, game-3 gone %d",
			kill, restart, join, drain, drained, goneAll)
	}

	// The mesh before the kill: the gate dials both games, both games dial chat,
	// and chat, which only accepts, dials nobody.
	const before = "before the kill"
	must(0, kill, "gate-1", "connected to game-1 ", before)
	must(0, kill, "gate-1", "connected to game-2 ", before)
	must(0, kill, "gate-1", "connected to game-3 ", before)
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
		// The bound holds only if game-2's heartbeats succeeded until the kill: on
		// a starved machine (-race under load) they may have failed before it.
		starved := -1
		for i := 0; i < kill && starved < 0; i++ {
			if lines[i].who == "game-2" && (strings.Contains(lines[i].text, "Redis does not answer") ||
				strings.Contains(lines[i].text, "registration was missing")) {
				starved = i
			}
		}
		d := lines[gone].at - lines[kill].at
		switch {
		case starved >= 0:
			t.Logf("game-2's heartbeat failed before the kill (line %d %q): not checking that its removal %.2fs after the kill was an expiry",
				starved, lines[starved].text, d)
		case d < 1.0:
			t.Errorf("gate-1 dropped game-2 %.2fs after the kill: too soon for an expiry", d)
		}
	}

	// After the restart: a new incarnation, and the gate and chat reconnect.
	const restarted = "after the restart"
	secondUp := must(restart, end, "gate-1", "sees game-2 up at ", restarted)
	must(restart, end, "gate-1", "connected to game-2 ", restarted)
	must(restart, end, "game-2", "connected to chat-1 ", restarted)
	must(restart, join, "chat-1", `accepted game-2, it said "hello from game-2"`, restarted)
	if firstUp >= 0 && secondUp >= 0 {
		inc := regexp.MustCompile(`incarnation (\w+)`)
		a, b := inc.FindString(lines[firstUp].text), inc.FindString(lines[secondUp].text)
		if a == "" || a == b {
			t.Errorf("the restarted game-2 should be a new incarnation: %q then %q", lines[firstUp].text, lines[secondUp].text)
		}
	}

	checkRouting(t, lines, join, drain, drained, goneAll)

	// A clean end.
	for _, id := range []string{"gate-1", "game-1", "game-2", "chat-1"} {
		must(goneAll, end, id, "stopped: deregistered", "at the end")
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

// placedRE matches the gate's placements: "placed player-7 on game-2".
var placedRE = regexp.MustCompile(`^placed (player-\d+) on (game-\d+)$`)

// checkRouting checks the players and the drain of game-3: lines[join] starts
// the first placements, lines[drain] the drain, lines[drained] is Drain's return
// and lines[goneAll] the end of game-3's removal.
func checkRouting(t *testing.T, lines []logLine, join, drain, drained, goneAll int) {
	t.Helper()
	// The first 6 players, before the drain: each placed by the gate, then
	// joined on the game server it chose.
	onGame3 := map[string]bool{}
	placedAt := map[string]int{}
	for i := join; i < drain; i++ {
		if m := placedRE.FindStringSubmatch(lines[i].text); lines[i].who == "gate-1" && m != nil {
			placedAt[m[1]] = i
			if j := findLine(lines, i, drain, m[2], m[1]+" joined"); j < 0 {
				t.Errorf("%s was placed on %s, which never says it joined", m[1], m[2])
			}
			if m[2] == "game-3" {
				onGame3[m[1]] = true
			}
		}
	}
	for n := 1; n <= 6; n++ {
		if _, ok := placedAt[fmt.Sprintf("player-%d", n)]; !ok {
			t.Errorf("player-%d was not placed before the drain", n)
		}
	}
	if len(onGame3) == 0 {
		t.Errorf("no player on game-3 before its drain: the drain waits for nobody")
	}

	// The drain: game-3 says so, then the gate sees it draining and keeps its
	// connection, places new players only elsewhere, and game-3's players leave
	// before Drain returns.
	said := findLine(lines, drain, drained, "game-3", "draining:")
	seen := findLine(lines, drain, drained, "gate-1", "sees game-3 draining")
	if said < 0 || seen < 0 || seen < said {
		t.Errorf("game-3 draining at line %d, gate-1 sees it at line %d", said, seen)
	}
	if findLine(lines, drain, drained, "gate-1", "keeps its connection to game-3 open") < 0 {
		t.Errorf("gate-1 does not say it keeps its connection to game-3")
	}
	for _, id := range []string{"game-1", "game-2", "chat-1"} {
		if findLine(lines, drain, goneAll, id, "sees game-3 draining") < 0 {
			t.Errorf("%s never sees game-3 draining", id)
		}
	}
	during := 0
	for i := drain; i < len(lines); i++ {
		m := placedRE.FindStringSubmatch(lines[i].text)
		if lines[i].who != "gate-1" || m == nil {
			continue
		}
		if m[2] == "game-3" {
			t.Errorf("a player placed on game-3 after it started draining: line %d %q", i, lines[i].text)
		}
		if i < drained {
			during++
		}
	}
	if during != 3 {
		t.Errorf("%d players placed during the drain, want 3", during)
	}
	for player := range onGame3 {
		done := findLine(lines, drain, drained, "gate-1", player+" finished its match on game-3")
		left := findLine(lines, drain, drained, "game-3", player+" left (")
		if done < 0 || left < done {
			t.Errorf("%s did not leave game-3 during the drain (gate-1 takes it back at line %d, game-3 lets it go at line %d)", player, done, left)
		}
	}
	if i := findLine(lines, drain, drained, "game-3", "stopped"); i >= 0 {
		t.Errorf("game-3 stopped before Drain returned: %q", lines[i].text)
	}

	// Drain's Stop deregistered game-3: every peer drops it, and only then does
	// the gate close its connection to it (kept open through the drain).
	gone := findLine(lines, drain, goneAll, "gate-1", "sees game-3 gone (removed")
	for _, id := range []string{"game-1", "game-2", "chat-1"} {
		if findLine(lines, drain, goneAll, id, "sees game-3 gone (removed") < 0 {
			t.Errorf("%s never sees game-3 removed", id)
		}
	}
	if gone < 0 {
		t.Errorf("gate-1 never sees game-3 removed")
	} else {
		if i := findLine(lines, drain, gone, "gate-1", "connection to game-3 closed"); i >= 0 {
			t.Errorf("gate-1 closed its connection to game-3 during the drain: line %d", i)
		}
		if i := findLine(lines, drain, gone, "gate-1", "lost connection to game-3"); i >= 0 {
			t.Errorf("gate-1 lost its connection to game-3 during the drain: line %d", i)
		}
		for player := range onGame3 {
			if i := findLine(lines, drain, len(lines), "game-3", player+" left ("); i > gone {
				t.Errorf("%s left game-3 after game-3 was removed", player)
			}
		}
	}
	if findLine(lines, goneAll, len(lines), "game-3", "stopped: drained and deregistered") < 0 {
		t.Errorf("game-3 does not stop after its drain")
	}
}

// findLine returns the index of the first line of who, in [from, to), whose
// text has prefix, or -1.
func findLine(lines []logLine, from, to int, who, prefix string) int {
	for i := max(from, 0); i < to && i < len(lines); i++ {
		if lines[i].who == who && strings.HasPrefix(lines[i].text, prefix) {
			return i
		}
	}
	return -1
}

// ascending reports whether every index is found (>= 0) and they increase.
func ascending(idx ...int) bool {
	for i, v := range idx {
		if v < 0 || i > 0 && v <= idx[i-1] {
			return false
		}
	}
	return true
}
