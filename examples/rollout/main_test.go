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

	"github.com/svcwatch/svcwatch"
	"github.com/svcwatch/svcwatch/internal/redistest"
	"github.com/svcwatch/svcwatch/protocol"
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
// process is left, the drained servers' included.
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
	began := time.Now()
	if err := run(ctx, mr.Addr(), &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	t.Logf("run took %v", time.Since(began).Round(time.Millisecond))
	checkStory(t, out.String())
	for _, k := range protocol.TableKeys(svcwatch.DefaultKeyPrefix, gameTable(v1)).All() {
		if mr.Exists(k) {
			t.Errorf("version 1's table still has key %s after the story said it was collected", k)
		}
	}
	mr.Close()
	goleak.VerifyNone(t, leakOpts...)
}

// The checks fail on stories that break the rollout's order: a checker that
// passes everything would prove nothing.
func TestCheckStoryCatchesBadOrders(t *testing.T) {
	if p := storyProblems(goodStory); len(p) > 0 {
		t.Fatalf("the reference story has problems: %q", p)
	}
	swap := func(s, a, b string) string { // a and b are whole lines of s
		t.Helper()
		if !strings.Contains(s, a+"\n") || !strings.Contains(s, b+"\n") {
			t.Fatalf("not lines of the reference story: %q, %q", a, b)
		}
		s = strings.Replace(s, a, "\x00", 1)
		s = strings.Replace(s, b, a, 1)
		return strings.Replace(s, "\x00", b, 1)
	}
	bad := map[string]string{
		"v2 placed before the gate saw it": swap(goodStory,
			"+0.03s  gate-1    found table demo/prod/20261126/game under the prefix: sees game-v2-1 up (serving), 0ms after its Start returned",
			"+0.05s  gate-1    placed player-7 on game-v2-1 (20261126)"),
		"v1 placement during the drain": strings.Replace(goodStory,
			"+0.07s  gate-1    placed player-11 on game-v2-1 (20261126)\n+0.07s  game-v2-1 player-11 joined (3 playing here)",
			"+0.07s  gate-1    placed player-11 on game-v1-1 (20261119)\n+0.07s  game-v1-1 player-11 joined (2 playing here)", 1),
		"v1 player left after its server stopped": swap(goodStory,
			"+1.06s  game-v1-1 player-2 finished its match and left (0 still playing)",
			"+1.06s  game-v1-1 stopped: drained, deregistered, Redis client closed"),
		"collection before v1 stopped": swap(goodStory,
			"+1.06s  game-v1-2 stopped: drained, deregistered, Redis client closed",
			"+2.14s  main      table demo/prod/20261119/game collected: no keys, no catalog entry, and gate-1 no longer watches it (1.1s after version 1 left)"),
		"done not last":   goodStory + "+2.16s  game-v2-1 late line\n",
		"a library error": strings.Replace(goodStory, "+1.06s  main      demo/prod", "+1.06s  gate-1    [error] svcwatch: boom\n+1.06s  main      demo/prod", 1),
		"a wrong version": strings.Replace(goodStory, "placed player-12 on game-v2-2 (20261126)", "placed player-12 on game-v2-2 (20261119)", 1),
	}
	for name, story := range bad {
		if story == goodStory {
			t.Fatalf("%s: the mutation did not apply", name)
		}
		if p := storyProblems(story); len(p) == 0 {
			t.Errorf("%s: no problem found in\n%s", name, story)
		} else {
			t.Logf("%s: %q", name, p)
		}
	}
}

