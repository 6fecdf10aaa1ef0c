// Package etcd is svcwatch on etcd v3: the same Watcher (events, restart versus
// duplicate, Pick, Drain, prefixes) with etcd as the store, for studios that
// already run etcd (Pitaya clusters do).
//
// Each instance is one key, prefix/table/id (prefix from svcwatch.WithKeyPrefix,
// default "svcwatch"), holding the same JSON record as a Redis registration
// (protocol.Record), attached to a lease of this incarnation's own. The lease
// has the watcher's TTL rounded up to whole seconds (etcd's lease unit) and is
// renewed every keepalive interval, by one message on a long-lived
// LeaseKeepAlive stream; a process that
// dies stops renewing it, etcd deletes the key when it expires, and every
// watcher hears the delete. A clean Stop revokes the lease: peers hear at once.
//
// Registration is one transaction: a missing key is created; a key held by a
// live incarnation (in etcd, a key that exists: an expired lease has deleted
// it) with the same Name is a restart and is replaced (unless
// svcwatch.WithoutRestartReplace); with another Name, Start fails with
// svcwatch.ErrDuplicateID and the holder is untouched.
//
// Each watched table is read with one range read, and then watched from the
// revision of that read, so no change falls between them. A watch that etcd
// cancels, or that resumes after a disconnect at a revision already compacted,
// makes the watcher read the table again. A watched prefix is one range read
// and one watch of the prefix's whole range: a table that appears under it is
// found by its first put, with no scan and no catalog.
//
// # Goroutines
//
// A started EtcdServiceWatcher runs, each owned by the watcher and ended by
// Stop: the heartbeat (the health check, a lease renewal every keepalive
// interval, re-registration and standing down; a progress request on the watch
// stream every scan interval, which confirms the view for Stats.LastSync); one
// sync goroutine per watched table and per watched prefix (its range read and
// its watch); and the core's event goroutine, the only one that calls
// handlers. The clientv3.Client runs goroutines of its own; it is the
// caller's, and Stop does not close it.
package etcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/svcwatch/svcwatch"
)

// EtcdServiceWatcher is the svcwatch.Watcher on etcd. It embeds the
// backend-free core (svcwatch.ServiceWatcher), whose read API it shares.
type EtcdServiceWatcher struct {
	*svcwatch.ServiceWatcher
	b      *svcwatch.Backend
	conf   svcwatch.Config
	log    *slog.Logger
	cli    *clientv3.Client
	keys   layout
	ttlSec int64 // the lease's TTL: conf.TTL rounded up to whole seconds

	mu       sync.Mutex // guards state, run, named, prefixes, views and every source's found
	state    watcherState
	run      *running
	named    map[string]*source // one per table watched by name
	prefixes map[string]*source // one per watched prefix
	views    map[string]*view   // one per table some source syncs

	// regLock (capacity 1) serialises the calls that write self (register,
	// update, deregister), so that a deregister is never overtaken by a write
	// in flight. A channel, so that waiting for it honours a context.
	regLock chan struct{}
	reg     registration // guarded by regLock

	downLogged atomic.Bool // "does not answer" was logged and not yet taken back
}

// registration is what this incarnation holds in etcd. Guarded by regLock.
type registration struct {
	lease  clientv3.LeaseID // 0: none granted (or it was lost)
	modRev int64            // revision of this process's latest write of its key
	ver    string           // version token of the record written last
	lost   error            // set when this incarnation stood down: writes fail with it
}

type watcherState int

const (
	stateNew watcherState = iota
	stateStarting
	stateRunning
	stateStopped
)

// running holds what one Start made; Stop tears it down.
type running struct {
	ctx    context.Context // ends at Stop, once self is deregistered: ends the sources
	cancel context.CancelFunc
	// attempt ends as soon as Stop begins: it bounds Start, Watch and
	// WatchPrefix for their callers.
	attempt       context.Context
	attemptCancel context.CancelFunc
	hbCtx         context.Context
	hbCancel      context.CancelFunc
	hbDone        chan struct{}
	hbStarted     bool          // under EtcdServiceWatcher.mu
	check         chan struct{} // capacity 1: the sync saw self's key change; the heartbeat looks at it

	stopOnce sync.Once
	stopErr  error
}

// NewEtcdServiceWatcher builds a watcher for self on cli. It checks every
// argument (each bad one is an error wrapping svcwatch.ErrInvalid; all are
// reported at once) and touches no network; Start registers self and loads
// the watched tables. It takes the options of every backend; the TTL is
// rounded up to whole seconds for the lease (etcd's unit), and etcd refuses a
// TTL shorter than its own minimum (1.5 election timeouts; 2s at etcd's
// defaults), raising it to that. The client is the caller's: set its
// DialKeepAliveTime and DialKeepAliveTimeout so that a connection cut
// silently is noticed and replaced.
func NewEtcdServiceWatcher(cli *clientv3.Client, self svcwatch.Instance, opts ...svcwatch.Option) (*EtcdServiceWatcher, error) {
	var cliErr error
	if cli == nil {
		cliErr = fmt.Errorf("%w: nil etcd client", svcwatch.ErrInvalid)
	}
	core, b, err := svcwatch.NewServiceWatcher(self, opts...)
	if err = errors.Join(cliErr, err); err != nil {
		return nil, err
	}
	conf := b.Config()
	ttlSec := int64((conf.TTL + time.Second - 1) / time.Second)
	w := &EtcdServiceWatcher{
		ServiceWatcher: core, b: b, conf: conf, log: conf.Logger, cli: cli,
		keys: layout{prefix: conf.KeyPrefix}, ttlSec: ttlSec,
		named: make(map[string]*source), prefixes: make(map[string]*source), views: make(map[string]*view),
		regLock: make(chan struct{}, 1),
	}
	b.SetSelfWriter(w.writeSelf, w.Stop)
	return w, nil
}

