package svcwatchprom

// collector_test.go: the exported text for a watcher whose every value is known
// (a stub), and promlint on it.

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/svcwatch/svcwatch"
)

// stubWatcher returns fixed values and keeps the handler added to it; the
// methods a Collector does not call are left to the nil embedded interface.
type stubWatcher struct {
	svcwatch.Watcher
	self    svcwatch.Instance
	stats   svcwatch.Stats
	tables  map[string][]svcwatch.Instance
	h       svcwatch.Handler
	removed int
}

func (s *stubWatcher) AddHandler(h svcwatch.Handler) func() {
	s.h = h
	return func() { s.removed++ }
}

func (s *stubWatcher) Self() svcwatch.Instance { return s.self }
func (s *stubWatcher) Stats() svcwatch.Stats   { return s.stats }
func (s *stubWatcher) Tables() []string {
	var out []string
	for t := range s.tables {
		out = append(out, t)
	}
	return out
}
func (s *stubWatcher) Services(t string) []svcwatch.Instance { return s.tables[t] }

var _ prometheus.Collector = (*Collector)(nil)

func TestCollectorValues(t *testing.T) {
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	games := "mygame/prod/v1/game"
	w := &stubWatcher{
		self: svcwatch.Instance{Table: "mygame/prod/v1/gate", ID: "gate-1", Name: "10.0.0.1:7000"},
		stats: svcwatch.Stats{
			Connected: true, Registered: true, Heartbeats: 42, Reregistrations: 2, FullLoads: 7,
			LastSync: t0, State: svcwatch.Draining,
		},
		tables: map[string][]svcwatch.Instance{
			"mygame/prod/v1/gate": {{ID: "gate-1", State: svcwatch.Draining}},
			games: {
				{ID: "g1"}, {ID: "g2"}, {ID: "g3", State: svcwatch.Draining}, {ID: "g4", State: svcwatch.Unhealthy},
			},
		},
	}
	c := NewCollector(w)
	c.now = func() time.Time { return t0.Add(2500 * time.Millisecond) }
	if w.h == nil {
		t.Fatal("NewCollector added no handler to the watcher")
	}
	// The watcher's events, as its event goroutine delivers them.
	w.h.OnAdd(svcwatch.Instance{})
	w.h.OnAdd(svcwatch.Instance{})
	w.h.OnUpdate(svcwatch.Instance{}, svcwatch.Instance{})
	w.h.OnRemove(svcwatch.Instance{})

	want := `
# HELP svcwatch_connected 1 while the watcher's last round trip to Redis succeeded, else 0.
# TYPE svcwatch_connected gauge
svcwatch_connected 1
# HELP svcwatch_events_total Discovery events since this collector attached to the watcher, by kind (add, update, remove); the peers known then count as adds.
# TYPE svcwatch_events_total counter
svcwatch_events_total{kind="add"} 2
svcwatch_events_total{kind="remove"} 1
svcwatch_events_total{kind="update"} 1
# HELP svcwatch_full_loads_total Full reads of a watched table from Redis.
# TYPE svcwatch_full_loads_total counter
svcwatch_full_loads_total 7
# HELP svcwatch_heartbeats_total Keepalives of this process's registration that succeeded.
# TYPE svcwatch_heartbeats_total counter
svcwatch_heartbeats_total 42
# HELP svcwatch_instances Live instances of each watched table by state, this process included.
# TYPE svcwatch_instances gauge
svcwatch_instances{state="draining",table="mygame/prod/v1/game"} 1
svcwatch_instances{state="draining",table="mygame/prod/v1/gate"} 1
svcwatch_instances{state="serving",table="mygame/prod/v1/game"} 2
svcwatch_instances{state="serving",table="mygame/prod/v1/gate"} 0
svcwatch_instances{state="unhealthy",table="mygame/prod/v1/game"} 1
svcwatch_instances{state="unhealthy",table="mygame/prod/v1/gate"} 0
# HELP svcwatch_last_sync_age_seconds Seconds since the watcher last confirmed its view current; absent until the first sync.
# TYPE svcwatch_last_sync_age_seconds gauge
svcwatch_last_sync_age_seconds 2.5
# HELP svcwatch_registered 1 while this process is registered (confirmed by Redis within one TTL), else 0; always 0 for a watch-only watcher.
# TYPE svcwatch_registered gauge
svcwatch_registered 1
# HELP svcwatch_reregistrations_total Times this process's registration was found missing (e.g. Redis lost its data) and registered again.
# TYPE svcwatch_reregistrations_total counter
svcwatch_reregistrations_total 2
# HELP svcwatch_self_info Always 1; the labels say which registration this watcher holds.
# TYPE svcwatch_self_info gauge
svcwatch_self_info{id="gate-1",name="10.0.0.1:7000",table="mygame/prod/v1/gate"} 1
# HELP svcwatch_state 1 for the state peers see for this process (serving, draining or unhealthy), 0 for the others.
# TYPE svcwatch_state gauge
svcwatch_state{state="draining"} 1
svcwatch_state{state="serving"} 0
svcwatch_state{state="unhealthy"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	lint(t, c)

	// Never synced: no age (not a huge number).
	w.stats.LastSync = time.Time{}
	if err := testutil.CollectAndCompare(c, strings.NewReader(""), "svcwatch_last_sync_age_seconds"); err != nil {
		t.Fatal(err)
	}

	c.Close()
	c.Close() // idempotent
	if w.removed == 0 {
		t.Fatal("Close left the collector's handler on the watcher")
	}
}

func TestCollectorConstLabels(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	w := &stubWatcher{self: svcwatch.Instance{Table: "a/b"}}
	for _, name := range []string{"gate", "chat"} {
		c := NewCollector(w, WithConstLabels(prometheus.Labels{"watcher": name}))
		if err := reg.Register(c); err != nil {
			t.Fatalf("register collector %s: %v", name, err)
		}
	}
	if err := reg.Register(NewCollector(w, WithConstLabels(prometheus.Labels{"watcher": "gate"}))); err == nil {
		t.Fatal("a second collector with the same labels was accepted")
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// lint fails t for anything promlint finds in c's output.
func lint(t *testing.T, c prometheus.Collector) {
	t.Helper()
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}
