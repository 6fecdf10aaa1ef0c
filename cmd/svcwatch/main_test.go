package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch"
	"github.com/svcwatch/svcwatch/internal/redistest"
	"github.com/svcwatch/svcwatch/protocol"
)

// waitTimeout bounds every wait; nothing asserts on how fast things are.
const waitTimeout = 20 * time.Second

// syncBuffer is a bytes.Buffer that a command writes while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runCmd runs the command in-process and returns its output and exit status.
func runCmd(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(context.Background(), args, &out, &errOut)
	return out.String(), errOut.String(), code
}

// noEnvAuth keeps the developer's REDIS_USERNAME / REDIS_PASSWORD out.
func noEnvAuth(t *testing.T) {
	t.Setenv("REDIS_USERNAME", "")
	t.Setenv("REDIS_PASSWORD", "")
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// register starts a library watcher for table/id on addr; it is stopped at
// cleanup (Stop is idempotent, so a test may stop it earlier).
func register(t *testing.T, addr, table, id, name, desc string) *svcwatch.RedisServiceWatcher {
	t.Helper()
	return registerInstance(t, addr, svcwatch.Instance{Table: table, ID: id, Name: name, Desc: desc})
}

func stop(t *testing.T, w *svcwatch.RedisServiceWatcher) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := w.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

const (
	gate     = "game/prod/v1/gate"
	chat     = "game/prod/v1/chat"
	longDesc = `{"zone":1,"load":0.25,"tags":["alpha","beta","gamma","delta","epsilon"]}`
)

func TestTablesAndLs(t *testing.T) {
	noEnvAuth(t)
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	addr := srv.Addr()
	register(t, addr, gate, "g1", "127.0.0.1:7001", `{"zone":1}`)
	register(t, addr, gate, "g2", "127.0.0.1:7002", longDesc)
	register(t, addr, gate, "g3", "127.0.0.1:7003", "")
	register(t, addr, chat, "c1", "127.0.0.1:8001", `{}`)
	// Damaged data: a record that is not JSON, with a live deadline.
	bad := protocol.TableKeys("svcwatch", "game/prod/v1/bad")
	srv.Do(t, "HSET", bad.Inst, "x1", "not json")
	srv.Do(t, "ZADD", bad.Exp, time.Now().Add(time.Hour).UnixMilli(), "x1")
	// Another prefix is not listed.
	srv.Do(t, "HSET", protocol.TableKeys("other", gate).Inst, "g9", "{}")

	t.Run("tables", func(t *testing.T) {
		out, errOut, code := runCmd(t, "-addr", addr, "tables")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if got := strings.Fields(lines[0]); strings.Join(got, " ") != "TABLE INSTANCES STALE REVISION EMPTY-FOR COLLECT-IN" {
			t.Fatalf("header %q", lines[0])
		}
		var tables []string
		for _, l := range lines[1:] {
			f := strings.Fields(l)
			if len(f) != 6 {
				t.Fatalf("line %q", l)
			}
			tables = append(tables, f[0])
			if f[0] == gate && f[1] != "3" {
				t.Errorf("gate has %s instances, want 3: %q", f[1], l)
			}
		}
		if want := []string{"game/prod/v1/bad", chat, gate}; strings.Join(tables, ",") != strings.Join(want, ",") {
			t.Errorf("tables %v, want %v (sorted)\n%s", tables, want, out)
		}
	})

	t.Run("tables json", func(t *testing.T) {
		out, errOut, code := runCmd(t, "-addr", addr, "-json", "tables")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		var infos []tableInfo
		if err := json.Unmarshal([]byte(out), &infos); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if len(infos) != 3 || infos[2].Table != gate || infos[2].Instances != 3 || infos[2].Revision < 3 || infos[2].Epoch == "" {
			t.Errorf("infos %+v", infos)
		}
	})

	t.Run("ls", func(t *testing.T) {
		out, errOut, code := runCmd(t, "-addr", addr, "ls", gate)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if got := strings.Fields(lines[0]); strings.Join(got, " ") != "ID NAME STATE AGE EXPIRES INCARNATION META DESC" {
			t.Fatalf("header %q", lines[0])
		}
		descCol := strings.Index(lines[0], "DESC")
		if len(lines) != 4 {
			t.Fatalf("want 3 rows:\n%s", out)
		}
		for i, l := range lines[1:] {
			f := strings.Fields(l)
			id, name := f[0], f[1]
			if want := []string{"g1", "g2", "g3"}[i]; id != want {
				t.Errorf("row %d id %q, want %q", i, id, want)
			}
			if name != "127.0.0.1:700"+id[1:] {
				t.Errorf("row %q: name %q", l, name)
			}
			if _, err := time.ParseDuration(f[4]); err != nil || len(f[5]) != 16 || f[2] != "serving" || f[6] != "-" {
				t.Errorf("row %q: state %q, expires %q, incarnation %q or meta %q", l, f[2], f[4], f[5], f[6])
			}
			if id == "g2" {
				desc := l[descCol:]
				if !strings.HasSuffix(desc, "…") || len([]rune(desc)) != descWidth {
					t.Errorf("long desc not truncated to %d: %q", descWidth, desc)
				}
			}
		}
		out, _, _ = runCmd(t, "-addr", addr, "ls", "-wide", gate)
		if !strings.Contains(out, longDesc) {
			t.Errorf("-wide: no whole desc:\n%s", out)
		}
	})

	t.Run("ls json", func(t *testing.T) {
		out, errOut, code := runCmd(t, "-addr", addr, "-json", "ls", gate)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		var rows []lsRow
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if len(rows) != 3 {
			t.Fatalf("rows %+v", rows)
		}
		for _, r := range rows {
			if r.Table != gate || r.Name == "" || r.Incarnation == "" || r.ExpiresInMS == nil || *r.ExpiresInMS <= 0 ||
				r.AgeMS == nil || r.RegisteredAt == "" || r.TTLMS != svcwatch.DefaultTTL.Milliseconds() || r.Error != "" ||
				r.State != "serving" || r.Meta != nil {
				t.Errorf("row %+v", r)
			}
		}
		if rows[1].Desc != longDesc {
			t.Errorf("desc %q", rows[1].Desc)
		}
	})

	t.Run("ls unreadable", func(t *testing.T) {
		out, errOut, code := runCmd(t, "-addr", addr, "ls", "game/prod/v1/bad")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		if !strings.Contains(out, "x1") || !strings.Contains(out, "unreadable record") {
			t.Errorf("no unreadable row:\n%s", out)
		}
	})

	t.Run("ls missing table", func(t *testing.T) {
		_, errOut, code := runCmd(t, "-addr", addr, "ls", "no/such/table")
		if code != 1 || !strings.Contains(errOut, "table no/such/table not found") {
			t.Errorf("exit %d, stderr %q", code, errOut)
		}
	})
}

var watchLine = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (add|update|remove) \S+ name=\S+ inc=[0-9a-f]{16} state=(serving|draining|unhealthy) meta=\S+ desc=`)

func TestWatch(t *testing.T) {
	noEnvAuth(t)
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	addr := srv.Addr()
	register(t, addr, gate, "g1", "127.0.0.1:7001", `{"zone":1}`)
	register(t, addr, chat, "c1", "127.0.0.1:8001", "")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		out, errOut *syncBuffer
		code        chan int
	}
	start := func(args ...string) result {
		r := result{&syncBuffer{}, &syncBuffer{}, make(chan int, 1)}
		go func() { r.code <- run(ctx, args, r.out, r.errOut) }()
		return r
	}
	text := start("-addr", addr, "watch", gate, chat)
	js := start("-addr", addr, "-json", "watch", gate)
	waitFor := func(r result, what string) {
		t.Helper()
		eventually(t, what, func() bool { return strings.Contains(r.out.String(), what) })
	}
	waitFor(text, "add "+gate+"/g1 name=127.0.0.1:7001")
	waitFor(text, "add "+chat+"/c1 name=127.0.0.1:8001")
	waitFor(js, `"key":"`+gate+`/g1"`)
	// Started only now, so that it is a change, not an existing instance.
	eventually(t, "watch to start", func() bool { return strings.Contains(text.errOut.String(), "watching") })
	eventually(t, "watch -json to start", func() bool { return strings.Contains(js.errOut.String(), "watching") })
	g9 := register(t, addr, gate, "g9", "127.0.0.1:7009", `{"zone":9}`)
	waitFor(text, "add "+gate+"/g9 name=127.0.0.1:7009")
	if err := g9.SetDesc(context.Background(), `{"zone":10}`); err != nil {
		t.Fatal(err)
	}
	waitFor(text, "update "+gate+"/g9")
	// Before the removal: the library merges the pending changes of a key, so
	// that a watcher still behind would see the removal alone.
	waitFor(js, `"event":"update","key":"`+gate+`/g9"`)
	stop(t, g9)
	waitFor(text, "remove "+gate+"/g9")
	waitFor(js, `"event":"remove","key":"`+gate+`/g9"`)

	cancel()
	for _, r := range []result{text, js} {
		select {
		case code := <-r.code:
			if code != 0 {
				t.Errorf("exit %d: %s", code, r.errOut)
			}
		case <-time.After(waitTimeout):
			t.Fatal("watch did not end after its context")
		}
	}
	lines := strings.Split(strings.TrimSpace(text.out.String()), "\n")
	for _, l := range lines {
		if !watchLine.MatchString(l) {
			t.Errorf("line %q does not match %v", l, watchLine)
		}
	}
	if len(lines) != 5 || !strings.HasSuffix(lines[3], `desc={"zone":10}`) {
		t.Errorf("want add g1, add c1, add g9, update g9, remove g9 (adds of the tables in either order):\n%s", text.out)
	}
	var events []watchEvent
	for _, l := range strings.Split(strings.TrimSpace(js.out.String()), "\n") {
		var ev watchEvent
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("%v: %q", err, l)
		}
		events = append(events, ev)
	}
	if len(events) != 4 || events[0].ID != "g1" || events[1].Event != "add" || events[2].Event != "update" ||
		events[2].Old == nil || events[2].Old.Desc != `{"zone":9}` || events[3].Incarnation == "" {
		t.Errorf("json events %+v", events)
	}
	if _, err := time.Parse(time.RFC3339Nano, events[0].Time); err != nil {
		t.Errorf("time %q: %v", events[0].Time, err)
	}
}

func TestBench(t *testing.T) {
	noEnvAuth(t)
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	out, errOut, code := runCmd(t, "-addr", srv.Addr(), "bench", "-watchers", "5", "-rounds", "3", "-idle", "2s")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	for _, want := range []string{
		"register -> OnAdd, each", "register -> OnAdd, all 5", "Stop -> OnRemove, each",
		"publish -> receipt, each", "Library / floor", "crash -> OnRemove, all 5", "method:",
		"register -> seen, each", "round trips per idle process per second", "evalsha",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in the output:\n%s", want, out)
		}
	}
	// Every latency row has p50, p99 and max, and none missed.
	rows := regexp.MustCompile(`(?m)^  (register|Stop|publish|crash) [^\n]*?\s+(\S+)\s+(\S+)\s+(\S+)\s+(\d+)\s+(\d+)$`).FindAllStringSubmatch(out, -1)
	if len(rows) < 10 {
		t.Errorf("found %d latency rows:\n%s", len(rows), out)
	}
	for _, r := range rows {
		if r[6] != "0" {
			t.Errorf("missed receipts: %q", r[0])
		}
	}
	if !strings.Contains(errOut, "bench: propagation") {
		t.Errorf("no progress on stderr: %q", errOut)
	}
	// Nothing is left behind.
	if keys := srv.Do(t, "KEYS", "*"); len(keys.([]any)) != 0 {
		t.Errorf("keys left: %v", keys)
	}
}

func TestBenchInterrupted(t *testing.T) {
	noEnvAuth(t)
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out, errOut := &syncBuffer{}, &syncBuffer{}
	code := make(chan int, 1)
	go func() {
		code <- run(ctx, []string{"-addr", srv.Addr(), "bench", "-watchers", "3", "-rounds", "3"}, out, errOut)
	}()
	eventually(t, "the crash phase", func() bool { return strings.Contains(errOut.String(), "crash detection: crashing") })
	cancel()
	select {
	case c := <-code:
		if c != 1 || !strings.Contains(errOut.String(), "bench interrupted") {
			t.Errorf("exit %d, stderr %q", c, errOut)
		}
	case <-time.After(waitTimeout):
		t.Fatal("bench did not end after its context")
	}
	if keys := srv.Do(t, "KEYS", "*"); len(keys.([]any)) != 0 {
		t.Errorf("keys left: %v", keys)
	}
}

func TestBenchMiniredisJSON(t *testing.T) {
	out, errOut, code := runCmd(t, "-json", "bench", "-watchers", "2", "-rounds", "2", "-ttl", "500ms",
		"-poll-rounds", "1", "-poll-every", "200ms", "-idle", "1s", "-procs", "1")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	if !strings.Contains(errOut, "miniredis") {
		t.Errorf("no miniredis warning: %q", errOut)
	}
	var rep benchReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !rep.Miniredis || rep.Propagation.AddAll.Samples != 2 || rep.Crash.All.Samples != 2 || rep.Floor.Each.Samples != 4 ||
		rep.Poll.Each.Samples != 2 || rep.Idle.NA == "" {
		t.Errorf("report %+v", rep)
	}
}

func TestUnreachable(t *testing.T) {
	noEnvAuth(t)
	addr := "127.0.0.1:" + strconv.Itoa(redistest.FreePort(t)) // nothing listens there
	for _, args := range [][]string{{"tables"}, {"ls", gate}, {"watch", gate}, {"bench"}} {
		_, errOut, code := runCmd(t, append([]string{"-addr", addr}, args...)...)
		if code != 1 || !strings.Contains(errOut, "svcwatch: cannot reach Redis at "+addr) {
			t.Errorf("%v: exit %d, stderr %q", args, code, errOut)
		}
	}
}

func TestAuthentication(t *testing.T) {
	noEnvAuth(t)
	srv := redistest.StartServer(t, redistest.ServerOptions{ACL: []string{"user app on >secret ~svcwatch:* &svcwatch:* +@all"}})
	_, errOut, code := runCmd(t, "-addr", srv.Addr(), "-user", "app", "-password", "wrong", "tables")
	if code != 1 || !strings.Contains(errOut, "authentication to Redis at "+srv.Addr()+" failed as user \"app\"") {
		t.Errorf("wrong password: exit %d, stderr %q", code, errOut)
	}
	t.Setenv("REDIS_USERNAME", "app")
	t.Setenv("REDIS_PASSWORD", "secret")
	if _, errOut, code := runCmd(t, "-addr", srv.Addr(), "tables"); code != 0 {
		t.Errorf("password from the environment: exit %d, stderr %q", code, errOut)
	}
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "no command given"},
		{[]string{"bogus"}, 2, `unknown command "bogus"`},
		{[]string{"-nope", "tables"}, 2, "flag provided but not defined"},
		{[]string{"-addr", "nocolon", "tables"}, 2, "-addr"},
		{[]string{"tables", "extra"}, 2, "takes no arguments"},
		{[]string{"ls"}, 2, "exactly one TABLE"},
		{[]string{"ls", "a", "b"}, 2, "exactly one TABLE"},
		{[]string{"ls", "a{b}"}, 2, "is not a table name"},
		{[]string{"ls", "-nope", "a"}, 2, "flag provided but not defined"},
		{[]string{"watch"}, 2, "at least one TABLE or -prefix"},
		{[]string{"watch", "-prefix", "a b"}, 2, "prefix"},
		{[]string{"tables", "-retention", "1ms"}, 2, "-retention"},
		{[]string{"bench", "-watchers", "0"}, 2, "at least 1"},
		{[]string{"-h"}, 0, "Usage: svcwatch"},
		{[]string{"bench", "-h"}, 0, "-watchers"},
	} {
		_, errOut, code := runCmd(t, tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("%q: exit %d, want %d; stderr:\n%s", tc.args, code, tc.code, errOut)
		}
		if tc.code == 2 && !strings.Contains(errOut, "Usage: svcwatch") {
			t.Errorf("%q: no usage on stderr:\n%s", tc.args, errOut)
		}
	}
}

// TestBinary builds the command and checks what only a process shows: exit
// statuses and the end of watch on SIGTERM.
func TestBinary(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	noEnvAuth(t)
	bin := filepath.Join(t.TempDir(), "svcwatch")
	if out, err := exec.Command(goBin, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	exitCode := func(args ...string) (int, string) {
		cmd := exec.Command(bin, args...)
		var errOut bytes.Buffer
		cmd.Stderr = &errOut
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), errOut.String()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, errOut.String()
	}
	if code, errOut := exitCode("bogus"); code != 2 {
		t.Errorf("unknown command: exit %d, want 2: %s", code, errOut)
	}
	if code, errOut := exitCode("-addr", "127.0.0.1:"+strconv.Itoa(redistest.FreePort(t)), "tables"); code != 1 {
		t.Errorf("unreachable: exit %d, want 1: %s", code, errOut)
	}

	srv := redistest.StartServer(t, redistest.ServerOptions{})
	register(t, srv.Addr(), gate, "g1", "127.0.0.1:7001", "")
	if code, errOut := exitCode("-addr", srv.Addr(), "tables"); code != 0 {
		t.Errorf("tables: exit %d: %s", code, errOut)
	}
	cmd := exec.Command(bin, "-addr", srv.Addr(), "watch", gate)
	out, errOut := &syncBuffer{}, &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	eventually(t, "watch to start", func() bool { return strings.Contains(errOut.String(), "watching") })
	if !strings.Contains(out.String(), "add "+gate+"/g1") {
		t.Errorf("no add of g1: %q", out)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("watch after SIGTERM: %v; stderr %q", err, errOut)
		}
	case <-time.After(waitTimeout):
		_ = cmd.Process.Kill()
		t.Fatal("watch did not end on SIGTERM")
	}
}

func TestHelpers(t *testing.T) {
	for d, want := range map[time.Duration]string{
		850 * time.Millisecond: "850ms", 8449 * time.Millisecond: "8.4s", 754 * time.Second: "12m34s",
		5*time.Hour + 12*time.Minute: "5h12m", 76 * time.Hour: "3d4h",
	} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%v) = %q, want %q", d, got, want)
		}
	}
	if got := truncate("abcdef", 4); got != "abc…" {
		t.Errorf("truncate: %q", got)
	}
	if got := truncate("héllo", 5); got != "héllo" {
		t.Errorf("truncate: %q", got)
	}
	if got, ok := protocol.TableOf("p", protocol.SuffixInst, protocol.TableKeys("p", "a/b").Inst); !ok || got != "a/b" {
		t.Errorf("TableOf: %q %v", got, ok)
	}
	if _, ok := protocol.TableOf("p", protocol.SuffixInst, protocol.TableKeys("p", "a}b").Inst); ok {
		t.Error("TableOf took a key with a brace in the table")
	}
	// The prefix's glob characters escaped, any table, the record hash.
	if got, want := protocol.InstPattern(`a*b?[c]\`), protocol.Key(`a\*b\?\[c\]\\`, "*", protocol.SuffixInst); got != want {
		t.Errorf("InstPattern: %q, want %q", got, want)
	}
	ds := []time.Duration{5, 1, 4, 2, 3}
	d := distOf(ds, 1)
	if d.Samples != 5 || d.Missed != 1 || d.MaxMs != ms(5) || d.P50ms != ms(3) || d.P99ms != ms(5) {
		t.Errorf("distOf: %+v", d)
	}
}

// TestCluster checks the paths that differ on a Cluster: SCAN on every
// master, scripts routed by the table's hash tag, INFO summed over masters.
func TestCluster(t *testing.T) {
	noEnvAuth(t)
	cl := redistest.StartCluster(t, redistest.ClusterOptions{})
	addrs := strings.Join(cl.Addrs(), ",")
	cc := cl.Client(t, func(o *redis.ClusterOptions) { o.ContextTimeoutEnabled = true })
	masters := map[string]bool{}
	var tables []string
	for i := 0; i < 6; i++ {
		table := "game/prod/v1/kind" + strconv.Itoa(i)
		tables = append(tables, table)
		w, err := svcwatch.NewRedisServiceWatcher(cc, svcwatch.Instance{Table: table, ID: "a", Name: "127.0.0.1:7000"},
			svcwatch.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		err = w.Start(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { stop(t, w) })
		masters[cl.MasterForKey(t, protocol.TableKeys("svcwatch", table).Inst).Addr()] = true
	}
	if len(masters) < 2 {
		t.Logf("the tables landed on %d master(s) only", len(masters))
	}

	out, errOut, code := runCmd(t, "-addr", addrs, "-json", "tables")
	if code != 0 {
		t.Fatalf("tables: exit %d: %s", code, errOut)
	}
	var infos []tableInfo
	if err := json.Unmarshal([]byte(out), &infos); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, in := range infos {
		got = append(got, in.Table)
		if in.Instances != 1 {
			t.Errorf("%+v", in)
		}
	}
	if strings.Join(got, ",") != strings.Join(tables, ",") {
		t.Errorf("tables %v, want %v", got, tables)
	}
	if out, errOut, code := runCmd(t, "-addr", addrs, "ls", tables[3]); code != 0 || !strings.Contains(out, "127.0.0.1:7000") {
		t.Errorf("ls: exit %d: %s%s", code, out, errOut)
	}
	out, errOut, code = runCmd(t, "-addr", addrs, "-json", "bench", "-watchers", "2", "-rounds", "1", "-ttl", "500ms",
		"-poll-rounds", "0", "-idle", "2s", "-procs", "4")
	if code != 0 {
		t.Fatalf("bench: exit %d\n%s\n%s", code, out, errOut)
	}
	var rep benchReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Idle.NA != "" || rep.Idle.RoundTripsPerProcPerSec == 0 || rep.Propagation.AddAll.Samples != 1 || rep.Crash.All.Samples != 1 {
		t.Errorf("report %+v", rep)
	}
	// The bench's tables are gone again.
	if out, _, _ := runCmd(t, "-addr", addrs, "tables"); strings.Contains(out, "svcwatch-bench") {
		t.Errorf("bench left keys:\n%s", out)
	}
}

func TestSentinel(t *testing.T) {
	noEnvAuth(t)
	s := redistest.StartSentinel(t, "mymaster")
	w, err := svcwatch.NewRedisServiceWatcher(s.Client(t, func(o *redis.FailoverOptions) { o.ContextTimeoutEnabled = true }),
		svcwatch.Instance{Table: gate, ID: "g1", Name: "127.0.0.1:7001"}, svcwatch.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stop(t, w) })
	out, errOut, code := runCmd(t, "-sentinel-master", "mymaster", "-addr", s.SentinelAddr(), "ls", gate)
	if code != 0 || !strings.Contains(out, "127.0.0.1:7001") {
		t.Errorf("ls through the sentinel: exit %d\n%s%s", code, out, errOut)
	}
	_, errOut, code = runCmd(t, "-sentinel-master", "nosuchmaster", "-addr", s.SentinelAddr(), "tables")
	if code != 1 || !strings.Contains(errOut, "cannot reach Redis") {
		t.Errorf("unknown master: exit %d, stderr %q", code, errOut)
	}
}

// registerInstance is register for an instance with Meta or State set.
func registerInstance(t *testing.T, addr string, inst svcwatch.Instance) *svcwatch.RedisServiceWatcher {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	w, err := svcwatch.NewRedisServiceWatcher(c, inst, svcwatch.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		_ = w.Stop(ctx)
		_ = c.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		t.Fatalf("start %s: %v", inst.Key(), err)
	}
	return w
}

func TestLsStateAndMeta(t *testing.T) {
	noEnvAuth(t)
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	addr := srv.Addr()
	register(t, addr, gate, "g1", "127.0.0.1:7001", "")
	registerInstance(t, addr, svcwatch.Instance{Table: gate, ID: "g2", Name: "127.0.0.1:7002",
		State: svcwatch.Draining, Meta: map[string]string{"zone": "eu", "weight": "2"}})
	registerInstance(t, addr, svcwatch.Instance{Table: gate, ID: "g3", Name: "127.0.0.1:7003",
		Meta: map[string]string{"tags": strings.Repeat("x", 60)}})

	out, errOut, code := runCmd(t, "-addr", addr, "ls", gate)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 {
		t.Fatalf("want a header and 3 rows:\n%s", out)
	}
	metaCol, descCol := strings.Index(lines[0], "META"), strings.Index(lines[0], "DESC")
	for i, want := range []struct{ state, meta string }{
		{"serving", "-"}, {"draining", "weight=2,zone=eu"}, {"serving", "tags=" + strings.Repeat("x", descWidth-len("tags=")-1) + "…"},
	} {
		l := lines[i+1]
		if f := strings.Fields(l); f[2] != want.state {
			t.Errorf("row %q: state %q, want %q", l, f[2], want.state)
		}
		if got := strings.TrimSpace(string([]rune(l)[metaCol:descCol])); got != want.meta {
			t.Errorf("row %q: meta %q, want %q", l, got, want.meta)
		}
	}
	out, _, _ = runCmd(t, "-addr", addr, "ls", "-wide", gate)
	if !strings.Contains(out, "tags="+strings.Repeat("x", 60)+" ") {
		t.Errorf("-wide: no whole meta:\n%s", out)
	}

	out, errOut, code = runCmd(t, "-addr", addr, "-json", "ls", gate)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var rows []lsRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(rows) != 3 || rows[0].State != "serving" || rows[0].Meta != nil || rows[1].State != "draining" ||
		rows[1].Meta["zone"] != "eu" || rows[1].Meta["weight"] != "2" || len(rows[1].Meta) != 2 {
		t.Errorf("rows %+v", rows)
	}
	if !strings.Contains(out, `"state": "draining"`) {
		t.Errorf("no state in the JSON:\n%s", out)
	}
}

func TestFormatMeta(t *testing.T) {
	for _, tc := range []struct {
		meta map[string]string
		want string
	}{
		{nil, ""},
		{map[string]string{"zone": "eu", "weight": "2"}, "weight=2,zone=eu"},
		{map[string]string{"a": "x,y", "b": "k=v", "c": "two words", "d": ""}, `a="x,y",b="k=v",c="two words",d=`},
	} {
		if got := formatMeta(tc.meta); got != tc.want {
			t.Errorf("formatMeta(%v) = %q, want %q", tc.meta, got, tc.want)
		}
	}
}

func TestWatchStateAndMeta(t *testing.T) {
	noEnvAuth(t)
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	addr := srv.Addr()
	g1 := registerInstance(t, addr, svcwatch.Instance{Table: gate, ID: "g1", Name: "127.0.0.1:7001",
		Meta: map[string]string{"zone": "eu", "weight": "2"}})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out, errOut, jsOut, jsErr := &syncBuffer{}, &syncBuffer{}, &syncBuffer{}, &syncBuffer{}
	code := make(chan int, 2)
	go func() { code <- run(ctx, []string{"-addr", addr, "watch", gate}, out, errOut) }()
	go func() { code <- run(ctx, []string{"-addr", addr, "-json", "watch", gate}, jsOut, jsErr) }()
	eventually(t, "watch to start", func() bool { return strings.Contains(errOut.String(), "watching") })
	eventually(t, "watch -json to start", func() bool { return strings.Contains(jsErr.String(), "watching") })

	if err := g1.SetState(context.Background(), svcwatch.Draining); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the state change", func() bool { return strings.Contains(out.String(), "state serving->draining") })
	// Both watchers must have delivered it before the next change: the library
	// merges the pending changes of a key.
	eventually(t, "the json state change", func() bool { return strings.Contains(jsOut.String(), `"state":"draining"`) })
	if err := g1.SetMeta(context.Background(), map[string]string{"zone": "us"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the meta change", func() bool { return strings.Contains(out.String(), "old-meta=") })
	eventually(t, "the json events", func() bool { return strings.Count(jsOut.String(), "\n") >= 3 })
	cancel()
	for i := 0; i < 2; i++ {
		select {
		case c := <-code:
			if c != 0 {
				t.Errorf("exit %d: %s%s", c, errOut, jsErr)
			}
		case <-time.After(waitTimeout):
			t.Fatal("watch did not end after its context")
		}
	}

	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("want add, update (state), update (meta):\n%s", out)
	}
	for _, l := range lines {
		if !watchLine.MatchString(l) {
			t.Errorf("line %q does not match %v", l, watchLine)
		}
	}
	for i, want := range []string{
		" add " + gate + "/g1 name=127.0.0.1:7001 inc=",
		" state=serving meta=weight=2,zone=eu desc=\"\"",
		" update " + gate + "/g1 ",
		" state=draining meta=weight=2,zone=eu desc=\"\" state serving->draining",
		" update " + gate + "/g1 ",
		" state=draining meta=zone=us desc=\"\" old-meta=weight=2,zone=eu",
	} {
		if l := lines[i/2]; !strings.Contains(l, want) {
			t.Errorf("line %q: no %q", l, want)
		}
	}
	if strings.Contains(lines[2], "->") {
		t.Errorf("a meta change reported as a state change: %q", lines[2])
	}

	var events []watchEvent
	for _, l := range strings.Split(strings.TrimSpace(jsOut.String()), "\n") {
		var ev watchEvent
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("%v: %q", err, l)
		}
		events = append(events, ev)
	}
	if len(events) != 3 || events[0].State != "serving" || events[0].Meta["weight"] != "2" ||
		events[1].Event != "update" || events[1].State != "draining" || events[1].Old == nil || events[1].Old.State != "serving" ||
		events[2].Meta["zone"] != "us" || len(events[2].Meta) != 1 || events[2].Old == nil || events[2].Old.Meta["zone"] != "eu" {
		t.Errorf("json events %+v", events)
	}
}

// pickLines parses the text output of pick: key -> the IDs of its lines, in
// order ("-" for none).
func pickLines(t *testing.T, out string) map[string][]string {
	t.Helper()
	got := map[string][]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		// The key may be quoted, with spaces: the fields are counted from the end.
		f := strings.Fields(l)
		var key, id string
		switch n := len(f); {
		case n >= 2 && f[n-1] == "-":
			key, id = strings.TrimSuffix(l, " -"), "-"
		case n >= 3 && f[n-1] == "127.0.0.1:70"+strings.TrimPrefix(f[n-2], "g"):
			key, id = strings.TrimSuffix(l, " "+f[n-2]+" "+f[n-1]), f[n-2]
		default:
			t.Fatalf("line %q is neither KEY ID NAME nor KEY -:\n%s", l, out)
		}
		if strings.HasPrefix(key, `"`) {
			var err error
			if key, err = strconv.Unquote(key); err != nil {
				t.Fatalf("line %q: key: %v", l, err)
			}
		}
		got[key] = append(got[key], id)
	}
	return got
}

