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
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	w, err := svcwatch.NewRedisServiceWatcher(c, svcwatch.Instance{Table: table, ID: id, Name: name, Desc: desc},
		svcwatch.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
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
		t.Fatalf("start %s/%s: %v", table, id, err)
	}
	return w
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
		if got := strings.Fields(lines[0]); strings.Join(got, " ") != "TABLE INSTANCES STALE REVISION" {
			t.Fatalf("header %q", lines[0])
		}
		var tables []string
		for _, l := range lines[1:] {
			f := strings.Fields(l)
			if len(f) != 4 {
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
		if got := strings.Fields(lines[0]); strings.Join(got, " ") != "ID NAME AGE EXPIRES INCARNATION DESC" {
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
			if _, err := time.ParseDuration(f[3]); err != nil || len(f[4]) != 16 {
				t.Errorf("row %q: expires %q or incarnation %q", l, f[3], f[4])
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
				r.AgeMS == nil || r.RegisteredAt == "" || r.TTLMS != svcwatch.DefaultTTL.Milliseconds() || r.Error != "" {
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

var watchLine = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (add|update|remove) \S+ name=\S+ inc=[0-9a-f]{16} desc=`)

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
		{[]string{"watch"}, 2, "at least one TABLE"},
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
