//go:build unix

package main

// run_http_test.go: the sidecar's HTTP API against a real redis-server, as
// CMD and Go peers see it: the JSON shapes, blocking queries, the writes of
// self, refusals, and 1,000 waiters. Run by TestRun (run_test.go), which
// builds the binary once.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch"
	"github.com/svcwatch/svcwatch/internal/redistest"
)

// instanceFields are the fields of an instance in DESIGN.md, exactly.
var instanceFields = []string{"desc", "id", "incarnation", "meta", "name", "registered_at", "state", "table"}

func keysOf(m map[string]json.RawMessage) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// answer is the answer of a query started by queryAsync, and when it came.
type answer struct {
	runTable
	at time.Time
}

// queryAsync starts GET path on the sidecar; the answer comes on the channel
// (an empty runTable unless 200).
func (s *sidecar) queryAsync(client *http.Client, path string) <-chan answer {
	ch := make(chan answer, 1)
	go func() {
		var out runTable
		resp, err := client.Get("http://" + s.http + path)
		if err == nil {
			if resp.StatusCode == http.StatusOK {
				_ = json.NewDecoder(resp.Body).Decode(&out)
			}
			resp.Body.Close()
		}
		ch <- answer{out, time.Now()}
	}()
	return ch
}

func receive(t *testing.T, ch <-chan answer, what string) answer {
	t.Helper()
	select {
	case a := <-ch:
		return a
	case <-time.After(waitTimeout):
		t.Fatalf("no answer to %s", what)
		return answer{}
	}
}

func ids(insts []runInstance) string {
	var out []string
	for _, in := range insts {
		out = append(out, in.ID)
	}
	return strings.Join(out, ",")
}

