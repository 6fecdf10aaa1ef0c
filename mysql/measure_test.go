//go:build measure

package mysql

// measure_test.go: the figures of the README's backend table, at the default
// settings (TTL 10s, keepalive 2s, scan 4s). They take minutes, so they are
// built only with the measure tag:
//
//	go test -tags measure -run TestMeasure -v -timeout 10m .

import (
	"context"
	"fmt"
	"math/rand"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/svcwatch/svcwatch"
)

// stamps records when each observer heard of each change.
type stamps struct {
	mu   sync.Mutex
	seen map[string][]time.Time
}

func (s *stamps) note(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen[key] = append(s.seen[key], time.Now())
}

func (s *stamps) count(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen[key])
}

func percentiles(ds []time.Duration) string {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	at := func(p float64) time.Duration { return ds[int(p*float64(len(ds)-1))].Round(time.Millisecond) }
	return fmt.Sprintf("n=%d min=%v p50=%v p90=%v p99=%v max=%v", len(ds), at(0), at(0.5), at(0.9), at(0.99), at(1))
}

// Latency of a change (SetDesc) and of a crash, at 10 observers.
func TestMeasureLatency(t *testing.T) {
	d := newTestDB(t)
	table := "m/latency"
	const observers = 10
	st := &stamps{seen: make(map[string][]time.Time)}
	for i := 0; i < observers; i++ {
		startWatcher(t, openDB(t, d.cfg), svcwatch.Instance{Table: table}, svcwatch.WatchOnly(),
			svcwatch.WithLogger(quietLogger()), svcwatch.WithHandler(svcwatch.HandlerFuncs{
				Add:    func(i svcwatch.Instance) { st.note("added " + i.ID) },
				Update: func(_, c svcwatch.Instance) { st.note(c.Desc) },
				Remove: func(i svcwatch.Instance) { st.note("removed " + i.ID) },
			}))
	}
	writer := startWatcher(t, openDB(t, d.cfg), svcwatch.Instance{Table: table, ID: "writer", Name: "h:1"},
		svcwatch.WithLogger(quietLogger()))
	eventually(t, 15*time.Second, "every observer sees the writer", func() bool { return st.count("added writer") == observers })

	var changes []time.Duration
	for i := 0; i < 15; i++ {
		time.Sleep(time.Duration(500+rand.Intn(1500)) * time.Millisecond) // a random phase against the scans
		desc := fmt.Sprintf("v%d", i)
		if err := writer.SetDesc(context.Background(), desc); err != nil {
			t.Fatal(err)
		}
		at := time.Now()
		eventually(t, 15*time.Second, "every observer sees "+desc, func() bool { return st.count(desc) == observers })
		st.mu.Lock()
		for _, seen := range st.seen[desc] {
			changes = append(changes, seen.Sub(at))
		}
		st.mu.Unlock()
	}
	t.Logf("change (SetDesc) to OnUpdate at the peers, scan 4s: %s", percentiles(changes))

	var crashes []time.Duration
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := 0; i < 4; i++ {
		id := fmt.Sprintf("victim%d", i)
		v := startWatcher(t, openDB(t, d.cfg), svcwatch.Instance{Table: table, ID: id, Name: "h:" + id},
			svcwatch.WithLogger(quietLogger()))
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(rand.Intn(4000)) * time.Millisecond)
			if err := v.crash(context.Background()); err != nil {
				t.Error(err)
				return
			}
			at := time.Now()
			deadline := time.Now().Add(40 * time.Second)
			for st.count("removed "+id) < observers && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			st.mu.Lock()
			defer st.mu.Unlock()
			mu.Lock()
			defer mu.Unlock()
			for _, seen := range st.seen["removed "+id] {
				crashes = append(crashes, seen.Sub(at))
			}
		}()
	}
	wg.Wait()
	if len(crashes) != 4*observers {
		t.Fatalf("%d of %d crash removals seen", len(crashes), 4*observers)
	}
	t.Logf("crash to OnRemove at the peers, TTL 10s, keepalive 2s, scan 4s: %s", percentiles(crashes))
}

// Statements per second of idle processes at the defaults: one alone, and
// each of ten in one table.
func TestMeasureIdleCost(t *testing.T) {
	for _, n := range []int{1, 10} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			d := newTestDB(t)
			db, cnt := d.countingDB(t)
			for i := 0; i < n; i++ {
				startWatcher(t, db, svcwatch.Instance{Table: "m/idle", ID: fmt.Sprint(i), Name: "h:1"},
					svcwatch.WithLogger(quietLogger()))
			}
			stmts, txs := cnt.stmts.Load(), cnt.txs.Load()
			const span = 60 * time.Second
			time.Sleep(span) // the measurement itself
			perProc := float64(cnt.stmts.Load()-stmts) / span.Seconds() / float64(n)
			t.Logf("%d idle processes: %.2f statements/s each, %d transactions in %v (TTL 10s, keepalive 2s, scan 4s, resync 1m)",
				n, perProc, cnt.txs.Load()-txs, span)
		})
	}
}