func TestPick(t *testing.T) {
	noEnvAuth(t)
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	addr := srv.Addr()
	for i, weight := range []string{"1", "3", "2", "1", "5"} {
		id := "g" + strconv.Itoa(10+i)
		inst := svcwatch.Instance{Table: gate, ID: id, Name: "127.0.0.1:70" + id[1:], Meta: map[string]string{"weight": weight}}
		if i == 3 {
			inst.State = svcwatch.Draining // never an owner
		}
		registerInstance(t, addr, inst)
	}
	// The library's answer, from a watcher of its own.
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = c.Close() })
	lib, err := svcwatch.NewRedisServiceWatcher(c, svcwatch.Instance{Table: gate}, svcwatch.WatchOnly(),
		svcwatch.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := lib.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stop(t, lib) })

	var keys []string
	for i := 0; i < 20; i++ {
		keys = append(keys, "player:"+strconv.Itoa(i*7919))
	}
	keys = append(keys, "two words") // quoted in the text output

	t.Run("owner", func(t *testing.T) {
		out, errOut, code := runCmd(t, append([]string{"-addr", addr, "pick", gate}, keys...)...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		got := pickLines(t, out)
		owners := map[string]bool{}
		for _, k := range keys {
			want, ok := lib.Pick(gate, k)
			if !ok {
				t.Fatalf("the library picks nobody for %q", k)
			}
			owners[want.ID] = true
			if g := got[k]; len(g) != 1 || g[0] != want.ID {
				t.Errorf("key %q: pick says %v, the library %s", k, g, want.ID)
			}
		}
		if owners["g13"] || len(owners) < 2 {
			t.Errorf("owners %v: want several, never the draining g13", owners)
		}
	})

	t.Run("n", func(t *testing.T) {
		out, errOut, code := runCmd(t, append([]string{"-addr", addr, "pick", "-n", "3", gate}, keys...)...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		got := pickLines(t, out)
		for _, k := range keys {
			var want []string
			for _, in := range lib.PickN(gate, k, 3) {
				want = append(want, in.ID)
			}
			if g := got[k]; len(want) != 3 || strings.Join(g, " ") != strings.Join(want, " ") {
				t.Errorf("key %q: pick -n 3 says %v, the library %v", k, g, want)
			}
		}
		// More than there are serving instances: all four, the owner first.
		out, _, _ = runCmd(t, "-addr", addr, "pick", "-n", "9", gate, keys[0])
		if g := pickLines(t, out)[keys[0]]; len(g) != 4 {
			t.Errorf("-n 9: %v, want the 4 serving instances", g)
		}
	})

	t.Run("json", func(t *testing.T) {
		out, errOut, code := runCmd(t, append([]string{"-addr", addr, "-json", "pick", "-n", "2", gate}, keys...)...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		var rows []pickRow
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if len(rows) != len(keys) {
			t.Fatalf("%d rows for %d keys", len(rows), len(keys))
		}
		for i, r := range rows {
			want, _ := lib.Pick(gate, keys[i])
			if r.Key != keys[i] || r.Table != gate || r.Owner == nil || r.Owner.ID != want.ID || r.Owner.Name != want.Name ||
				r.Owner.Weight != want.Weight() || len(r.Candidates) != 2 || r.Candidates[0].ID != want.ID {
				t.Errorf("row %+v, want owner %s", r, want.ID)
			}
		}
	})

	t.Run("none serving", func(t *testing.T) {
		drained := "game/prod/v1/drained"
		for _, id := range []string{"d1", "d2"} {
			registerInstance(t, addr, svcwatch.Instance{Table: drained, ID: id, Name: "127.0.0.1:7100", State: svcwatch.Draining})
		}
		out, errOut, code := runCmd(t, "-addr", addr, "pick", drained, "a", "b")
		if code != 1 || out != "a -\nb -\n" || !strings.Contains(errOut, "no serving instance in table "+drained+" (2 instances: 2 draining)") {
			t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
		}
		out, _, code = runCmd(t, "-addr", addr, "-json", "pick", drained, "a")
		var rows []pickRow
		if err := json.Unmarshal([]byte(out), &rows); err != nil || code != 1 || len(rows) != 1 || rows[0].Owner != nil ||
			!strings.Contains(out, `"owner": null`) {
			t.Errorf("json: exit %d, %v\n%s", code, err, out)
		}
		_, errOut, code = runCmd(t, "-addr", addr, "pick", "no/such/table", "a")
		if code != 1 || !strings.Contains(errOut, "table no/such/table has no instance") {
			t.Errorf("missing table: exit %d, stderr %q", code, errOut)
		}
	})
}

func TestPickUsage(t *testing.T) {
	noEnvAuth(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"pick"}, "needs a TABLE and at least one KEY"},
		{[]string{"pick", gate}, "needs a TABLE and at least one KEY"},
		{[]string{"pick", "-n", "0", gate, "k"}, "-n must be at least 1"},
		{[]string{"pick", "a{b}", "k"}, "is not a table name"},
	} {
		_, errOut, code := runCmd(t, tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) || !strings.Contains(errOut, "Usage: svcwatch [global flags] pick TABLE KEY...") {
			t.Errorf("%q: exit %d, want 2; stderr:\n%s", tc.args, code, errOut)
		}
	}
	if _, errOut, _ := runCmd(t, "-h"); !strings.Contains(errOut, "pick TABLE KEY...") {
		t.Errorf("no pick in the main usage:\n%s", errOut)
	}
	addr := "127.0.0.1:" + strconv.Itoa(redistest.FreePort(t))
	if _, errOut, code := runCmd(t, "-addr", addr, "pick", gate, "k"); code != 1 || !strings.Contains(errOut, "cannot reach Redis at "+addr) {
		t.Errorf("unreachable: exit %d, stderr %q", code, errOut)
	}
}

