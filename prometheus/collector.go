// Package svcwatchprom exports a svcwatch watcher's health to Prometheus.
//
// A Collector is a prometheus.Collector over a watcher built elsewhere: it
// reads the watcher at each scrape (Stats, Self, Tables, Services) and counts
// its events by kind through a handler it adds to the watcher
// (svcwatch.Watcher.AddHandler). Build it over the watcher and register it:
//
//	w, err := svcwatch.NewRedisServiceWatcher(client, self)
//	if err != nil { ... }
//	c := svcwatchprom.NewCollector(w)
//	prometheus.MustRegister(c)
//
// The metrics, all with the prefix svcwatch_ (see the README for their HELP):
//
//	svcwatch_registered                  gauge   1 while self is registered
//	svcwatch_connected                   gauge   1 while the last Redis round trip succeeded
//	svcwatch_state{state}                gauge   1 for the state peers see for self, 0 for the others
//	svcwatch_self_info{table,id,name}    gauge   always 1: who this watcher is
//	svcwatch_instances{table,state}      gauge   live instances per watched table and state, self included
//	svcwatch_events_total{kind}          counter events since the collector attached: add, update, remove
//	svcwatch_heartbeats_total            counter keepalives that succeeded
//	svcwatch_reregistrations_total       counter times self was found missing and registered again
//	svcwatch_full_loads_total            counter full reads of a table
//	svcwatch_last_sync_age_seconds       gauge   seconds since the view was last confirmed current
package svcwatchprom

// collector.go: Collector, its metrics and what each reads.

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/svcwatch/svcwatch"
)

// states are the svcwatch states, in the order their series are exported.
var states = [...]svcwatch.State{svcwatch.Serving, svcwatch.Draining, svcwatch.Unhealthy}

// Collector is a prometheus.Collector over one watcher. Build it with
// NewCollector and register it; Close it if you drop it while the watcher
// lives on. Its methods are safe for concurrent use;
// its handler on the watcher only counts, so it never holds up the watcher's
// events.
type Collector struct {
	w      svcwatch.Watcher
	remove func()           // removes the counter from w's handlers; idempotent
	now    func() time.Time // time.Now; tests replace it

	counts *eventCounter

	registered, connected, state, selfInfo, instances *prometheus.Desc
	events, heartbeats, rereg, fullLoads, syncAge     *prometheus.Desc
}

// eventCounter is the Collector's handler on the watcher: it counts events
// by kind.
type eventCounter struct {
	adds, updates, removes atomic.Uint64
}

func (e *eventCounter) OnAdd(svcwatch.Instance)         { e.adds.Add(1) }
func (e *eventCounter) OnUpdate(_, _ svcwatch.Instance) { e.updates.Add(1) }
func (e *eventCounter) OnRemove(svcwatch.Instance)      { e.removes.Add(1) }

// Option configures a Collector.
type Option func(*options)

type options struct {
	constLabels prometheus.Labels
}

// WithConstLabels adds labels to every metric of the collector, e.g.
// {"watcher": "gate"} when one process registers collectors of several
// watchers in one registry (without them the second registration fails as a
// duplicate). Default none.
func WithConstLabels(l prometheus.Labels) Option {
	return func(o *options) { o.constLabels = l }
}

// NewCollector returns a Collector that reads w, built by the caller and
// started before or after, at each scrape, and adds a handler to w
// (w.AddHandler) that counts its events for svcwatch_events_total from then
// on: the peers w already knows count as adds, as they would have for a
// handler given at construction. Close removes the handler. A nil w is a
// programming error and panics.
func NewCollector(w svcwatch.Watcher, opts ...Option) *Collector {
	if w == nil {
		panic("svcwatch/prometheus: NewCollector(nil watcher)")
	}
	var o options
	for _, f := range opts {
		if f != nil {
			f(&o)
		}
	}
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("svcwatch_"+name, help, labels, o.constLabels)
	}
	c := &Collector{
		w:      w,
		now:    time.Now,
		counts: &eventCounter{},
		registered: desc("registered",
			"1 while this process is registered (confirmed by Redis within one TTL), else 0; always 0 for a watch-only watcher."),
		connected: desc("connected",
			"1 while the watcher's last round trip to Redis succeeded, else 0."),
		state: desc("state",
			"1 for the state peers see for this process (serving, draining or unhealthy), 0 for the others.", "state"),
		selfInfo: desc("self_info",
			"Always 1; the labels say which registration this watcher holds.", "table", "id", "name"),
		instances: desc("instances",
			"Live instances of each watched table by state, this process included.", "table", "state"),
		events: desc("events_total",
			"Discovery events since this collector attached to the watcher, by kind (add, update, remove); the peers known then count as adds.", "kind"),
		heartbeats: desc("heartbeats_total",
			"Keepalives of this process's registration that succeeded."),
		rereg: desc("reregistrations_total",
			"Times this process's registration was found missing (e.g. Redis lost its data) and registered again."),
		fullLoads: desc("full_loads_total",
			"Full reads of a watched table from Redis."),
		syncAge: desc("last_sync_age_seconds",
			"Seconds since the watcher last confirmed its view current; absent until the first sync."),
	}
	c.remove = w.AddHandler(c.counts)
	return c
}

// Close removes the collector's handler from the watcher: svcwatch_events_total
// stops counting (the other metrics still read the watcher at each scrape).
// Call it when the collector is dropped but the watcher lives on; a collector
// that lives as long as its watcher needs no Close. Idempotent.
func (c *Collector) Close() { c.remove() }

// Describe sends the descriptors of every metric the collector may export.
// It implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.registered, c.connected, c.state, c.selfInfo, c.instances,
		c.events, c.heartbeats, c.rereg, c.fullLoads, c.syncAge,
	} {
		ch <- d
	}
}

// Collect reads the watcher and sends the current values. It
// implements prometheus.Collector; the registry calls it at each scrape.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter(c.events, c.counts.adds.Load(), "add")
	counter(c.events, c.counts.updates.Load(), "update")
	counter(c.events, c.counts.removes.Load(), "remove")

	w := c.w
	st := w.Stats()
	self := w.Self()
	gauge(c.registered, boolValue(st.Registered))
	gauge(c.connected, boolValue(st.Connected))
	for _, s := range states {
		gauge(c.state, boolValue(st.State == s), s.String())
	}
	gauge(c.selfInfo, 1, self.Table, self.ID, self.Name)
	counter(c.heartbeats, st.Heartbeats)
	counter(c.rereg, st.Reregistrations)
	counter(c.fullLoads, st.FullLoads)
	if !st.LastSync.IsZero() {
		gauge(c.syncAge, max(0, c.now().Sub(st.LastSync).Seconds()))
	}

	for _, table := range w.Tables() {
		var n [len(states)]int
		for _, inst := range w.Services(table) {
			if int(inst.State) < len(n) {
				n[inst.State]++
			}
		}
		for i, s := range states {
			gauge(c.instances, float64(n[i]), table, s.String())
		}
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
