package svcwatch

// backend.go: Backend, the hooks a backend drives the core with. NewServiceWatcher
// hands it only to the backend that built the core, so a user holding a watcher
// cannot reach them. Hooks are called from the backend's own goroutines (its
// loops, its Start and Stop); each is safe for concurrent use.

import (
	"context"
	"errors"
	"maps"
	"time"
)

// Backend feeds a ServiceWatcher: what the store holds (ReplaceTable,
// PutInstance, RemoveInstance), the registration's state and counters, and the
// event goroutine's lifetime. NewServiceWatcher returns it beside the core, for
// the backend alone; a backend in another module builds on it the way
// RedisServiceWatcher does.
//
// The contract a backend keeps: call StartEvents before the first ReplaceTable;
// load each watched table with ReplaceTable before reporting Start or Watch done
// (then Flush, so OnAdd was delivered); after its loops have ended, StopEvents.
type Backend struct {
	w *ServiceWatcher
}

// Config returns the watcher's settings, defaults filled in. The slices are the
// caller's own.
func (b *Backend) Config() Config {
	c := b.w.cfg.Config
	c.Handlers = append([]Handler(nil), c.Handlers...)
	c.Tables = append([]string(nil), c.Tables...)
	return c
}

// Now reads the watcher's clock, which drives the backend's schedules and holds
// (tests replace it). Server time comes from the store, never from here.
func (b *Backend) Now() time.Time { return b.w.cfg.clock.Now() }

// NewTimer returns a timer of the watcher's clock.
func (b *Backend) NewTimer(d time.Duration) Timer { return b.w.cfg.clock.NewTimer(d) }

// AddTable records table as watched (it must have passed the checks of Watch);
// it reports whether the table was new.
func (b *Backend) AddTable(table string) bool { return b.w.addTable(table) }

// ReplaceTable makes insts the whole current view of table (a full read) and
// marks the view synced. An instance missing from insts is
// removed, or, when holdAbsentUntil is not zero, kept until then unless it comes
// back: a backend that suspects lost data, not dead processes, holds removals
// back.
func (b *Backend) ReplaceTable(table string, insts []Instance, holdAbsentUntil time.Time) {
	b.w.reg.replace(table, insts, holdAbsentUntil)
	b.MarkSynced()
}

// PutInstance adds or updates one instance of a loaded table.
func (b *Backend) PutInstance(inst Instance) { b.w.reg.put(inst) }

// RemoveInstance removes one instance, or holds it until holdUntil when that is
// not zero.
func (b *Backend) RemoveInstance(table, id string, holdUntil time.Time) {
	b.w.reg.remove(table, id, holdUntil)
}

// ReleaseHolds removes the held instances whose hold has ended by now.
func (b *Backend) ReleaseHolds(now time.Time) { b.w.reg.releaseHolds(now) }

// MarkSynced records that the view was confirmed current now (Stats.LastSync).
func (b *Backend) MarkSynced() { b.w.lastSync.Store(b.Now().UnixNano()) }

// Flush waits until every event queued so far has been handled. Called from a
// handler it returns at once (the events follow when the handler returns).
func (b *Backend) Flush(ctx context.Context) error { return b.w.disp.flush(ctx) }

// StartEvents starts the goroutine that calls the handlers. Idempotent.
func (b *Backend) StartEvents() {
	if b.w.started.CompareAndSwap(false, true) {
		go b.w.disp.run()
	}
}

// StopEvents stops event delivery: no handler is called after it returns (a
// handler that calls it finishes). It waits for the event goroutine until ctx
// ends, and is idempotent.
func (b *Backend) StopEvents(ctx context.Context) error {
	b.w.disp.stop()
	healthErr := b.w.health.wait(ctx)
	if !b.w.started.Load() {
		return healthErr
	}
	return errors.Join(healthErr, b.w.disp.wait(ctx))
}

// SetRegistration records self's current incarnation and the (server) time it
// registered; a backend calls it as it registers. Self reports them.
func (b *Backend) SetRegistration(incarnation string, at time.Time) {
	b.w.setSelf(func(s *Instance) { s.Incarnation, s.RegisteredAt = incarnation, at })
}

// SetSelfDesc records self's Desc; a backend calls it as it stores the new Desc
// (or, before Start, to have it registered).
func (b *Backend) SetSelfDesc(desc string) { b.w.setSelf(func(s *Instance) { s.Desc = desc }) }

// SetSelfMeta records self's Meta (a copy of meta), as SetSelfDesc.
func (b *Backend) SetSelfMeta(meta map[string]string) {
	meta = maps.Clone(meta)
	if len(meta) == 0 {
		meta = nil
	}
	b.w.setSelf(func(s *Instance) { s.Meta = meta })
}

// SetSelfState records the state the process set, as SetSelfDesc; while the
// health check fails, Self shows Unhealthy instead.
func (b *Backend) SetSelfState(s State) { b.w.setWantState(s) }

// WantState returns the state the process set (Self().State is what peers see).
func (b *Backend) WantState() State {
	b.w.mu.Lock()
	defer b.w.mu.Unlock()
	return b.w.wantState
}

// SetConnected records whether the latest round trip to the store succeeded.
func (b *Backend) SetConnected(ok bool) { b.w.connected.Store(ok) }

// SetRegistered records whether self is registered right now; true means the
// store just confirmed it. Stats.Registered turns false by itself when no
// confirmation came within one TTL.
func (b *Backend) SetRegistered(ok bool) {
	if ok {
		b.w.confirmed.Store(b.Now().UnixNano())
	}
	b.w.registered.Store(ok)
}

// CountFullLoad counts a full read of a table, whether or not its result
// became the view (Stats.FullLoads).
func (b *Backend) CountFullLoad() { b.w.fullLoads.Add(1) }

// CountHeartbeat counts a keepalive that succeeded.
func (b *Backend) CountHeartbeat() { b.w.heartbeats.Add(1) }

// CountReregistration counts a registration found missing and made again.
func (b *Backend) CountReregistration() { b.w.rereg.Add(1) }

// RegistrationLost marks self unregistered for good and tells the
// WithOnRegistrationLost callback, if any, on the event goroutine (so that it
// may call Stop). err wraps ErrReplaced or ErrDuplicateID.
func (b *Backend) RegistrationLost(err error) {
	b.w.registered.Store(false)
	if f := b.w.cfg.onLost; f != nil {
		self := b.w.Self()
		b.w.disp.notify(func() { f(self, err) })
	}
}