func TestNewerVersion(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want bool
	}{
		{"20261126", "20261119", true},
		{"20261119", "20261126", false},
		{"10", "9", true}, // numerically, not lexically
		{"v2", "v10", true},
		{"v10", "v2", false},
		{"same", "same", false},
	} {
		if got := newerVersion(c.a, c.b); got != c.want {
			t.Errorf("newerVersion(%q, %q) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
	for _, c := range []struct {
		table, version, kind string
		ok                   bool
	}{
		{"demo/prod/20261126/game", "20261126", "game", true},
		{"demo/prod/20261126/gate", "20261126", "gate", true},
		{"demo/production/20261126/game", "", "", false},
		{"demo/prod/game", "", "", false},
	} {
		v, k, ok := parseTable(c.table)
		if v != c.version || k != c.kind || ok != c.ok {
			t.Errorf("parseTable(%q) = %q, %q, %v; want %q, %q, %v", c.table, v, k, ok, c.version, c.kind, c.ok)
		}
	}
}

func buildBinary(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go tool not found: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "rollout")
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
	t.Logf("the program ran for %v", time.Since(began).Round(time.Millisecond))
	if stderr.Len() > 0 {
		t.Logf("stderr:\n%s", stderr.String())
	}
	return stdout.String()
}

// checkStory fails t with every problem storyProblems finds.
func checkStory(t *testing.T, out string) {
	t.Helper()
	for _, p := range storyProblems(out) {
		t.Error(p)
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
}

// logLine is one parsed line: "+2.41s  gate-1    placed player-7 on game-v2-1 (20261126)".
type logLine struct {
	at   float64 // seconds since the start
	who  string
	text string
}

var (
	lineRE   = regexp.MustCompile(`^\+(\d+\.\d+)s\s+(\S+)\s+(.*)$`)
	placedRE = regexp.MustCompile(`^placed (player-\d+) on (game-v(\d)-\d) \((\d+)\)$`)
)

var versionOf = map[string]string{"1": v1, "2": v2}

// storyProblems checks the order of the story's events, never their timing,
// and returns what is wrong.
func storyProblems(out string) (problems []string) {
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	var lines []logLine
	for _, s := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		m := lineRE.FindStringSubmatch(s)
		if m == nil {
			bad("line not in the log format: %q", s)
			continue
		}
		at, _ := strconv.ParseFloat(m[1], 64)
		lines = append(lines, logLine{at: at, who: m[2], text: m[3]})
	}
	end := len(lines)
	find := func(from, to int, who, prefix string) int {
		for i := max(from, 0); i < to && i < end; i++ {
			if lines[i].who == who && strings.HasPrefix(lines[i].text, prefix) {
				return i
			}
		}
		return -1
	}
	must := func(from, to int, who, prefix string) int {
		i := find(from, to, who, prefix)
		if i < 0 {
			bad("no line %q from %s in lines [%d, %d)", prefix, who, from, to)
		}
		return i
	}

	// The story's steps, in order.
	v2Start := must(0, end, "main", "version 2 starts")
	drain := must(0, end, "main", "version 1 drains")
	empty := must(0, end, "main", "demo/prod/20261119/game is empty")
	collected := must(0, end, "main", "table demo/prod/20261119/game collected")
	if !ascending(v2Start, drain, empty, collected) {
		return append(problems, fmt.Sprintf("steps out of order: version 2 starts at line %d, drain %d, empty %d, collected %d",
			v2Start, drain, empty, collected))
	}

	// Version 1's table is loaded by WatchPrefix, version 2's found later by
	// the gate itself.
	must(0, v2Start, "gate-1", "found table demo/prod/20261119/game under the prefix")
	foundV2 := must(v2Start, drain, "gate-1", "found table demo/prod/20261126/game under the prefix")

	// Placements: each on a server of the version it names, which then hosts
	// the player; version 2 only once the gate saw it, version 1 never after
	// version 2 took players, nor after the drain began.
	onServer := map[string][]string{} // server -> players placed there
	firstV2, lastV1, v1Count, duringDrain := -1, -1, 0, 0
	for i, l := range lines {
		m := placedRE.FindStringSubmatch(l.text)
		if l.who != "gate-1" || m == nil {
			continue
		}
		player, server, ver, version := m[1], m[2], m[3], m[4]
		if versionOf[ver] != version {
			bad("line %d: %s is not a server of version %s: %q", i, server, version, l.text)
		}
		onServer[server] = append(onServer[server], player)
		if find(i, end, server, player+" joined") < 0 {
			bad("%s was placed on %s, which never says it joined", player, server)
		}
		if ver == "1" {
			lastV1 = i
			v1Count++
		} else if firstV2 < 0 {
			firstV2 = i
		}
		if i > drain {
			duringDrain++
		}
	}
	if v1Count == 0 || firstV2 < 0 {
		bad("players were placed on %d version 1 servers; first version 2 placement at line %d", v1Count, firstV2)
	}
	if firstV2 >= 0 && firstV2 < foundV2 {
		bad("a player was placed on version 2 (line %d) before the gate found its table (line %d)", firstV2, foundV2)
	}
	if lastV1 > firstV2 || lastV1 > drain {
		bad("a player was placed on version 1 at line %d, after version 2 took one (line %d) or the drain began (line %d)", lastV1, firstV2, drain)
	}
	if duringDrain == 0 {
		bad("nobody was placed during the drain")
	}

	// The drain: each version 1 server says it drains, the gate sees it, its
	// players leave, then Drain deregisters it, and the gate drops it.
	for _, id := range []string{"game-v1-1", "game-v1-2"} {
		said := must(drain, end, id, "draining:")
		seen := must(drain, end, "gate-1", "sees "+id+" draining")
		done := must(drain, end, id, "drained and deregistered")
		stopped := must(drain, end, id, "stopped:")
		gone := must(drain, end, "gate-1", "sees "+id+" gone")
		if !ascending(said, seen, done, stopped) || gone < seen {
			bad("%s: drains at line %d, the gate sees it draining at %d, drained at %d, stopped at %d, the gate drops it at %d",
				id, said, seen, done, stopped, gone)
		}
		for _, player := range onServer[id] {
			if left := find(drain, end, id, player+" finished its match and left"); left < 0 || left > done {
				bad("%s left %s at line %d, not before its drain ended (line %d)", player, id, left, done)
			}
		}
		if stopped > collected {
			bad("%s stopped (line %d) after its table was collected (line %d)", id, stopped, collected)
		}
	}
	for _, server := range []string{"game-v2-1", "game-v2-2"} {
		if i := find(drain, end, server, "draining:"); i >= 0 {
			bad("version 2's %s drains: %q", server, lines[i].text)
		}
	}

	// The end: after the collection the catalog lists version 2 only; "done" last.
	if i := must(collected, end, "main", "the catalog lists "); i >= 0 && lines[i].text != "the catalog lists demo/prod/20261126/game" {
		bad("after the collection: %q", lines[i].text)
	}
	if end == 0 || lines[end-1].who != "main" || lines[end-1].text != "done" {
		bad("the last line is not %q", "main done")
	}
	for _, l := range lines {
		if strings.Contains(l.text, "[error]") {
			bad("the library logged an error: %s %s", l.who, l.text)
		}
	}
	return problems
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

// goodStory is a run's output (trimmed), for TestCheckStoryCatchesBadOrders.
const goodStory = `+0.00s  main      in-process miniredis at 127.0.0.1:39995 (pass -redis host:port for a real Redis)
+0.00s  main      version 1 starts: two game servers in demo/prod/20261119/game
+0.01s  game-v1-1 registered in demo/prod/20261119/game as game-v1-1.demo.internal:7000 (Start took 6ms)
+0.01s  game-v1-2 registered in demo/prod/20261119/game as game-v1-2.demo.internal:7000 (Start took 3ms)
+0.01s  gate-1    found table demo/prod/20261119/game under the prefix: sees game-v1-1 up (serving), 5ms after its Start returned
+0.01s  gate-1    sees game-v1-2 up in demo/prod/20261119/game (serving)
+0.03s  gate-1    placed player-1 on game-v1-2 (20261119)
+0.03s  game-v1-2 player-1 joined (1 playing here)
+0.03s  gate-1    placed player-2 on game-v1-1 (20261119)
+0.03s  game-v1-1 player-2 joined (1 playing here)
+0.03s  main      version 2 starts: two game servers in demo/prod/20261126/game; nobody tells the gate
+0.03s  game-v2-1 registered in demo/prod/20261126/game as game-v2-1.demo.internal:7000 (Start took 3ms)
+0.03s  gate-1    found table demo/prod/20261126/game under the prefix: sees game-v2-1 up (serving), 0ms after its Start returned
+0.04s  gate-1    sees game-v2-2 up in demo/prod/20261126/game (serving)
+0.05s  gate-1    placed player-7 on game-v2-1 (20261126)
+0.05s  game-v2-1 player-7 joined (1 playing here)
+0.05s  main      version 1 drains: its servers take no new players and stop once theirs have left
+0.05s  game-v1-1 draining: no new players; the 1 playing here finish their matches first
+0.05s  game-v1-2 draining: no new players; the 1 playing here finish their matches first
+0.06s  gate-1    sees game-v1-1 draining (was serving); Pick gives it no new players
+0.06s  gate-1    sees game-v1-2 draining (was serving); Pick gives it no new players
+0.07s  gate-1    placed player-11 on game-v2-1 (20261126)
+0.07s  game-v2-1 player-11 joined (3 playing here)
+0.07s  gate-1    placed player-12 on game-v2-2 (20261126)
+0.07s  game-v2-2 player-12 joined (1 playing here)
+0.31s  game-v1-2 player-1 finished its match and left (0 still playing)
+1.06s  game-v1-1 player-2 finished its match and left (0 still playing)
+1.06s  gate-1    sees game-v1-1 gone (removed from demo/prod/20261119/game)
+1.06s  game-v1-1 drained and deregistered: its players left, then Drain's Stop removed it from Redis
+1.06s  gate-1    sees game-v1-2 gone (removed from demo/prod/20261119/game)
+1.06s  game-v1-2 drained and deregistered: its players left, then Drain's Stop removed it from Redis
+1.06s  game-v1-1 stopped: drained, deregistered, Redis client closed
+1.06s  game-v1-2 stopped: drained, deregistered, Redis client closed
+1.06s  main      demo/prod/20261119/game is empty; its 3 keys and its catalog entry stay until it has been empty for 1s
+2.14s  main      table demo/prod/20261119/game collected: no keys, no catalog entry, and gate-1 no longer watches it (1.1s after version 1 left)
+2.14s  main      the catalog lists demo/prod/20261126/game
+2.15s  game-v2-2 stopped: deregistered, Redis client closed
+2.15s  main      done
`
