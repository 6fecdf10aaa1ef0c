// Package svcwatchprom exports a svcwatch watcher's health to Prometheus.
//
// A Collector is a prometheus.Collector that reads a watcher at each scrape
// (Stats, Self, Tables, Services) and a svcwatch.Handler that counts the
// watcher's events by kind. Give it to the watcher as a handler, attach the
// watcher once it is built, and register it:
//
//	c := svcwatchprom.NewCollector()
//	w, err := svcwatch.NewRedisServiceWatcher(client, self, svcwatch.WithHandler(c))
//	if err != nil { ... }
//	c.Attach(w)
//	prometheus.MustRegister(c)
//
// The metrics, all with the prefix svcwatch_ (see the README for their HELP):
//
//	svcwatch_registered                  gauge   1 while self is registered
//	svcwatch_connected                   gauge   1 while the last Redis round trip succeeded
//	svcwatch_state{state}                gauge   1 for the state peers see for self, 0 for the others
//	svcwatch_self_info{table,id,name}    gauge   always 1: who this watcher is
//	svcwatch_instances{table,state}      gauge   live instances per watched table and state, self included
//	svcwatch_events_total{kind}          counter handler events: add, update, remove
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

// Watcher is what the Collector reads of a watcher at each scrape. Every
// svcwatch.Watcher (RedisServiceWatcher, the other backends) has these methods.
type Watcher interface {
	Self() svcwatch.Instance
	Stats() svcwatch.Stats
	Tables() []string
	Services(table string) []svcwatch.Instance
}

// states are the svcwatch states, in the order their series are exported.
var states = [...]svcwatch.State{svcwatch.Serving, svcwatch.Draining, svcwatch.Unhealthy}

// Collector is a prometheus.Collector over one watcher, and the
// svcwatch.Handler that counts its events. Build it with NewCollector, pass it
// to svcwatch.WithHandler, then Attach the watcher. Its methods are safe for
// concurrent use; the handler methods only count, so they never hold up the
// watcher's events.
type Collector struct {
	w   atomic.Pointer[watcherBox]
	now func() time.Time // time.Now; tests replace it

	adds, updates, removes atomic.Uint64

	registered, connected, state, selfInfo, instances *prometheus.Desc
	events, heartbeats, rereg, fullLoads, syncAge     *prometheus.Desc
}

// watcherBox lets an interface value live in an atomic.Pointer.
type watcherBox struct{ w Watcher }

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

// NewCollector returns a Collector with no watcher attached: until Attach it
// exports only svcwatch_events_total.
func NewCollector(opts ...Option) *Collector {
	var o options
	for _, f := range opts {
		if f != nil {
			f(&o)
		}
	}
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("svcwatch_"+name, help, labels, o.constLabels)
	}
	return &Collector{
		now: time.Now,
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
			"Discovery events delivered to the watcher's handlers, by kind (add, update, remove).", "kind"),
		heartbeats: desc("heartbeats_total",
			"Keepalives of this process's registration that succeeded."),
		rereg: desc("reregistrations_total",
			"Times this process's registration was found missing (e.g. Redis lost its data) and registered again."),
		fullLoads: desc("full_loads_total",
			"Full reads of a watched table from Redis."),
		syncAge: desc("last_sync_age_seconds",
			"Seconds since the watcher last confirmed its view current; absent until the first sync."),
	}
}

// Attach makes the collector read w at each scrape. Call it once w is built
// (the collector must already be one of w's handlers to count events);
// attaching again replaces the watcher.
func (c *Collector) Attach(w Watcher) {
	if w == nil {
		c.w.Store(nil)
		return
	}
	c.w.Store(&watcherBox{w: w})
}

// OnAdd counts an add event. It implements svcwatch.Handler.
func (c *Collector) OnAdd(svcwatch.Instance) { c.adds.Add(1) }

// OnUpdate counts an update event. It implements svcwatch.Handler.
func (c *Collector) OnUpdate(_, _ svcwatch.Instance) { c.updates.Add(1) }

// OnRemove counts a remove event. It implements svcwatch.Handler.
func (c *Collector) OnRemove(svcwatch.Instance) { c.removes.Add(1) }

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

// Collect reads the attached watcher and sends the current values. It
// implements prometheus.Collector; the registry calls it at each scrape.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter(c.events, c.adds.Load(), "add")
	counter(c.events, c.updates.Load(), "update")
	counter(c.events, c.removes.Load(), "remove")

	box := c.w.Load()
	if box == nil {
		return
	}
	w := box.w
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