// TestTablesCatalog checks that tables reads the catalog, shows how long an
// empty table has been empty and when it will be collected, and finds the
// tables written before the catalog existed once, with one SCAN.
func TestTablesCatalog(t *testing.T) {
	noEnvAuth(t)
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	addr := srv.Addr()
	const live, emptied, legacy, later = "cat/prod/v2/game", "cat/prod/v1/game", "cat/prod/v0/game", "cat/prod/v00/game"
	register(t, addr, live, "l1", "127.0.0.1:7001", "")
	stop(t, register(t, addr, emptied, "e1", "127.0.0.1:7002", ""))
	// A table written by a library that had no catalog.
	srv.Do(t, "HSET", protocol.TableKeys("svcwatch", legacy).Inst, "x1", "{}")
	out, errOut, code := runCmd(t, "-addr", addr, "tables", "-retention", "1h")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(errOut, "added 1 table(s) found by SCAN") {
		t.Errorf("the first run did not seed the catalog: %q", errOut)
	}
	rows := map[string][]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		f := strings.Fields(l)
		rows[f[0]] = f
	}
	if f := rows[live]; len(f) != 6 || f[1] != "1" || f[4] != "-" || f[5] != "-" {
		t.Errorf("live table row %q", f)
	}
	if f := rows[emptied]; len(f) != 6 || f[1] != "0" || f[4] == "-" || !strings.HasPrefix(f[5], "59m") && f[5] != "1h0m0s" {
		t.Errorf("emptied table row %q: want how long empty and about 1h to collection\n%s", f, out)
	}
	if _, ok := rows[legacy]; !ok {
		t.Errorf("the legacy table is not listed:\n%s", out)
	}
	// Once seeded, nothing is SCANned again: a table written outside the
	// protocol later is not listed, unless -rescan.
	srv.Do(t, "HSET", protocol.TableKeys("svcwatch", later).Inst, "y1", "{}")
	out, errOut, _ = runCmd(t, "-addr", addr, "tables")
	if strings.Contains(out, later) || strings.Contains(errOut, "SCAN") {
		t.Errorf("a seeded catalog was scanned again:\n%s%s", out, errOut)
	}
	out, _, _ = runCmd(t, "-addr", addr, "tables", "-rescan")
	if !strings.Contains(out, later) {
		t.Errorf("-rescan did not add %s:\n%s", later, out)
	}
	// JSON has the same facts.
	out, _, _ = runCmd(t, "-addr", addr, "-json", "tables")
	var infos []tableInfo
	if err := json.Unmarshal([]byte(out), &infos); err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, in := range infos {
		if in.Table == emptied {
			seen++
			if in.EmptySince == "" || in.CollectIn == nil || *in.CollectIn > svcwatch.DefaultRetention.Seconds() {
				t.Errorf("emptied table %+v", in)
			}
		}
		if in.Table == live {
			seen++
			if in.EmptyFor != nil {
				t.Errorf("live table %+v", in)
			}
		}
	}
	if seen != 2 {
		t.Errorf("the JSON lists %d of the live and the emptied table:\n%s", seen, out)
	}
}

