// Package mysql is svcwatch on MySQL 8 or MariaDB 10.6+: a svcwatch.Watcher
// for studios whose only shared store is the database they already run.
//
// NewMySQLServiceWatcher takes a *sql.DB (github.com/go-sql-driver/mysql) and
// the same Instance and options as the Redis watcher; it creates its three
// tables if they are missing (named after WithKeyPrefix: svcwatch_instances,
// svcwatch_revisions, svcwatch_guard). Events, Pick, SetDesc, SetMeta,
// SetState, Drain and Stats behave as on Redis, from the same core.
//
// There is no push. A process learns of a change at its next scan: every
// scan interval (WithScanInterval, default 4 s) it reads one revision row per
// watched table in one query, and reads a table again only when its revision
// moved. So a change reaches peers within one scan interval (half of it on
// average), a clean Stop included; a killed process is removed within its
// TTL plus one scan interval. Deadlines are kept by the database's clock.
// Expired instances are reaped by whichever process's scan finds them, a few
// at a time, each reap bumping the table's revision like any change.
//
// # Goroutines
//
// A started watcher runs three goroutines, each ended by Stop: the heartbeat
// (one UPDATE per keepalive interval), the scan loop (the scan, reaping,
// prefix discovery, periodic full reads) and the core's event goroutine that
// calls the handlers. database/sql's pool belongs to the caller: Stop does not
// close the *sql.DB.
package mysql

// watcher.go: MySQLServiceWatcher, its constructor, Start, Stop and Watch.
// They run on the caller's goroutine; the loops Start leaves running are in
// heartbeat.go and scan.go.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/svcwatch/svcwatch"
)

// MySQLServiceWatcher is the svcwatch.Watcher on MySQL or MariaDB. It embeds
// the backend-free core (svcwatch.ServiceWatcher), whose read API it shares
// (Self, Services, Lookup, Pick, PickN, Tables, Stats).
type MySQLServiceWatcher struct {
	*svcwatch.ServiceWatcher
	b    *svcwatch.Backend // the hooks into the core, this backend's alone
	conf svcwatch.Config
	log  *slog.Logger
	db   *sql.DB
	q    queries

	mu    sync.Mutex // guards state and run
	state watcherState
	run   *running

	// regLock (capacity 1) serialises the writes of self: register, update,
	// deregister. A channel, so that waiting for it honours a context.
	regLock chan struct{}
	recVer  string // the version of self's record written last; guarded by regLock

	// loadMu serialises reading a table and applying it to the view, so that
	// an older read is never applied over a newer one; it guards pos.
	loadMu sync.Mutex
	pos    map[string]position

	downLogged atomic.Bool // "does not answer" was logged and not yet taken back
}

// position is where a table's view stands: the revision row it was read at.
// The zero position is a table with no revision row (never written, or
// collected).
type position struct {
	epoch string
	rev   int64
}

type watcherState int

const (
	stateNew watcherState = iota
	stateStarting
	stateRunning
	stateStopped
)

// running holds what one Start created; Stop tears it down.
type running struct {
	ctx    context.Context // ends at Stop, once self is deregistered
	cancel context.CancelFunc
	// attempt ends as soon as Stop begins: it bounds what Start and Watch do
	// for their callers.
	attempt       context.Context
	attemptCancel context.CancelFunc
	hbCtx         context.Context
	hbCancel      context.CancelFunc

	hbStarted, scanStarted bool // under MySQLServiceWatcher.mu
	hbDone, scanDone       chan struct{}
	crashed                bool // tests: end without deregistering

	stopOnce sync.Once
	stopErr  error
}

