package svcwatch

// service_watcher.go: ServiceWatcher, the backend-free core, and its read API
// (Self, Services, Lookup, Tables, Stats). Its methods run on the caller's
// goroutine and are safe for concurrent use; the hooks a backend drives it with
// are in backend.go.

import (
	"maps"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// ServiceWatcher is the backend-free core of a watcher: the identity, the watched
// tables, the registry of discovered instances, the event dispatcher and the
// counters of Stats. A backend (RedisServiceWatcher) builds it with
// NewServiceWatcher, embeds it, and feeds it through the Backend that
// NewServiceWatcher hands to it alone; users of the watcher see only the read
// API below. Its methods are safe for concurrent use.
type ServiceWatcher struct {
	cfg  config
	reg  *registry
	disp *dispatcher

	mu        sync.Mutex
	self      Instance // self.State is the state peers see: wantState, or Unhealthy
	wantState State    // the state the process set
	unhealthy bool     // the latest health check failed or hung
	set       tableSet // the watched tables and prefixes
	health    healthRunner
	store     selfHooks // how the backend stores self (SetDesc, SetMeta, SetState, Drain)
	logged    onceSet   // what the backend logged once (Backend.LogOnce)

	fullLoads  atomic.Uint64
	lastSync   atomic.Int64 // unix nanoseconds of the watcher's clock
	started    atomic.Bool  // the event goroutine was started
	connected  atomic.Bool
	registered atomic.Bool
	confirmed  atomic.Int64 // unix ns (watcher's clock) of the latest confirmed registration
	heartbeats atomic.Uint64
	rereg      atomic.Uint64
}

// NewServiceWatcher checks self and the options and builds the core, with the
// Backend that drives it. A backend's constructor calls it and keeps the Backend
// to itself; applications use a backend's constructor (NewRedisServiceWatcher).
// Every bad argument is reported at once, each wrapping ErrInvalid.
func NewServiceWatcher(self Instance, opts ...Option) (*ServiceWatcher, *Backend, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if cfg.WatchOnly {
		self = Instance{Table: self.Table}
	}
	if err := cfg.validate(self); err != nil {
		return nil, nil, err
	}
	self.Incarnation, self.RegisteredAt = "", time.Time{}
	self.Meta = maps.Clone(self.Meta)
	if len(self.Meta) == 0 {
		self.Meta = nil
	}
	w := &ServiceWatcher{cfg: cfg, self: self, wantState: self.State, set: newTableSet()}
	skip := ""
	if !cfg.WatchOnly {
		skip = self.Key()
	}
	w.disp = newDispatcher(cfg.Handlers, skip, cfg.Logger)
	w.reg = newRegistry(w.disp.enqueue)
	for _, t := range append([]string{self.Table}, cfg.Tables...) {
		if t != "" { // a watch-only watcher may have no table of its own
			w.addTable(t)
		}
	}
	return w, &Backend{w: w}, nil
}

// Self returns this process's instance, with its current incarnation and
// registration time (zero until registered) and the State peers see.
func (w *ServiceWatcher) Self() Instance {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.self.clone()
}

// Services returns the instances of a watched table, sorted by ID, self included.
// It returns nil for a table that is not watched or not loaded yet. The slice is
// the caller's own.
func (w *ServiceWatcher) Services(table string) []Instance {
	if !w.reg.loaded(table) {
		return nil
	}
	return w.reg.list(table)
}

// Lookup returns the instance id of a watched table.
func (w *ServiceWatcher) Lookup(table, id string) (Instance, bool) { return w.reg.lookup(table, id) }

// Pick returns the instance of a watched table that owns key: one of the
// Serving instances with a positive weight, chosen by weighted consistent
// hashing of key over their IDs (the algorithm is specified in the README, so
// every process and every language picks the same one). A key keeps its owner
// while the owner serves; when the owner drains or turns unhealthy, only its keys
// move; when it leaves, the table is rebuilt and a few others move with its
// own (about 0.1% of all keys at 100 instances; see the README).
// It reports false when the table is not watched or nobody serves. Pick takes
// no lock that event delivery holds and does not allocate beyond copying Meta.
func (w *ServiceWatcher) Pick(table, key string) (Instance, bool) { return w.reg.pick(table, key) }

// PickN returns up to n distinct serving instances for key: the owner first,
// then the fallbacks a retry should try, in the same order in every process.
func (w *ServiceWatcher) PickN(table, key string, n int) []Instance {
	return w.reg.pickN(table, key, n)
}

// Tables returns the tables watched now, sorted: those watched by name (self's
// table, WithTables, Watch) and those found under a watched prefix. The slice
// is the caller's own.
func (w *ServiceWatcher) Tables() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.set.sorted()
}

// Prefixes returns the watched prefixes, sorted.
func (w *ServiceWatcher) Prefixes() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]string, 0, len(w.set.prefixes))
	for p := range w.set.prefixes {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// Stats returns counters and health of the watcher. Counters start at zero at
// construction; LastSync is on the watcher's local clock.
func (w *ServiceWatcher) Stats() Stats {
	s := Stats{
		Connected:       w.connected.Load(),
		Registered:      w.registeredNow(),
		Heartbeats:      w.heartbeats.Load(),
		Reregistrations: w.rereg.Load(),
		FullLoads:       w.fullLoads.Load(),
		Events:          w.disp.events.Load(),
		State:           w.Self().State,
	}
	if ns := w.lastSync.Load(); ns != 0 {
		s.LastSync = time.Unix(0, ns)
	}
	return s
}

// registeredNow reports what peers see as far as this process can know: it is
// registered, and Redis confirmed it within one TTL (a process cut off longer
// than that has expired at its peers).
func (w *ServiceWatcher) registeredNow() bool {
	if !w.registered.Load() {
		return false
	}
	return w.cfg.clock.Now().UnixNano()-w.confirmed.Load() < int64(w.cfg.TTL)
}

// addTable records table as watched by name; it reports whether the table
// was not watched before.
func (w *ServiceWatcher) addTable(table string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	was := w.set.watched(table)
	w.set.named[table] = true
	return !was
}

func (w *ServiceWatcher) setSelf(f func(*Instance)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	f(&w.self)
}

// setSelfMeta records a copy of meta as self's Meta (nil when empty).
func (w *ServiceWatcher) setSelfMeta(meta map[string]string) {
	meta = maps.Clone(meta)
	if len(meta) == 0 {
		meta = nil
	}
	w.setSelf(func(s *Instance) { s.Meta = meta })
}

// wantStateNow is the state the process set (Self().State is what peers see).
func (w *ServiceWatcher) wantStateNow() State {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.wantState
}

// setWantState records the state the process set; self shows it unless the
// health check fails.
func (w *ServiceWatcher) setWantState(s State) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.wantState = s
	w.self.State = w.effectiveState()
}

// setUnhealthy records the health check's verdict; it reports whether the
// state peers see changed.
func (w *ServiceWatcher) setUnhealthy(bad bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.unhealthy = bad
	prev := w.self.State
	w.self.State = w.effectiveState()
	return prev != w.self.State
}

// effectiveState is the state peers should see. Caller holds mu.
func (w *ServiceWatcher) effectiveState() State {
	if w.unhealthy {
		return Unhealthy
	}
	return w.wantState
}
