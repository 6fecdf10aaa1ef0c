package svcwatch

// backend.go: Backend, the hooks a backend drives the core with. NewServiceWatcher
// hands it only to the backend that built the core, so a user holding a watcher
// cannot reach them. Hooks are called from the backend's own goroutines (its
// loops, its Start and Stop); each is safe for concurrent use.

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/svcwatch/svcwatch/protocol"
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

// CheckTable checks a table name as Watch takes it: an error wrapping
// ErrInvalid says what is wrong.
func (b *Backend) CheckTable(table string) error { return checkTable(table) }

// DecodeRecord turns a stored record (protocol.Record's JSON) of table and id
// into an Instance, refusing what a registration could not have written (bad
// names, over the size limit): a backend skips such data instead of
// reporting it. Errors wrap protocol.ErrBadData.
func (b *Backend) DecodeRecord(table, id, raw string) (Instance, error) {
	return decodeRecord(table, id, raw, b.w.cfg.MaxDescSize)
}

// EncodeRecord returns self's stored record (protocol.Record's JSON, as the
// Redis scripts write it) for record version ver, registered at registeredAt
// (server time), with the watcher's TTL: what DecodeRecord reads back.
func (b *Backend) EncodeRecord(self Instance, ver string, registeredAt time.Time) string {
	return protocol.Record{
		Inc: self.Incarnation, Ver: ver, Name: self.Name, Desc: self.Desc, Meta: self.Meta,
		State: stateName(self.State), Reg: registeredAt.UnixMilli(), TTL: b.w.cfg.TTL.Milliseconds(),
	}.Encode()
}

// Retry runs f until it succeeds, fails for good (an error wrapping
// ErrDuplicateID, ErrInvalid or ErrStopped) or ctx ends, waiting between tries
// a jittered backoff from 50 ms doubling to 2 s on the watcher's clock, so
// that processes that failed together do not retry in lockstep.
func (b *Backend) Retry(ctx context.Context, what string, f func(context.Context) error) error {
	return retry(ctx, b.w.cfg.clock, what, f)
}

// Backoff returns the wait before retry number attempt+1 (from 0): lo
// doubling up to hi, with equal jitter.
func (b *Backend) Backoff(attempt int, lo, hi time.Duration) time.Duration {
	return backoff{min: lo, max: hi}.delay(attempt)
}

// Sleep waits d on the watcher's clock, or until ctx ends; it reports whether
// d passed.
func (b *Backend) Sleep(ctx context.Context, d time.Duration) bool {
	return sleep(ctx, b.w.cfg.clock, d)
}

// NewToken returns a random 16-hex-digit token, for incarnations and record
// versions.
func (b *Backend) NewToken() string { return newToken() }

// LogOnce reports whether key is new to this watcher, and remembers it: a
// backend logs unreadable data or a refused call only the first time. It
// remembers at most 1,024 keys (then forgets them all), so a flood of junk
// costs bounded memory.
func (b *Backend) LogOnce(key string) bool { return b.w.logged.first(key) }

// AddTable records table as watched by name (it must have passed CheckTable);
// it reports whether the table was not watched before, so that the backend
// starts syncing it.
func (b *Backend) AddTable(table string) bool { return b.w.addTable(table) }

// RemoveTable undoes watching table by name (Unwatch). It reports whether the
// table is no longer watched at all (no watched prefix covers it): the backend
// then stops syncing it and calls DropTable. Self's own table cannot be
// unwatched by a watcher that registers (an error wrapping ErrInvalid).
func (b *Backend) RemoveTable(table string) (unwatched bool, err error) {
	if err := checkTable(table); err != nil {
		return false, err
	}
	w := b.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.cfg.WatchOnly && table == w.self.Table {
		return false, fmt.Errorf("%w: %q is this process's own table; it cannot be unwatched while registered", ErrInvalid, table)
	}
	if !w.set.named[table] {
		return false, nil
	}
	delete(w.set.named, table)
	if w.set.found[table] {
		return false, nil
	}
	return true, nil
}

