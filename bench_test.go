package svcwatch

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch/internal/redistest"
	"github.com/svcwatch/svcwatch/protocol"
)

// Benchmarks on a real redis-server (one per test binary, shared by the
// benchmarks), on tables filled with valid records of a 100-byte Desc:
//
//	go test -run '^$' -bench . -benchtime 20x .
//
// Without redis-server they skip (fail with SVCWATCH_REQUIRE_REDIS=1).

const benchPrefix = "bench"

var benchServer sharedSetup[*redistest.Server]

// benchClient returns a client to the shared benchmark server.
func benchClient(b *testing.B) redis.UniversalClient {
	b.Helper()
	redistest.Require(b)
	srv := benchServer.get(b, func() (*redistest.Server, error) {
		return redistest.NewServer(redistest.ServerOptions{})
	})
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true})
	b.Cleanup(func() { c.Close() })
	return c
}

var (
	benchFillMu sync.Mutex
	benchFilled = map[int]string{}
)

// benchTable returns a table of n instances, filled once per test binary.
func benchTable(b *testing.B, c redis.UniversalClient, n int) string {
	b.Helper()
	benchFillMu.Lock()
	defer benchFillMu.Unlock()
	if t, ok := benchFilled[n]; ok {
		return t
	}
	t := Path("bench", "prod", "1", "t"+strconv.Itoa(n))
	fillTable(b, c, benchPrefix, t, n, scaleDesc)
	benchFilled[n] = t
	return t
}

// benchWatcher starts a watch-only watcher of table whose own loops stay quiet
// (scan every 20 minutes), so that only the benchmarked call touches Redis.
func benchWatcher(b *testing.B, c redis.UniversalClient, table string, opts ...Option) (*RedisServiceWatcher, *tableSync) {
	b.Helper()
	opts = append([]Option{WatchOnly(), WithKeyPrefix(benchPrefix), WithTTL(time.Hour),
		WithScanInterval(20 * time.Minute), WithLogger(quietLogger())}, opts...)
	w, err := NewRedisServiceWatcher(c, Instance{Table: table}, opts...)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stopNode(b, w) })
	w.mu.Lock()
	ts := w.syncs[table]
	w.mu.Unlock()
	return w, ts
}

// One full read of a table: the load script and the replacement of the view
// (which finds nothing changed).
func BenchmarkFullRead(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			c := benchClient(b)
			table := benchTable(b, c, n)
			w, ts := benchWatcher(b, c, table)
			ctx := context.Background()
			loads := w.Stats().FullLoads
			busy := redisScriptTime(b, c)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := w.loadTable(ctx, ts); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			// How long each read kept Redis (single-threaded) busy.
			b.ReportMetric(float64(redisScriptTime(b, c)-busy)/float64(b.N), "redis-ns/op")
			if got := len(w.Services(table)); got != n {
				b.Fatalf("view holds %d instances, want %d", got, n)
			}
			if got := w.Stats().FullLoads - loads; got != uint64(b.N) {
				b.Fatalf("%d full loads counted for %d reads", got, b.N)
			}
		})
	}
}

// redisScriptTime returns the time Redis has spent running EVALSHA so far
// (INFO commandstats).
func redisScriptTime(b *testing.B, c redis.UniversalClient) time.Duration {
	b.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_evalsha:"); ok {
			for _, kv := range strings.Split(rest, ",") {
				if v, ok := strings.CutPrefix(kv, "usec="); ok {
					us, err := strconv.ParseInt(v, 10, 64)
					if err != nil {
						b.Fatal(err)
					}
					return time.Duration(us) * time.Microsecond
				}
			}
		}
	}
	return 0
}

// One change message applied to a loaded table of 10,000: decoding, the view,
// the event queue. It must not read the table.
func BenchmarkApplyOneChange(b *testing.B) {
	const n = 10000
	b.Run(strconv.Itoa(n), func(b *testing.B) {
		c := benchClient(b)
		table := benchTable(b, c, n)
		w, ts := benchWatcher(b, c, table)
		w.mu.Lock()
		epoch, rev, prev := ts.epoch, ts.rev, ts.tok
		w.mu.Unlock()
		loads := w.Stats().FullLoads

		// Desc updates of the filled instances in turn, each the next revision
		// naming the change before it; made in chunks outside the timer.
		const chunk = 4096
		payloads := make([]string, 0, chunk)
		next := rev
		makeChunk := func() {
			payloads = payloads[:0]
			for i := 0; i < chunk; i++ {
				next++
				id := fmt.Sprintf("inst-%05d", next%n)
				cur, ok := w.Lookup(table, id)
				if !ok {
					b.Fatalf("%s not in the view", id)
				}
				rec := protocol.Record{Inc: cur.Incarnation, Name: cur.Name, Desc: fmt.Sprintf(`{"v":%d}`, next),
					Reg: cur.RegisteredAt.UnixMilli(), TTL: time.Hour.Milliseconds()}.Encode()
				tok := fmt.Sprintf("bench.%d", next)
				msg := protocol.Message{Epoch: epoch, Rev: next, Prev: prev, Tok: tok, Op: protocol.OpUpdate, ID: id, Rec: rec}.Encode()
				prev = tok
				payloads = append(payloads, msg)
			}
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if i%chunk == 0 {
				b.StopTimer()
				makeChunk()
				b.StartTimer()
			}
			w.applyMessage(table, payloads[i%chunk])
		}
		b.StopTimer()
		w.mu.Lock()
		held, reload := ts.rev, ts.reloadAt
		w.mu.Unlock()
		if held != rev+int64(b.N) || !reload.IsZero() {
			b.Fatalf("view at revision %d (want %d), reload due %v: a message was not applied", held, rev+int64(b.N), reload)
		}
		if got := w.Stats().FullLoads; got != loads {
			b.Fatalf("applying changes read the table %d times", got-loads)
		}
	})
}

