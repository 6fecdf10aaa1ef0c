package svcwatch

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// Routing latencies on the shared real redis-server (figures in the README):
//
//	go test -run '^$' -bench 'StateToPeer|HealthToPeer' -benchtime 20x .

// BenchmarkStateToPeer: from SetState until a peer's handler sees the new state.
func BenchmarkStateToPeer(b *testing.B) {
	c := benchClient(b)
	table := "bench/routing/state"
	got := make(chan State, 1)
	peer, err := NewRedisServiceWatcher(c, Instance{Table: table}, WatchOnly(), WithKeyPrefix(benchPrefix),
		WithLogger(quietLogger()), WithHandler(HandlerFuncs{Update: func(_, cur Instance) { got <- cur.State }}))
	if err != nil {
		b.Fatal(err)
	}
	pub, err := NewRedisServiceWatcher(c, Instance{Table: table, ID: "pub", Name: "10.0.0.9:7000"},
		WithKeyPrefix(benchPrefix), WithLogger(quietLogger()))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for _, w := range []*RedisServiceWatcher{pub, peer} {
		if err := w.Start(ctx); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { stopNode(b, w) })
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s := Draining
		if i%2 == 1 {
			s = Serving
		}
		if err := pub.SetState(ctx, s); err != nil {
			b.Fatal(err)
		}
		select {
		case g := <-got:
			if g != s {
				b.Fatalf("told %v, want %v", g, s)
			}
		case <-time.After(waitTimeout):
			b.Fatal("the change never arrived")
		}
	}
}

// BenchmarkHealthToPeer: from the moment a health check starts failing until a
// peer sees the process Unhealthy, at a keepalive of 200 ms; reported as
// keepalive intervals per op too.
func BenchmarkHealthToPeer(b *testing.B) {
	c := benchClient(b)
	table := "bench/routing/health"
	const keepAlive = 200 * time.Millisecond
	got := make(chan State, 4)
	peer, err := NewRedisServiceWatcher(c, Instance{Table: table}, WatchOnly(), WithKeyPrefix(benchPrefix),
		WithLogger(quietLogger()), WithHandler(HandlerFuncs{Update: func(_, cur Instance) { got <- cur.State }}))
	if err != nil {
		b.Fatal(err)
	}
	var failing atomic.Bool
	pub, err := NewRedisServiceWatcher(c, Instance{Table: table, ID: "pub", Name: "10.0.0.9:7000"},
		WithKeyPrefix(benchPrefix), WithLogger(quietLogger()), WithTTL(5*keepAlive), WithKeepAliveInterval(keepAlive),
		WithHealthCheck(func(context.Context) error {
			if failing.Load() {
				return errors.New("failing")
			}
			return nil
		}))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for _, w := range []*RedisServiceWatcher{pub, peer} {
		if err := w.Start(ctx); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { stopNode(b, w) })
	}
	wait := func(want State) {
		for {
			select {
			case g := <-got:
				if g == want {
					return
				}
			case <-time.After(waitTimeout):
				b.Fatalf("the peer never saw %v", want)
			}
		}
	}
	var total time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		began := time.Now()
		failing.Store(true)
		wait(Unhealthy)
		total += time.Since(began)
		b.StopTimer()
		failing.Store(false)
		wait(Serving)
		b.StartTimer()
	}
	b.ReportMetric(float64(total)/float64(b.N)/float64(keepAlive), "keepalives/op")
}

// BenchmarkWatcherPick: Pick through a watcher's view (read lock, the routing
// table lookup, the owner's copy), instances without Meta, the table built.
func BenchmarkWatcherPick(b *testing.B) {
	for _, n := range []int{10, 100, 1000, 10000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			w, hooks, err := NewServiceWatcher(Instance{Table: "t"}, WatchOnly(), WithLogger(quietLogger()))
			if err != nil {
				b.Fatal(err)
			}
			insts := make([]Instance, n)
			for i := range insts {
				insts[i] = Instance{Table: "t", ID: fmt.Sprintf("game-%05d", i), Name: "10.0.0.1:7000", Incarnation: "x"}
			}
			hooks.ReplaceTable("t", insts, time.Time{})
			w.Pick("t", "warm") // builds the routing table
			keys := make([]string, 1024)
			for i := range keys {
				keys[i] = fmt.Sprintf("player-%d", i)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, ok := w.Pick("t", keys[i&1023]); !ok {
					b.Fatal("no owner")
				}
			}
		})
	}
}
