package svcwatchprom_test

// redis_test.go: the collector over a real watcher on a real redis-server,
// scraped after known events.

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/svcwatch/svcwatch"
	"github.com/svcwatch/svcwatch/internal/redistest"
	svcwatchprom "github.com/svcwatch/svcwatch/prometheus"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const wait = 15 * time.Second // generous deadline of every poll

// fast are the options of every watcher here: a short TTL so that a lost
// registration shows within seconds.
func fast() []svcwatch.Option {
	return []svcwatch.Option{
		svcwatch.WithTTL(2 * time.Second),
		svcwatch.WithKeepAliveInterval(300 * time.Millisecond),
		svcwatch.WithScanInterval(300 * time.Millisecond),
	}
}

func start(t *testing.T, client redis.UniversalClient, self svcwatch.Instance, opts ...svcwatch.Option) *svcwatch.RedisServiceWatcher {
	t.Helper()
	w, err := svcwatch.NewRedisServiceWatcher(client, self, append(fast(), opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Stop(context.Background()) })
	return w
}

// scrape gathers reg and returns the value of the series name{labels}, and
// whether it exists.
func scrape(t *testing.T, reg *prometheus.Registry, name string, labels ...string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue metrics
				}
			}
			return value(m), true
		}
	}
	return 0, false
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	}
	return 0
}

// eventually polls until every check of the scrape holds.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not so after %v: %v", what, wait, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// is returns a check that name{labels} == want.
func is(t *testing.T, reg *prometheus.Registry, want float64, name string, labels ...string) func() error {
	return func() error {
		got, ok := scrape(t, reg, name, labels...)
		if !ok {
			return fmt.Errorf("%s%v absent", name, labels)
		}
		if got != want {
			return fmt.Errorf("%s%v = %v, want %v", name, labels, got, want)
		}
		return nil
	}
}

func all(checks ...func() error) func() error {
	return func() error {
		for _, c := range checks {
			if err := c(); err != nil {
				return err
			}
		}
		return nil
	}
}

func TestCollectorOnRedis(t *testing.T) {
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	games := svcwatch.Path("promtest", "prod", "v1", "game")
	gates := svcwatch.Path("promtest", "prod", "v1", "gate")

	game1 := start(t, srv.Client(t), svcwatch.Instance{Table: games, ID: "game-1", Name: "127.0.0.1:7001"})
	game2 := start(t, srv.Client(t), svcwatch.Instance{Table: games, ID: "game-2", Name: "127.0.0.1:7002"})
	_ = game1

	// The collector attaches to a watcher already started, which knows both
	// games: they count as adds.
	gate := start(t, srv.Client(t), svcwatch.Instance{Table: gates, ID: "gate-1", Name: "127.0.0.1:7000"},
		svcwatch.WithTables(games))
	c := svcwatchprom.NewCollector(gate)
	t.Cleanup(c.Close)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)

	eventually(t, "after Start", all(
		is(t, reg, 1, "svcwatch_registered"),
		is(t, reg, 1, "svcwatch_connected"),
		is(t, reg, 1, "svcwatch_state", "state", "serving"),
		is(t, reg, 0, "svcwatch_state", "state", "draining"),
		is(t, reg, 1, "svcwatch_self_info", "table", gates, "id", "gate-1", "name", "127.0.0.1:7000"),
		is(t, reg, 2, "svcwatch_instances", "table", games, "state", "serving"),
		is(t, reg, 1, "svcwatch_instances", "table", gates, "state", "serving"),
		is(t, reg, 2, "svcwatch_events_total", "kind", "add"),
		is(t, reg, 0, "svcwatch_events_total", "kind", "update"),
		is(t, reg, 0, "svcwatch_events_total", "kind", "remove"),
		is(t, reg, 0, "svcwatch_reregistrations_total"),
	))
	if n, _ := scrape(t, reg, "svcwatch_full_loads_total"); n < 2 {
		t.Errorf("svcwatch_full_loads_total = %v, want at least 2 (one per watched table)", n)
	}
	if age, ok := scrape(t, reg, "svcwatch_last_sync_age_seconds"); !ok || age < 0 {
		t.Errorf("svcwatch_last_sync_age_seconds = %v (present %v), want a non-negative value", age, ok)
	}
	eventually(t, "a heartbeat", func() error {
		if n, _ := scrape(t, reg, "svcwatch_heartbeats_total"); n < 1 {
			return fmt.Errorf("svcwatch_heartbeats_total = %v", n)
		}
		return nil
	})

	ctx := context.Background()
	if err := game2.SetState(ctx, svcwatch.Draining); err != nil {
		t.Fatal(err)
	}
	eventually(t, "game-2 draining", all(
		is(t, reg, 1, "svcwatch_instances", "table", games, "state", "serving"),
		is(t, reg, 1, "svcwatch_instances", "table", games, "state", "draining"),
		is(t, reg, 1, "svcwatch_events_total", "kind", "update"),
	))

	// A second collector on the same watcher, closed before game-2 stops:
	// it counts nothing after Close while the first counts the remove.
	closed := svcwatchprom.NewCollector(gate)
	reg2 := prometheus.NewPedanticRegistry()
	reg2.MustRegister(closed)
	eventually(t, "a second collector attached", all(
		is(t, reg2, 2, "svcwatch_events_total", "kind", "add"),
		is(t, reg2, 0, "svcwatch_events_total", "kind", "update"), // game-2 is known as draining: an add
	))
	closed.Close()

	if err := game2.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "game-2 stopped", all(
		is(t, reg, 1, "svcwatch_instances", "table", games, "state", "serving"),
		is(t, reg, 0, "svcwatch_instances", "table", games, "state", "draining"),
		is(t, reg, 1, "svcwatch_events_total", "kind", "remove"),
	))
	if err := is(t, reg2, 0, "svcwatch_events_total", "kind", "remove")(); err != nil {
		t.Errorf("a closed collector still counts: %v", err)
	}
	if err := is(t, reg2, 1, "svcwatch_instances", "table", games, "state", "serving")(); err != nil {
		t.Errorf("a closed collector no longer reads the watcher: %v", err)
	}

	if err := gate.SetState(ctx, svcwatch.Draining); err != nil {
		t.Fatal(err)
	}
	eventually(t, "self draining", all(
		is(t, reg, 0, "svcwatch_state", "state", "serving"),
		is(t, reg, 1, "svcwatch_state", "state", "draining"),
		is(t, reg, 1, "svcwatch_instances", "table", gates, "state", "draining"),
	))
	lintRegistry(t, reg)

	// Redis restarts empty: disconnected, then registered again.
	srv.Kill(t)
	eventually(t, "Redis down", all(
		is(t, reg, 0, "svcwatch_connected"),
		is(t, reg, 0, "svcwatch_registered"),
	))
	srv.Start(t)
	eventually(t, "Redis back", all(
		is(t, reg, 1, "svcwatch_connected"),
		is(t, reg, 1, "svcwatch_registered"),
		func() error {
			if n, _ := scrape(t, reg, "svcwatch_reregistrations_total"); n < 1 {
				return fmt.Errorf("svcwatch_reregistrations_total = %v, want at least 1", n)
			}
			return nil
		},
	))
	lintRegistry(t, reg)
}

func lintRegistry(t *testing.T, reg *prometheus.Registry) {
	t.Helper()
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}