func testRunServes(t *testing.T, bin string, srv *redistest.Server) {
	const (
		table = "game/prod/v1/battle"
		lobby = "game/prod/v1/lobby"
	)
	addr := srv.Addr()
	registerInstance(t, addr, svcwatch.Instance{Table: table, ID: "g1", Name: "127.0.0.1:9201", Meta: map[string]string{"zone": "eu"}})
	obs := newObserver(t, addr, table, lobby)
	s := startSidecar(t, bin, addr, "", false, "-table", table, "-id", "c1", "-name", "127.0.0.1:9200",
		"-desc", `{"v":1}`, "-meta", "zone=us", "-meta", "weight=2", "-watch", lobby, "-ttl", "60s")

	// Registered, and seen by a Go watcher as the flags say.
	eventually(t, "peers to see c1", func() bool { _, ok := obs.lookup(table, "c1"); return ok })
	c1, _ := obs.lookup(table, "c1")
	if c1.Name != "127.0.0.1:9200" || c1.Desc != `{"v":1}` || !maps.Equal(c1.Meta, map[string]string{"zone": "us", "weight": "2"}) ||
		c1.State != svcwatch.Serving {
		t.Errorf("peers see %+v", c1)
	}
	if s.env["SVCWATCH_TABLE"] != table || s.env["SVCWATCH_ID"] != "c1" || !strings.HasPrefix(s.http, "127.0.0.1:") {
		t.Errorf("child environment %v", s.env)
	}

	t.Run("table shape", func(t *testing.T) {
		code, hdr, b := s.call("GET", "/v1/tables/"+table, "")
		if code != http.StatusOK {
			t.Fatalf("%d %s", code, b)
		}
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(b, &raw); err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(keysOf(raw), ","); got != "index,instances" {
			t.Errorf("top-level fields %s", got)
		}
		if string(raw["index"]) != hdr || hdr == "0" {
			t.Errorf("index %s, X-Svcwatch-Index %q", raw["index"], hdr)
		}
		var insts []map[string]json.RawMessage
		if err := json.Unmarshal(raw["instances"], &insts); err != nil {
			t.Fatal(err)
		}
		for _, in := range insts {
			if got := strings.Join(keysOf(in), ","); got != strings.Join(instanceFields, ",") {
				t.Errorf("instance fields %s, want %s", got, strings.Join(instanceFields, ","))
			}
		}
		out := s.table(table)
		if ids(out.Instances) != "c1,g1" {
			t.Fatalf("instances %s, want c1,g1 (sorted by id)", ids(out.Instances))
		}
		want := runInstance{Table: table, ID: "c1", Name: "127.0.0.1:9200", Desc: `{"v":1}`,
			Meta: map[string]string{"zone": "us", "weight": "2"}, State: "serving", Incarnation: c1.Incarnation,
			RegisteredAt: c1.RegisteredAt.UTC().Format(timeFormat)}
		if got := out.Instances[0]; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("c1 is\n%+v, want\n%+v", got, want)
		}
		if _, err := time.Parse(time.RFC3339, out.Instances[1].RegisteredAt); err != nil || out.Instances[1].Meta["zone"] != "eu" {
			t.Errorf("g1 is %+v (%v)", out.Instances[1], err)
		}
		code, _, b = s.call("GET", "/v1/self", "")
		var self runInstance
		if err := json.Unmarshal(b, &self); code != http.StatusOK || err != nil || fmt.Sprint(self) != fmt.Sprint(want) {
			t.Errorf("self: %d %s", code, b)
		}
		code, _, b = s.call("GET", "/v1/tables", "")
		if code != http.StatusOK || string(b) != `{"tables":["`+table+`","`+lobby+`"]}`+"\n" {
			t.Errorf("tables: %d %s", code, b)
		}
	})

	t.Run("pick", func(t *testing.T) {
		for i := 0; i < 20; i++ {
			key := "player-" + strconv.Itoa(i)
			code, _, b := s.call("GET", "/v1/pick/"+table+"?key="+key, "")
			var got runInstance
			if err := json.Unmarshal(b, &got); code != http.StatusOK || err != nil {
				t.Fatalf("pick %s: %d %s", key, code, b)
			}
			if want, _ := obs.w.Pick(table, key); got.ID != want.ID {
				t.Errorf("pick %s: sidecar says %s, a Go watcher %s", key, got.ID, want.ID)
			}
		}
		if code, _, b := s.call("GET", "/v1/pick/"+lobby+"?key=a", ""); code != http.StatusServiceUnavailable ||
			!strings.Contains(string(b), "no serving instance") {
			t.Errorf("pick in an empty table: %d %s", code, b)
		}
	})

	t.Run("blocking query", func(t *testing.T) {
		base := s.table(lobby)
		if base.Index == 0 || len(base.Instances) != 0 {
			t.Fatalf("lobby %+v", base)
		}
		// No change: the wait runs out and the answer keeps the index.
		if out := s.table(lobby + "?index=" + strconv.FormatUint(base.Index, 10) + "&wait=50ms"); out.Index != base.Index {
			t.Errorf("after a wait with no change: index %d, want %d", out.Index, base.Index)
		}
		ch := s.queryAsync(http.DefaultClient, "/v1/tables/"+lobby+"?index="+strconv.FormatUint(base.Index, 10)+"&wait=1m")
		s.eventually("the query to wait", func() bool { return s.stats().Waiters == 1 })
		select {
		case out := <-ch:
			t.Fatalf("answered before any change: %+v", out)
		default:
		}
		registerInstance(t, addr, svcwatch.Instance{Table: lobby, ID: "x1", Name: "127.0.0.1:9300"})
		out := receive(t, ch, "the blocking query").runTable
		if out.Index <= base.Index || ids(out.Instances) != "x1" {
			t.Errorf("after x1 registered: %+v (index was %d)", out, base.Index)
		}
		// A change of self raises no event; its table's queries wake all the same.
		own := s.table(table)
		ch = s.queryAsync(http.DefaultClient, "/v1/tables/"+table+"?index="+strconv.FormatUint(own.Index, 10)+"&wait=1m")
		s.eventually("the query to wait", func() bool { return s.stats().Waiters == 1 })
		if code, _, b := s.call("PUT", "/v1/self/desc", `{"v":2}`); code != http.StatusOK {
			t.Fatalf("PUT desc: %d %s", code, b)
		}
		out = receive(t, ch, "the blocking query of self's table").runTable
		if out.Index <= own.Index || len(out.Instances) != 2 || out.Instances[0].Desc != `{"v":2}` {
			t.Errorf("after PUT desc: %+v (index was %d)", out, own.Index)
		}
	})

	t.Run("writes of self", func(t *testing.T) {
		code, _, b := s.call("PUT", "/v1/self/state", `{"state":"draining"}`)
		var self runInstance
		if err := json.Unmarshal(b, &self); code != http.StatusOK || err != nil || self.State != "draining" {
			t.Fatalf("PUT state: %d %s", code, b)
		}
		eventually(t, "peers to see c1 draining", func() bool {
			in, _ := obs.lookup(table, "c1")
			return in.State == svcwatch.Draining
		})
		if code, _, b := s.call("PUT", "/v1/self/meta", `{"zone":"ap","weight":"0"}`); code != http.StatusOK {
			t.Fatalf("PUT meta: %d %s", code, b)
		}
		if code, _, b := s.call("PUT", "/v1/self/desc", `{"v":3}`); code != http.StatusOK {
			t.Fatalf("PUT desc: %d %s", code, b)
		}
		if code, _, b := s.call("PUT", "/v1/self/state", `{"state":"serving"}`); code != http.StatusOK {
			t.Fatalf("PUT state: %d %s", code, b)
		}
		eventually(t, "peers to see the meta, desc and state", func() bool {
			in, _ := obs.lookup(table, "c1")
			return in.State == svcwatch.Serving && in.Desc == `{"v":3}` && maps.Equal(in.Meta, map[string]string{"zone": "ap", "weight": "0"})
		})
	})

	t.Run("bad input", func(t *testing.T) {
		_, _, before := s.call("GET", "/v1/self", "")
		for _, c := range []struct {
			method, path, body string
			code               int
		}{
			{"GET", "/v1/nope", "", 404},
			{"GET", "/v1/tables/game/prod/v1/unwatched", "", 404},
			{"GET", "/v1/tables/bad%7Bname%7D", "", 400},
			{"GET", "/v1/tables/" + table + "?index=abc", "", 400},
			{"GET", "/v1/tables/" + table + "?index=-1", "", 400},
			{"GET", "/v1/tables/" + table + "?wait=forever", "", 400},
			{"GET", "/v1/tables/" + table + "?wait=-1s", "", 400},
			{"GET", "/v1/tables/" + table + "?indx=3", "", 400},
			{"GET", "/v1/tables/" + table + "?index=1&index=2", "", 400},
			{"POST", "/v1/tables/" + table, "", 405},
			{"GET", "/v1/pick/" + table, "", 400},
			{"GET", "/v1/pick/" + table + "?key=", "", 400},
			{"GET", "/v1/pick/game/prod/v1/unwatched?key=a", "", 404},
			{"GET", "/v1/self/state", "", 405},
			{"PUT", "/v1/self", "", 405},
			{"PUT", "/v1/self/state", "", 400},
			{"PUT", "/v1/self/state", `{"state":"asleep"}`, 400},
			{"PUT", "/v1/self/state", `{"state":"draining","extra":1}`, 400},
			{"PUT", "/v1/self/state", `{}`, 400},
			{"PUT", "/v1/self/state", `{"state":"draining"} {}`, 400},
			{"PUT", "/v1/self/state", `"draining"`, 400},
			{"PUT", "/v1/self/state?now=1", `{"state":"draining"}`, 400},
			{"PUT", "/v1/self/meta", `["a"]`, 400},
			{"PUT", "/v1/self/meta", `null`, 400},
			{"PUT", "/v1/self/meta", `{"a":1}`, 400},
			{"PUT", "/v1/self/meta", `{"weight":"heavy"}`, 400},
			{"PUT", "/v1/self/meta", `{"":"x"}`, 400},
			{"PUT", "/v1/self/meta", `{"k":"` + strings.Repeat("x", svcwatch.DefaultMaxDescSize) + `"}`, 413},
			{"PUT", "/v1/self/desc", strings.Repeat("x", svcwatch.DefaultMaxDescSize+1), 413},
			{"PUT", "/v1/self/desc", "\xff\xfe", 400},
		} {
			code, _, b := s.call(c.method, c.path, c.body)
			var e struct{ Error string }
			if err := json.Unmarshal(b, &e); code != c.code || err != nil || e.Error == "" {
				t.Errorf("%s %s %.40q: %d %s, want %d with a JSON error", c.method, c.path, c.body, code, b, c.code)
			}
		}
		if _, _, after := s.call("GET", "/v1/self", ""); string(after) != string(before) {
			t.Errorf("refused requests changed self:\n%s\n%s", before, after)
		}
	})

	// SIGTERM: draining first (peers see it), then the child stops, then the
	// removal, then the sidecar exits with the child's status.
	obs.mu.Lock()
	mark := len(obs.events)
	obs.mu.Unlock()
	s.signal(syscall.SIGTERM)
	if code := s.wait(); code != 0 {
		t.Errorf("exit status %d, want the child's 0:\n%s", code, s.stderr)
	}
	if got := s.signals(); got != "TERM" {
		t.Errorf("the child got %q, want TERM", got)
	}
	if registered(t, srv, table, "c1") {
		t.Error("c1 still in Redis after the sidecar exited")
	}
	eventually(t, "peers to see c1 removed", func() bool { return strings.Contains(obs.log(), "remove c1") })
	obs.mu.Lock()
	after := strings.Join(obs.events[mark:], "; ")
	obs.mu.Unlock()
	if after != "update c1 draining; remove c1" {
		t.Errorf("after SIGTERM peers saw %q, want draining then the removal", after)
	}
}

