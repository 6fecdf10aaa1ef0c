// Package svcwatch is Redis-backed service discovery for game server clusters.
//
// Each process registers itself in a table (a cluster path such as
// "mygame/prod/20190510/gate"), keeps itself alive with a heartbeat, and watches the
// tables it needs. Its Handler is told when a peer appears (OnAdd), changes
// (OnUpdate) or goes away (OnRemove), so that its service manager can open or close
// the connection to that peer; ConnManager does exactly that.
//
// A service manager builds its watcher at init with NewRedisServiceWatcher and
// calls Start; see the package examples.
package svcwatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jsoniter "github.com/json-iterator/go"
)

// Errors returned by the watcher. Each is wrapped with detail; test with errors.Is.
var (
	// ErrDuplicateID is returned by Start when another live incarnation, advertising
	// a different Name, holds the same table and ID.
	ErrDuplicateID = errors.New("svcwatch: duplicate id")
	// ErrInvalid is wrapped by every error about a bad argument or option.
	ErrInvalid = errors.New("svcwatch: invalid argument")
	// ErrStopped is returned by methods called after Stop.
	ErrStopped = errors.New("svcwatch: watcher stopped")
	// ErrReplaced is returned by SetDesc when this incarnation's registration was
	// taken over by a newer incarnation of the same ID (a restart elsewhere).
	ErrReplaced = errors.New("svcwatch: registration replaced by another incarnation")
)

// Instance is one registered process.
type Instance struct {
	Table string // cluster path, e.g. "mygame/prod/20190510/gate"
	ID    string // unique within Table
	Name  string // address peers dial, "host:port"
	Desc  string // the process's own description, usually JSON

	// Set by the watcher on the instances it reports.
	Incarnation  string    // random per Start
	RegisteredAt time.Time // Redis server time of this incarnation's registration
}

// Key returns Table + "/" + ID, the instance's unique name across tables.
func (i Instance) Key() string { return i.Table + "/" + i.ID }

// Decode unmarshals Desc, which must be JSON, into v.
func (i Instance) Decode(v any) error {
	if err := jsoniter.ConfigCompatibleWithStandardLibrary.UnmarshalFromString(i.Desc, v); err != nil {
		return fmt.Errorf("svcwatch: decode desc of %s: %w", i.Key(), err)
	}
	return nil
}

// Path joins cluster path parts with "/": Path("game", "prod", "v1", "gate") is
// "game/prod/v1/gate".
func Path(parts ...string) string { return strings.Join(parts, "/") }

// Handler receives discovery events. For one watcher, calls come from a single
// goroutine owned by the watcher, one at a time, in the order the changes were
// applied. A handler may block (later events wait; the heartbeat does not) and may
// call any method of its watcher. Events about the watcher's own instance are never
// delivered.
type Handler interface {
	// OnAdd is called when a peer is discovered, including the peers already present
	// when Start or Watch is called.
	OnAdd(inst Instance)
	// OnUpdate is called when a known peer changes its Name or Desc.
	OnUpdate(old, cur Instance)
	// OnRemove is called when a peer deregisters, expires, or is replaced by a new
	// incarnation (then OnAdd for the new one follows).
	OnRemove(inst Instance)
}

// HandlerFuncs adapts plain functions to Handler; nil fields are skipped.
type HandlerFuncs struct {
	Add    func(inst Instance)
	Update func(old, cur Instance)
	Remove func(inst Instance)
}

// OnAdd calls f.Add if it is set.
func (f HandlerFuncs) OnAdd(inst Instance) {
	if f.Add != nil {
		f.Add(inst)
	}
}

// OnUpdate calls f.Update if it is set.
func (f HandlerFuncs) OnUpdate(old, cur Instance) {
	if f.Update != nil {
		f.Update(old, cur)
	}
}

// OnRemove calls f.Remove if it is set.
func (f HandlerFuncs) OnRemove(inst Instance) {
	if f.Remove != nil {
		f.Remove(inst)
	}
}

// Watcher is what a process holds: it registers the process, keeps it alive,
// watches tables and raises events. RedisServiceWatcher implements it.
type Watcher interface {
	// Start registers self (unless watch-only) and loads every watched table. When
	// it returns nil, OnAdd has been delivered for every peer already present.
	Start(ctx context.Context) error
	// Stop deregisters self and stops every goroutine of the watcher. It is
	// idempotent; after it returns no handler is called.
	Stop(ctx context.Context) error
	// Self returns this process's instance, with its current incarnation.
	Self() Instance
	// SetDesc changes this process's Desc; peers get OnUpdate.
	SetDesc(ctx context.Context, desc string) error
	// Watch adds a table to watch. When it returns nil the table is loaded and OnAdd
	// has been delivered for each of its peers (unless Watch is called from a
	// handler: then those events follow as soon as the handler returns).
	Watch(ctx context.Context, table string) error
	// Services returns the live instances of a watched table, sorted by ID, self
	// included. The slice is the caller's own.
	Services(table string) []Instance
	// Lookup returns one instance of a watched table.
	Lookup(table, id string) (Instance, bool)
	// Stats returns counters and health of the watcher.
	Stats() Stats
}

