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
//
// # Goroutines
//
// A started RedisServiceWatcher runs four goroutines, each owned by the
// watcher and ended by Stop:
//
//   - the heartbeat (redis_heartbeat.go): one script call per keepalive
//     interval, which also reaps expired peers; it re-registers after data loss
//     and stands down when replaced;
//   - the sync loop (redis_sync.go): the pub/sub subscription, the safety-net
//     scan and table reloads; it applies changes to the registry;
//   - the catalog goroutine (redis_catalog.go): it watches the tables that
//     appear under the watched prefixes and, every collection pass, collects
//     tables empty for the retention;
//   - the event goroutine (dispatch.go): the only one that calls handlers and
//     the WithOnRegistrationLost callback, one at a time, in order.
//
// Start, Stop, Watch, Unwatch, WatchPrefix and the Set methods run on the
// caller's goroutine. The go-redis client runs goroutines of its own (the
// PubSub's reader and health check), closed by Stop. A ConnManager owns one
// dial goroutine per accepted peer, ended by its Close.
package svcwatch

// watcher.go: the public vocabulary: Instance, Path, Handler, Watcher, Stats and
// the errors.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
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

// State is whether an instance takes new work. Its zero value is Serving.
type State uint8

// The states of an instance.
const (
	// Serving takes new work: Pick gives it keys.
	Serving State = iota
	// Draining finishes what it has (its players stay, its connections stay
	// open) and takes no new work.
	Draining
	// Unhealthy failed its own health check; it takes no new work.
	Unhealthy
)

// String returns "serving", "draining" or "unhealthy" ("state(N)" otherwise).
func (s State) String() string {
	switch s {
	case Serving:
		return "serving"
	case Draining:
		return "draining"
	case Unhealthy:
		return "unhealthy"
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// Instance is one registered process.
type Instance struct {
	Table string // cluster path, e.g. "mygame/prod/20190510/gate"
	ID    string // unique within Table
	Name  string // address peers dial, "host:port"
	Desc  string // the process's own description, usually JSON
	// Meta holds small structured attributes (weight, zone, load ...); nil when
	// none. Every Instance a watcher hands out has a Meta of its own.
	Meta  map[string]string
	State State // Serving (the zero value), Draining or Unhealthy

	// Set by the watcher on the instances it reports.
	Incarnation  string    // random per Start
	RegisteredAt time.Time // Redis server time of this incarnation's registration
}

// Key returns Table + "/" + ID, the instance's unique name across tables.
func (i Instance) Key() string { return i.Table + "/" + i.ID }

// Weight returns Meta["weight"], the instance's share of keys in Pick relative
// to its peers': a non-negative integer, 1 when absent (or, in data that did not
// pass the checks of SetMeta, unreadable).
func (i Instance) Weight() int {
	v, ok := i.Meta["weight"]
	if !ok {
		return 1
	}
	w, err := strconv.Atoi(v)
	if err != nil || w < 0 {
		return 1
	}
	return w
}

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
	// SetMeta replaces this process's Meta; peers get OnUpdate.
	SetMeta(ctx context.Context, meta map[string]string) error
	// SetState sets this process's State; peers get OnUpdate.
	SetState(ctx context.Context, s State) error
	// Drain sets Draining, waits for wait (nil: none), then stops. If wait
	// fails, the process stays registered and draining, and Drain returns the error.
	Drain(ctx context.Context, wait func(context.Context) error) error
	// Pick returns the serving instance of table that owns key.
	Pick(table, key string) (Instance, bool)
	// PickN returns up to n distinct serving instances for key, the owner first.
	PickN(table, key string, n int) []Instance
	// Watch adds a table to watch. When it returns nil the table is loaded and OnAdd
	// has been delivered for each of its peers (unless Watch is called from a
	// handler: then those events follow as soon as the handler returns).
	Watch(ctx context.Context, table string) error
	// Unwatch stops watching a table watched by name: OnRemove for each of its
	// peers, then it is no longer synced. Self's own table cannot be unwatched
	// while registered (ErrInvalid); a table not watched by name is a no-op; a
	// table also under a watched prefix stays watched until that is undone.
	Unwatch(ctx context.Context, table string) error
	// WatchPrefix watches every table under prefix (whole path segments), now
	// and later; it returns once the existing ones are loaded and their OnAdds
	// delivered.
	WatchPrefix(ctx context.Context, prefix string) error
	// UnwatchPrefix undoes WatchPrefix; the tables it alone kept are unwatched.
	UnwatchPrefix(ctx context.Context, prefix string) error
	// Tables returns the tables watched now, sorted.
	Tables() []string
	// Services returns the live instances of a watched table, sorted by ID, self
	// included. The slice is the caller's own.
	Services(table string) []Instance
	// Lookup returns one instance of a watched table.
	Lookup(table, id string) (Instance, bool)
	// Stats returns counters and health of the watcher.
	Stats() Stats
	// AddHandler adds a handler to a built watcher (adapters attach this
	// way): it is told OnAdd for every peer already known, then every change;
	// remove stops it.
	AddHandler(h Handler) (remove func())
}

// Stats describes a watcher's health. All counters start at zero at construction.
type Stats struct {
	Connected       bool      // the last Redis round trip succeeded
	Registered      bool      // self is registered, as far as it can know: confirmed by Redis within one TTL
	Heartbeats      uint64    // keepalives that succeeded
	Reregistrations uint64    // times self was found missing and registered again
	FullLoads       uint64    // full reads of a table
	Events          uint64    // handler calls made
	LastSync        time.Time // when the view was last confirmed current (local clock)
	State           State     // the state peers see for this process (Unhealthy while its health check fails)
}

// same reports whether a and b are equal, Meta compared by content.
func (i Instance) same(o Instance) bool {
	return i.Table == o.Table && i.ID == o.ID && i.Name == o.Name && i.Desc == o.Desc &&
		i.State == o.State && i.Incarnation == o.Incarnation && i.RegisteredAt.Equal(o.RegisteredAt) &&
		maps.Equal(i.Meta, o.Meta)
}

// clone returns i with a Meta of its own, for an observer.
func (i Instance) clone() Instance {
	i.Meta = maps.Clone(i.Meta)
	return i
}