// testRunPrefix serves the tables under -watch-prefix, including one that
// appears later.
func testRunPrefix(t *testing.T, bin, addr string) {
	const early, late = "pre/prod/v1/gate", "pre/prod/v2/gate"
	registerInstance(t, addr, svcwatch.Instance{Table: early, ID: "a1", Name: "127.0.0.1:9401"})
	s := startSidecar(t, bin, addr, "", false, "-table", "pre/tools/sidecar", "-id", "p1", "-name", "127.0.0.1:9400",
		"-watch-prefix", "pre/prod/")
	if out := s.table(early); ids(out.Instances) != "a1" {
		t.Errorf("%s: %+v", early, out)
	}
	// Not there yet: empty, and a query waits for it.
	base := s.table(late)
	if len(base.Instances) != 0 || base.Index == 0 {
		t.Errorf("%s before it exists: %+v", late, base)
	}
	if code, _, _ := s.call("GET", "/v1/tables/pre/production/v1/gate", ""); code != http.StatusNotFound {
		t.Errorf("a table beside the prefix: %d, want 404", code)
	}
	ch := s.queryAsync(http.DefaultClient, "/v1/tables/"+late+"?index="+strconv.FormatUint(base.Index, 10)+"&wait=1m")
	s.eventually("the query to wait", func() bool { return s.stats().Waiters == 1 })
	registerInstance(t, addr, svcwatch.Instance{Table: late, ID: "b1", Name: "127.0.0.1:9402"})
	if out := receive(t, ch, "the query of the new table"); ids(out.Instances) != "b1" {
		t.Errorf("%s after b1 registered: %+v", late, out)
	}
	s.exitChild(0)
	s.wait()
}