// Stats describes a watcher's health. All counters start at zero at construction.
type Stats struct {
	Connected       bool      // the last Redis round trip succeeded
	Registered      bool      // self is registered right now
	Heartbeats      uint64    // keepalives that succeeded
	Reregistrations uint64    // times self was found missing and registered again
	FullLoads       uint64    // full reads of a table
	Events          uint64    // handler calls made
	LastSync        time.Time // when the view was last confirmed current (local clock)
}

// ServiceWatcher is the backend-free core of a watcher: the identity, the watched
// tables, the registry of discovered instances and the event dispatcher. A backend
// (RedisServiceWatcher) embeds it, finds out what the tables hold, and reports
// that through ReplaceTable, PutInstance and RemoveInstance; the core turns those
// into handler events. Its methods are safe for concurrent use.
type ServiceWatcher struct {
	cfg   config
	log   *slog.Logger
	clock clock
	reg   *registry
	disp  *dispatcher

	mu     sync.Mutex
	self   Instance
	tables []string // watched, in the order they were added

	fullLoads atomic.Uint64
	lastSync  atomic.Int64 // unix nanoseconds
	started   atomic.Bool
}

// NewServiceWatcher checks self and the options and builds the core. Backends call
// it; applications use NewRedisServiceWatcher.
func NewServiceWatcher(self Instance, opts ...Option) (*ServiceWatcher, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if err := cfg.finish(); err != nil {
		return nil, err
	}
	if cfg.watchOnly {
		self = Instance{Table: self.Table}
	}
	if err := checkSelf(self, &cfg); err != nil {
		return nil, err
	}
	self.Incarnation, self.RegisteredAt = "", time.Time{}
	w := &ServiceWatcher{cfg: cfg, log: cfg.logger, clock: cfg.clock, self: self}
	skip := ""
	if !cfg.watchOnly {
		skip = self.Key()
	}
	w.disp = newDispatcher(cfg.handlers, skip, cfg.logger)
	w.reg = newRegistry(w.disp.enqueue)
	for _, t := range append([]string{self.Table}, cfg.tables...) {
		if err := checkTable(t); err != nil {
			return nil, err
		}
		w.addTable(t)
	}
	return w, nil
}

// Self returns this process's instance, with its current incarnation and
// registration time (zero until registered).
func (w *ServiceWatcher) Self() Instance {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.self
}

// Services returns the instances of a watched table, sorted by ID, self included.
// It returns nil for a table that is not watched or not loaded yet.
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

// Stats returns the backend-free counters: FullLoads, Events and LastSync.
func (w *ServiceWatcher) Stats() Stats {
	s := Stats{FullLoads: w.fullLoads.Load(), Events: w.disp.events.Load()}
	if ns := w.lastSync.Load(); ns != 0 {
		s.LastSync = time.Unix(0, ns)
	}
	return s
}

// ReplaceTable makes insts the whole current view of table (a full read) and marks
// the view synced. An instance missing from insts is removed, or, when
// holdAbsentUntil is not zero, kept until then unless it comes back: a backend
// that suspects lost data, not dead processes, holds removals back.
func (w *ServiceWatcher) ReplaceTable(table string, insts []Instance, holdAbsentUntil time.Time) {
	w.fullLoads.Add(1)
	w.reg.replace(table, insts, holdAbsentUntil)
	w.MarkSynced()
}

// PutInstance adds or updates one instance of a loaded table.
func (w *ServiceWatcher) PutInstance(inst Instance) { w.reg.put(inst) }

// RemoveInstance removes one instance, or holds it until holdUntil when that is
// not zero.
func (w *ServiceWatcher) RemoveInstance(table, id string, holdUntil time.Time) {
	w.reg.remove(table, id, holdUntil)
}

// ReleaseHolds removes the held instances whose hold has ended by now.
func (w *ServiceWatcher) ReleaseHolds(now time.Time) { w.reg.releaseHolds(now) }

// MarkSynced records that the view was confirmed current now.
func (w *ServiceWatcher) MarkSynced() { w.lastSync.Store(w.clock.Now().UnixNano()) }

// Flush waits until every event queued so far has been handled. Called from a
// handler it returns at once (the events follow when the handler returns).
func (w *ServiceWatcher) Flush(ctx context.Context) error { return w.disp.flush(ctx) }

// StartEvents starts the goroutine that calls the handlers. A backend calls it
// once, before its first ReplaceTable.
func (w *ServiceWatcher) StartEvents() {
	if w.started.CompareAndSwap(false, true) {
		go w.disp.run()
	}
}

// StopEvents stops event delivery: no handler is called after it returns (except
// that a handler calling it finishes). It waits for the event goroutine until ctx
// ends, and is idempotent.
func (w *ServiceWatcher) StopEvents(ctx context.Context) error {
	w.disp.stop()
	if !w.started.Load() {
		return nil
	}
	return w.disp.wait(ctx)
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

// SetRegistration records self's current incarnation and the (server) time it
// registered; a backend calls it as it registers. Self reports them.
func (w *ServiceWatcher) SetRegistration(incarnation string, at time.Time) {
	w.setSelf(func(s *Instance) { s.Incarnation, s.RegisteredAt = incarnation, at })
}

// SetSelfDesc records self's Desc; a backend calls it once the new Desc is
// stored (or, before Start, to have it registered).
func (w *ServiceWatcher) SetSelfDesc(desc string) { w.setSelf(func(s *Instance) { s.Desc = desc }) }

func (w *ServiceWatcher) setSelf(f func(*Instance)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	f(&w.self)
}
