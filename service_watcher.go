package svcwatch

// service_watcher.go: ServiceWatcher, the backend-free core, and its read API
// (Self, Services, Lookup, Tables, Stats). Its methods run on the caller's
// goroutine and are safe for concurrent use; the hooks a backend drives it with
// are in backend.go.

import (
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

	mu     sync.Mutex
	self   Instance
	tables []string // watched, in the order they were added

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
	w := &ServiceWatcher{cfg: cfg, self: self}
	skip := ""
	if !cfg.WatchOnly {
		skip = self.Key()
	}
	w.disp = newDispatcher(cfg.Handlers, skip, cfg.Logger)
	w.reg = newRegistry(w.disp.enqueue)
	for _, t := range append([]string{self.Table}, cfg.Tables...) {
		w.addTable(t)
	}
	return w, &Backend{w: w}, nil
}

// Self returns this process's instance, with its current incarnation and
// registration time (zero until registered).
func (w *ServiceWatcher) Self() Instance {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.self
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

// Tables returns the watched tables, in the order they were added.
func (w *ServiceWatcher) Tables() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.tables...)
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

// addTable records table as watched; it reports whether it was new.
func (w *ServiceWatcher) addTable(table string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, t := range w.tables {
		if t == table {
			return false
		}
	}
	w.tables = append(w.tables, table)
	return true
}

func (w *ServiceWatcher) setSelf(f func(*Instance)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	f(&w.self)
}