// testRunWaiters holds 1,000 blocking queries on one table, checks that they
// cost Redis nothing and all answer the next change, and measures the
// latency from a change to the answer.
func testRunWaiters(t *testing.T, bin string, srv *redistest.Server) {
	const (
		table = "game/prod/v1/load"
		lobby = "game/prod/v1/loadlobby"
		n     = 1000
	)
	addr := srv.Addr()
	// Long TTLs keep the background (heartbeats every 12s, scans every 4s)
	// small beside what 1,000 queries would cost if each asked Redis.
	peer := registerLongTTL(t, addr, svcwatch.Instance{Table: lobby, ID: "p1", Name: "127.0.0.1:9501"})
	s := startSidecar(t, bin, addr, "", false, "-table", table, "-id", "w1", "-name", "127.0.0.1:9500",
		"-watch", lobby, "-ttl", "60s")
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n}}
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()

	base := s.table(lobby)
	rss0 := vmRSS(s.cmd.Process.Pid)
	calls0 := redisCalls(t, srv)
	start := time.Now()
	path := "/v1/tables/" + lobby + "?index=" + strconv.FormatUint(base.Index, 10) + "&wait=1m"
	waiters := make([]<-chan answer, n)
	for i := range waiters {
		waiters[i] = s.queryAsync(client, path)
	}
	s.eventually("1,000 queries to wait", func() bool { return s.stats().Waiters == n })
	calls1 := redisCalls(t, srv)
	rss1 := vmRSS(s.cmd.Process.Pid)
	blocked := time.Since(start)
	for _, ch := range waiters {
		if len(ch) != 0 {
			t.Fatal("a query answered before any change")
		}
	}
	changed := time.Now()
	if err := peer.SetDesc(ctx, "v2"); err != nil {
		t.Fatal(err)
	}
	got, last := 0, changed
	for _, ch := range waiters {
		a := receive(t, ch, "a waiter")
		if a.Index > base.Index && len(a.Instances) == 1 && a.Instances[0].Desc == "v2" {
			got++
		}
		if a.at.After(last) {
			last = a.at
		}
	}
	allAnswered := last.Sub(changed)
	if got != n {
		t.Errorf("%d of %d waiters answered with the change", got, n)
	}
	cost := diffCalls(calls0, calls1)
	total := 0
	for _, c := range cost {
		total += c
	}
	// The window may hold a heartbeat or a scan of the sidecar or the peer
	// (counted with the commands their scripts run); a round trip per query
	// would be 1,000 calls at least.
	if total >= n/4 {
		t.Errorf("1,000 waiting queries cost Redis %d calls: %v", total, cost)
	}
	t.Logf("1,000 queries sent and waiting within %v: %d Redis calls meanwhile (%v); all answered %v after the change",
		blocked.Round(time.Millisecond), total, cost, allAnswered.Round(time.Millisecond))
	if rss0 > 0 && rss1 > 0 {
		t.Logf("1,000 waiters: sidecar RSS %d KiB -> %d KiB, %.1f KiB per waiter", rss0>>10, rss1>>10, float64(rss1-rss0)/1024/n)
	}

	// Latency from a change (a peer's SetDesc, including its round trip to
	// Redis) to the answer of a waiting query, one waiter at a time.
	const rounds = 100
	var lat []time.Duration
	for i := 0; i < rounds; i++ {
		cur := s.table(lobby)
		ch := s.queryAsync(client, "/v1/tables/"+lobby+"?index="+strconv.FormatUint(cur.Index, 10)+"&wait=1m")
		s.eventually("the query to wait", func() bool { return s.stats().Waiters == 1 })
		t0 := time.Now()
		if err := peer.SetDesc(ctx, "round "+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
		a := receive(t, ch, "a waiter")
		if a.Index <= cur.Index {
			t.Fatalf("round %d: answered index %d, was %d", i, a.Index, cur.Index)
		}
		lat = append(lat, a.at.Sub(t0))
	}
	d := distOf(lat, 0)
	t.Logf("change -> blocking query answer on loopback, %d rounds: p50 %.2f ms, p99 %.2f ms, max %.2f ms", d.Samples, d.P50ms, d.P99ms, d.MaxMs)
	s.exitChild(0)
	s.wait()
}

// registerLongTTL is registerInstance with a TTL of a minute: a heartbeat
// every 12s.
func registerLongTTL(t *testing.T, addr string, inst svcwatch.Instance) *svcwatch.RedisServiceWatcher {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	w, err := svcwatch.NewRedisServiceWatcher(c, inst, svcwatch.WithTTL(time.Minute),
		svcwatch.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
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
	return w
}

// redisCalls returns INFO commandstats' calls per command, without the
// commands of the test's own admin connections (INFO, HELLO, CLIENT).
func redisCalls(t *testing.T, srv *redistest.Server) map[string]int {
	t.Helper()
	info, _ := srv.Do(t, "INFO", "commandstats").(string)
	out := map[string]int{}
	for _, l := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(l), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		name = strings.TrimPrefix(name, "cmdstat_")
		if name == "info" || name == "hello" || strings.HasPrefix(name, "client") {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
		out[name], _ = strconv.Atoi(calls)
	}
	return out
}

func diffCalls(before, after map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

// vmRSS is the resident memory of pid in bytes, from /proc; 0 off Linux.
func vmRSS(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