// AddPrefix records a watched prefix (WatchPrefix), checked and without
// trailing slashes, and returns that form; added reports whether it is new.
// The backend then lists the store's tables and calls AddFoundTable for each.
func (b *Backend) AddPrefix(prefix string) (norm string, added bool, err error) {
	p, err := checkPrefix(prefix)
	if err != nil {
		return "", false, err
	}
	b.w.mu.Lock()
	defer b.w.mu.Unlock()
	added = !b.w.set.prefixes[p]
	b.w.set.prefixes[p] = true
	return p, added, nil
}

// RemovePrefix undoes a watched prefix (UnwatchPrefix): it returns the prefix
// in the form AddPrefix recorded it, and the tables that are no longer watched
// at all: the backend stops syncing each and calls DropTable. A prefix not
// watched is a no-op.
func (b *Backend) RemovePrefix(prefix string) (norm string, dropped []string, err error) {
	p, err := checkPrefix(prefix)
	if err != nil {
		return "", nil, err
	}
	w := b.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.set.prefixes[p] {
		return p, nil, nil
	}
	delete(w.set.prefixes, p)
	for t := range w.set.found {
		if w.set.covers(t) {
			continue
		}
		delete(w.set.found, t)
		if !w.set.named[t] {
			dropped = append(dropped, t)
		}
	}
	sort.Strings(dropped)
	return p, dropped, nil
}

// AddFoundTable records a table the backend found in the store: if a watched
// prefix covers it, it is watched, and AddFoundTable reports whether it was
// not watched before (the backend then starts syncing it).
func (b *Backend) AddFoundTable(table string) bool {
	if checkTable(table) != nil {
		return false
	}
	w := b.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.set.covers(table) {
		return false
	}
	was := w.set.watched(table)
	w.set.found[table] = true
	return !was
}

// ForgetFoundTable undoes AddFoundTable for a table that is gone from the
// store (collected): it reports whether the table is no longer watched at all
// (it was not watched by name), so that the backend stops syncing it and
// calls DropTable.
func (b *Backend) ForgetFoundTable(table string) bool {
	w := b.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.set.found[table] {
		return false
	}
	delete(w.set.found, table)
	return !w.set.named[table]
}

// Covers reports whether a watched prefix covers table.
func (b *Backend) Covers(table string) bool {
	b.w.mu.Lock()
	defer b.w.mu.Unlock()
	return b.w.set.covers(table)
}

// Watched reports whether table is watched now, by name or by a prefix.
func (b *Backend) Watched(table string) bool {
	b.w.mu.Lock()
	defer b.w.mu.Unlock()
	return b.w.set.watched(table)
}

// Prefixes returns the watched prefixes, sorted.
func (b *Backend) Prefixes() []string { return b.w.Prefixes() }

// DropTable forgets the view of a table that is no longer watched: OnRemove is
// queued for each of its peers, and Services and Lookup stop reporting it.
func (b *Backend) DropTable(table string) { b.w.reg.drop(table) }

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

// SetSelfWriter gives the core the backend's way to store self, for the
// core's SetDesc, SetMeta, SetState and Drain; a backend calls it once, in
// its constructor. write takes the backend's lock of self's record (the one
// its registration and heartbeat writes take), calls apply, which checks and
// applies the change to self and returns how to undo it, and then, unless
// apply failed or the backend has not registered yet (Start registers self as
// it is then), writes self's record; if that write fails it calls undo and
// returns the error (ErrStopped after Stop). stop is the backend's Stop, which
// Drain calls.
func (b *Backend) SetSelfWriter(write func(ctx context.Context, apply func() (undo func(), err error)) error, stop func(ctx context.Context) error) {
	b.w.mu.Lock()
	defer b.w.mu.Unlock()
	b.w.store = selfHooks{write: write, stop: stop}
}

// SetRegistration records self's current incarnation and the (server) time it
// registered; a backend calls it as it registers. Self reports them.
func (b *Backend) SetRegistration(incarnation string, at time.Time) {
	b.w.setSelf(func(s *Instance) { s.Incarnation, s.RegisteredAt = incarnation, at })
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