// NewMySQLServiceWatcher builds a watcher for self on db, a pool opened with
// the github.com/go-sql-driver/mysql driver on MySQL 8 or MariaDB 10.6+. It
// takes every option of svcwatch; WithKeyPrefix names its tables (prefix_instances,
// prefix_revisions, prefix_guard), so here it must be a plain identifier
// of up to 48 letters, digits or '_'. Every bad argument is an error wrapping
// svcwatch.ErrInvalid, all reported at once. It touches no network; Start
// creates the tables if missing, registers self and loads the watched tables.
//
// Set interpolateParams=true in the DSN: each statement is then one round
// trip instead of a prepare, an execute and a close.
func NewMySQLServiceWatcher(db *sql.DB, self svcwatch.Instance, opts ...svcwatch.Option) (*MySQLServiceWatcher, error) {
	var dbErr error
	if db == nil {
		dbErr = fmt.Errorf("%w: nil *sql.DB", svcwatch.ErrInvalid)
	}
	core, b, err := svcwatch.NewServiceWatcher(self, opts...)
	if err = errors.Join(dbErr, err); err != nil {
		return nil, err
	}
	conf := b.Config()
	if err := checkPrefix(conf.KeyPrefix); err != nil {
		return nil, err
	}
	w := &MySQLServiceWatcher{
		ServiceWatcher: core, b: b, conf: conf, log: conf.Logger, db: db, q: newQueries(conf.KeyPrefix),
		regLock: make(chan struct{}, 1), pos: make(map[string]position),
	}
	b.SetSelfWriter(w.writeSelf, w.Stop)
	return w, nil
}

var _ svcwatch.Watcher = (*MySQLServiceWatcher)(nil)

// Start creates the tables if missing, registers self (unless watch-only),
// loads every watched table and starts the heartbeat and the scan. It returns
// nil once OnAdd has been delivered for every peer already present. While the
// database does not answer it keeps trying until ctx ends. If it fails (ctx
// ended, or svcwatch.ErrDuplicateID), it deregisters what it registered and
// stops the watcher: build a new one to retry. Start on a started watcher is
// an error wrapping svcwatch.ErrInvalid; after Stop it returns svcwatch.ErrStopped.
func (w *MySQLServiceWatcher) Start(ctx context.Context) error {
	w.mu.Lock()
	switch w.state {
	case stateStopped:
		w.mu.Unlock()
		return svcwatch.ErrStopped
	case stateStarting, stateRunning:
		w.mu.Unlock()
		return fmt.Errorf("%w: Start called twice", svcwatch.ErrInvalid)
	}
	w.state = stateStarting
	run := &running{hbDone: make(chan struct{}), scanDone: make(chan struct{})}
	run.ctx, run.cancel = context.WithCancel(context.Background())
	run.attempt, run.attemptCancel = context.WithCancel(run.ctx)
	run.hbCtx, run.hbCancel = context.WithCancel(run.ctx)
	w.run = run
	w.mu.Unlock()

	w.b.StartEvents()
	err := w.start(ctx, run)
	w.mu.Lock()
	switch {
	case err == nil && w.state == stateStarting:
		w.state = stateRunning
	case w.state == stateStopped:
		err = svcwatch.ErrStopped // Stop ran meanwhile and ended the attempt
	}
	if err != nil {
		w.state = stateStopped
	}
	w.mu.Unlock()
	if err != nil {
		// ctx may be over; deregistering still deserves a bounded try.
		sctx, cancel := context.WithTimeout(context.Background(), 2*w.conf.KeepAlive)
		defer cancel()
		_ = w.shutdown(sctx, run)
		_ = w.b.StopEvents(sctx)
		return err
	}
	return nil
}

func (w *MySQLServiceWatcher) start(ctx context.Context, run *running) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(run.attempt, cancel)()

	if err := w.b.Retry(ctx, "create tables", w.ensureSchema); err != nil {
		return err
	}
	if !w.conf.WatchOnly {
		w.b.SetRegistration(w.b.NewToken(), time.Time{})
		if err := w.b.Retry(ctx, "register", w.register); err != nil {
			return err
		}
	}
	for _, table := range w.Tables() {
		if err := w.b.Retry(ctx, "load "+table, func(ctx context.Context) error { return w.load(ctx, table) }); err != nil {
			return err
		}
	}
	if err := w.b.Retry(ctx, "discover tables", w.discoverPrefixes); err != nil {
		return err
	}
	w.mu.Lock()
	if w.state == stateStopped {
		w.mu.Unlock()
		return svcwatch.ErrStopped
	}
	run.scanStarted = true
	run.hbStarted = !w.conf.WatchOnly
	w.mu.Unlock()
	// Schedules start now, not whenever the goroutines first run.
	go w.scanLoop(run, w.b.NewTimer(w.scanDelay(true)), w.b.NewTimer(w.resyncDelay()))
	if run.hbStarted {
		go w.heartbeatLoop(run, w.b.NewTimer(w.conf.KeepAlive))
	}
	return w.b.Flush(ctx)
}