// TestWatchPrefixCommand checks that watch -prefix reports the tables under
// the prefix, and a table created while it runs.
func TestWatchPrefixCommand(t *testing.T) {
	noEnvAuth(t)
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	addr := srv.Addr()
	register(t, addr, "pw/prod/v1/game", "g1", "127.0.0.1:7001", "")
	register(t, addr, "pw/production/v1/game", "x1", "127.0.0.1:7009", "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out, errOut, done := &syncBuffer{}, &syncBuffer{}, make(chan int, 1)
	go func() { done <- run(ctx, []string{"-addr", addr, "watch", "-prefix", "pw/prod"}, out, errOut) }()
	eventually(t, "the existing table", func() bool { return strings.Contains(out.String(), "add pw/prod/v1/game/g1 ") })
	eventually(t, "watch to start", func() bool { return strings.Contains(errOut.String(), "watching") })
	register(t, addr, "pw/prod/v2/game", "g2", "127.0.0.1:7002", "")
	eventually(t, "the new table", func() bool { return strings.Contains(out.String(), "add pw/prod/v2/game/g2 ") })
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d: %s", code, errOut)
		}
	case <-time.After(waitTimeout):
		t.Fatal("watch did not end after its context")
	}
	if strings.Contains(out.String(), "pw/production") {
		t.Errorf("a table outside the prefix was reported:\n%s", out)
	}
}