// One change end to end: SetDesc of a process registered in a table of 10,000
// (one script call that publishes) until a watcher's handler is told.
func BenchmarkChangeEndToEnd(b *testing.B) {
	const n = 10000
	b.Run(strconv.Itoa(n), func(b *testing.B) {
		c := benchClient(b)
		table := benchTable(b, c, n)
		got := make(chan string, 1)
		w, _ := benchWatcher(b, c, table, WithHandler(HandlerFuncs{Update: func(_, cur Instance) {
			if cur.ID == "pub" {
				got <- cur.Desc
			}
		}}))
		pub, err := NewRedisServiceWatcher(c, Instance{Table: table, ID: "pub", Name: "10.0.0.9:7000"},
			WithKeyPrefix(benchPrefix), WithTTL(time.Hour), WithScanInterval(20*time.Minute), WithLogger(quietLogger()))
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		if err := pub.Start(ctx); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { stopNode(b, pub) })
		eventually(b, "the publisher seen", func() bool { _, ok := w.Lookup(table, "pub"); return ok })
		loads := w.Stats().FullLoads
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			desc := `{"v":` + strconv.Itoa(i) + `}`
			if err := pub.SetDesc(ctx, desc); err != nil {
				b.Fatal(err)
			}
			select {
			case d := <-got:
				if d != desc {
					b.Fatalf("told %q, want %q", d, desc)
				}
			case <-time.After(waitTimeout):
				b.Fatal("the change never arrived")
			}
		}
		b.StopTimer()
		if got := w.Stats().FullLoads; got != loads {
			b.Fatalf("the watcher read the table %d times", got-loads)
		}
	})
}

// The safety-net scan of an idle table: one small script call, whatever the
// table's size, and no read of the table.
func BenchmarkIdleScan(b *testing.B) {
	for _, n := range []int{10, 10000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			c := benchClient(b)
			table := benchTable(b, c, n)
			w, ts := benchWatcher(b, c, table)
			ctx := context.Background()
			loads := w.Stats().FullLoads
			busy := redisScriptTime(b, c)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				w.scan(ctx, w.run)
			}
			b.StopTimer()
			b.ReportMetric(float64(redisScriptTime(b, c)-busy)/float64(b.N), "redis-ns/op")
			w.mu.Lock()
			reload := ts.reloadAt
			w.mu.Unlock()
			if !reload.IsZero() || w.Stats().FullLoads != loads {
				b.Fatalf("an idle scan scheduled or made a reload (due %v, %d loads)", reload, w.Stats().FullLoads-loads)
			}
			if !w.Stats().Connected {
				b.Fatal("scan calls failed")
			}
		})
	}
}

// Memory held per discovered instance: the Go heap of a watcher that loaded a
// table of 10,000 instances with a 100-byte Desc (registry and what the
// handlers were told), after GC, divided by 10,000. ns/op is the time of Start
// (subscribe, read, deliver 10,000 adds). redis-B/instance is what Redis holds
// for each (MEMORY USAGE of the record hash and the deadline set).
func BenchmarkMemoryPerInstance(b *testing.B) {
	const n = 10000
	b.Run(strconv.Itoa(n), func(b *testing.B) {
		c := benchClient(b)
		table := benchTable(b, c, n)
		ctx := context.Background()
		var held int64
		var before, after runtime.MemStats
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			w, err := NewRedisServiceWatcher(c, Instance{Table: table}, WatchOnly(), WithKeyPrefix(benchPrefix),
				WithTTL(time.Hour), WithScanInterval(20*time.Minute), WithLogger(quietLogger()))
			if err != nil {
				b.Fatal(err)
			}
			runtime.GC()
			runtime.ReadMemStats(&before)
			b.StartTimer()
			if err := w.Start(ctx); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if got := len(w.Services(table)); got != n {
				b.Fatalf("view holds %d instances, want %d", got, n)
			}
			runtime.GC()
			runtime.ReadMemStats(&after)
			held += int64(after.HeapAlloc) - int64(before.HeapAlloc)
			runtime.KeepAlive(w)
			stopNode(b, w)
			b.StartTimer()
		}
		b.StopTimer()
		b.ReportMetric(float64(held)/float64(b.N)/n, "B/instance")
		var redisBytes int64
		keys := protocol.TableKeys(benchPrefix, table)
		for _, k := range []string{keys.Inst, keys.Exp} {
			v, err := c.MemoryUsage(ctx, k, 0).Result()
			if err != nil {
				b.Fatal(err)
			}
			redisBytes += v
		}
		b.ReportMetric(float64(redisBytes)/n, "redis-B/instance")
	})
}