// Watch adds a table to watch. Before Start it only records the table. After
// Start it loads the table and returns once OnAdd has been delivered for its
// peers; called from a handler, it returns after the load and the events
// follow when the handler returns. The table's later changes arrive with the
// scan, within one scan interval.
func (w *MySQLServiceWatcher) Watch(ctx context.Context, table string) error {
	if err := w.b.CheckTable(table); err != nil {
		return err
	}
	w.mu.Lock()
	if w.state == stateStopped {
		w.mu.Unlock()
		return svcwatch.ErrStopped
	}
	w.b.AddTable(table)
	run := w.run
	w.mu.Unlock()
	if run == nil {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(run.attempt, cancel)()
	if err := w.b.Retry(ctx, "load "+table, func(ctx context.Context) error { return w.loadOnce(ctx, table) }); err != nil {
		return w.stoppedOr(err)
	}
	return w.stoppedOr(w.b.Flush(ctx))
}

// stoppedOr returns ErrStopped for a failure that Stop caused, else err.
func (w *MySQLServiceWatcher) stoppedOr(err error) error {
	if err == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.state == stateStopped {
		return svcwatch.ErrStopped
	}
	return err
}

// Stop deregisters self, so that peers see OnRemove at their next scan
// instead of after the TTL, and ends every goroutine of the watcher. With the
// database down it returns when ctx ends. A ctx that is already over still
// gets a short best effort of its own (the keepalive interval, at most 1 s).
// It is idempotent: later calls return nil. After it returns, no handler is
// called. A handler may call it. It does not close the *sql.DB.
func (w *MySQLServiceWatcher) Stop(ctx context.Context) error {
	w.mu.Lock()
	if w.state == stateStopped {
		w.mu.Unlock()
		return nil
	}
	w.state = stateStopped
	run := w.run
	w.mu.Unlock()
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), min(w.conf.KeepAlive, time.Second))
		defer cancel()
	}
	var err error
	if run != nil {
		err = w.shutdown(ctx, run)
	}
	return errors.Join(err, w.b.StopEvents(ctx))
}

// shutdown ends a Start or Watch in progress and the heartbeat, deregisters
// (unless crashed), then ends the scan loop. Once. Every wait ends with ctx.
func (w *MySQLServiceWatcher) shutdown(ctx context.Context, run *running) error {
	run.stopOnce.Do(func() {
		w.mu.Lock()
		hbStarted, scanStarted, crashed := run.hbStarted, run.scanStarted, run.crashed
		w.mu.Unlock()
		run.attemptCancel()
		run.hbCancel()
		var errs []error
		if hbStarted {
			// The heartbeat goes first, so it cannot register again behind us.
			errs = append(errs, waitDone(ctx, run.hbDone, "heartbeat"))
		}
		if !w.conf.WatchOnly && !crashed {
			errs = append(errs, w.deregister(ctx))
		}
		run.cancel()
		if scanStarted {
			errs = append(errs, waitDone(ctx, run.scanDone, "scan loop"))
		}
		run.stopErr = errors.Join(errs...)
	})
	return run.stopErr
}

// crash ends the watcher as a killed process would: no deregistration, so
// its record stays until its deadline passes. Tests use it.
func (w *MySQLServiceWatcher) crash(ctx context.Context) error {
	w.mu.Lock()
	if w.run != nil {
		w.run.crashed = true
	}
	w.mu.Unlock()
	return w.Stop(ctx)
}

func waitDone(ctx context.Context, done <-chan struct{}, what string) error {
	select {
	case <-done:
		return nil
	default:
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("svcwatch/mysql: waiting for the %s to end: %w", what, ctx.Err())
	}
}