var _ svcwatch.Watcher = (*EtcdServiceWatcher)(nil)

// Start registers self (unless watch-only), reads and watches every watched
// table and prefix, and starts the heartbeat. It returns nil once OnAdd has
// been delivered for every peer already present. While etcd does not answer
// it keeps trying until ctx ends. If it fails (ctx ended, or
// svcwatch.ErrDuplicateID), it deregisters what it registered and stops the
// watcher: build a new one to retry. Start on a started watcher is an error
// wrapping svcwatch.ErrInvalid; after Stop it returns svcwatch.ErrStopped.
func (w *EtcdServiceWatcher) Start(ctx context.Context) error {
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
	run := &running{hbDone: make(chan struct{}), check: make(chan struct{}, 1)}
	run.ctx, run.cancel = context.WithCancel(context.Background())
	run.attempt, run.attemptCancel = context.WithCancel(run.ctx)
	run.hbCtx, run.hbCancel = context.WithCancel(run.ctx)
	w.run = run
	w.mu.Unlock()

	w.b.StartEvents()
	err := w.start(ctx, run)
	if err == nil {
		w.mu.Lock()
		if w.state == stateStarting {
			w.state = stateRunning
		} else {
			err = svcwatch.ErrStopped // Stop ran meanwhile
		}
		w.mu.Unlock()
	}
	if err != nil {
		w.mu.Lock()
		if w.state == stateStopped {
			err = svcwatch.ErrStopped
		}
		w.state = stateStopped
		w.mu.Unlock()
		// ctx may be over; deregistering still deserves a bounded try.
		sctx, cancel := context.WithTimeout(context.Background(), 2*w.conf.KeepAlive)
		defer cancel()
		_ = w.shutdown(sctx, run)
		_ = w.b.StopEvents(sctx)
		return err
	}
	return nil
}

func (w *EtcdServiceWatcher) start(ctx context.Context, run *running) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(run.attempt, cancel)()

	if !w.conf.WatchOnly {
		w.b.SetRegistration(w.b.NewToken(), time.Time{})
		err := w.b.Retry(ctx, "register", func(ctx context.Context) error { return w.register(ctx, true) })
		if err != nil {
			return err
		}
	}
	w.mu.Lock()
	var srcs []*source
	for _, t := range w.Tables() { // before any prefix source runs: the named ones
		srcs = append(srcs, w.namedSource(run, t))
	}
	for _, p := range w.Prefixes() {
		srcs = append(srcs, w.prefixSource(run, p))
	}
	w.mu.Unlock()
	for _, s := range srcs {
		if err := s.waitLoaded(ctx); err != nil {
			return err
		}
	}
	w.mu.Lock()
	if w.state == stateStopped {
		w.mu.Unlock()
		return svcwatch.ErrStopped
	}
	run.hbStarted = true
	w.mu.Unlock()
	// The schedule starts now, not whenever the goroutine first runs.
	go w.heartbeatLoop(run, w.b.NewTimer(w.conf.KeepAlive))
	return w.b.Flush(ctx)
}

// Watch adds a table to watch. Before Start it only records the table. After
// Start it reads and watches the table and returns once OnAdd has been
// delivered for its peers; called from a handler, it returns after the read
// and the events follow when the handler returns. Watching a watched table
// waits for its first read.
func (w *EtcdServiceWatcher) Watch(ctx context.Context, table string) error {
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
	if run == nil {
		w.mu.Unlock()
		return nil
	}
	s := w.namedSource(run, table)
	w.mu.Unlock()
	return w.waitSource(ctx, run, s)
}

// waitSource waits for a source's first read, then for the events it queued.
func (w *EtcdServiceWatcher) waitSource(ctx context.Context, run *running, s *source) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(run.attempt, cancel)()
	if err := s.waitLoaded(ctx); err != nil {
		return w.stoppedOr(err)
	}
	return w.stoppedOr(w.b.Flush(ctx))
}

// stoppedOr returns svcwatch.ErrStopped for a failure that Stop caused, else err.
func (w *EtcdServiceWatcher) stoppedOr(err error) error {
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

// Stop revokes this incarnation's lease, so that peers see OnRemove at once,
// and ends every goroutine of the watcher. With etcd unreachable it returns
// when ctx ends (peers then see the key expire a TTL later). A ctx that is
// already over still gets a short best effort of its own, bounded by the
// keepalive interval and 1s. It is idempotent: later calls return nil. After
// it returns, no handler is called. A handler may call it.
func (w *EtcdServiceWatcher) Stop(ctx context.Context) error {
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

// shutdown ends a Start or Watch in progress and the heartbeat, deregisters,
// then ends every source. Once. Every wait ends with ctx.
func (w *EtcdServiceWatcher) shutdown(ctx context.Context, run *running) error {
	run.stopOnce.Do(func() {
		w.mu.Lock()
		hbStarted := run.hbStarted
		w.mu.Unlock()
		run.attemptCancel() // a register in flight lets go of regLock
		run.hbCancel()
		var errs []error
		if hbStarted {
			// The heartbeat goes first, so it cannot register again behind us.
			errs = append(errs, waitDone(ctx, run.hbDone, "heartbeat"))
		}
		if !w.conf.WatchOnly {
			errs = append(errs, w.deregister(ctx))
		}
		run.cancel()
		errs = append(errs, w.waitSources(ctx))
		run.stopErr = errors.Join(errs...)
	})
	return run.stopErr
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
		return fmt.Errorf("svcwatch/etcd: waiting for the %s to end: %w", what, ctx.Err())
	}
}
