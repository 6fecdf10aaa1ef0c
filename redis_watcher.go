package svcwatch

// redis_watcher.go: RedisServiceWatcher, the Watcher on Redis: its type, its
// constructor and the calls a user makes (Start, Stop, Watch, SetDesc). They run
// on the caller's goroutine. The goroutines Start leaves running are in
// redis_heartbeat.go (the heartbeat) and redis_sync.go (the sync loop); the
// event goroutine is the core's (dispatch.go). Redis call plumbing is in
// redis_call.go.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch/protocol"
)

// RedisServiceWatcher is the Watcher on Redis. It embeds the backend-free core
// (ServiceWatcher), whose read API and Set methods it shares, and adds four
// goroutines while started: the heartbeat (one script call every keepalive
// interval, which also reaps expired peers), the sync loop (the pub/sub
// subscription, the safety-net scan and reloads), the catalog goroutine (new
// tables under the watched prefixes, and the collection of emptied tables)
// and the event goroutine that calls the handlers. Stop ends all four.
type RedisServiceWatcher struct {
	*ServiceWatcher
	b      *Backend // the hooks into the core, this backend's alone
	conf   Config
	log    *slog.Logger
	client redis.UniversalClient

	mu     sync.Mutex // guards state, run, syncs, catRev and every tableSync's mutable fields
	state  watcherState
	run    *running
	syncs  map[string]*tableSync
	cat    protocol.CatalogKeys
	catRev int64 // the catalog revision last read or announced

	// subMu orders SUBSCRIBE and UNSUBSCRIBE of a table's channel, so that an
	// Unwatch racing a Watch of the same table cannot leave it unsubscribed.
	subMu sync.Mutex

	// regLock (capacity 1) serialises the calls that write self: register,
	// update and deregister, so that a deregister can never be overtaken by a
	// register in flight. A channel, so that waiting for it honours a context.
	regLock chan struct{}
	recVer  string // the version of self's record written last; guarded by regLock

	downLogged atomic.Bool // a "does not answer" was logged and not yet taken back
	// slotsRefreshed: when the Cluster slot map was last reloaded (unix ns).
	slotsRefreshed atomic.Int64
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
	// for their callers, so that a Start retrying a stalled Redis lets go at once.
	attempt       context.Context
	attemptCancel context.CancelFunc
	pubsub        *redis.PubSub      // under RedisServiceWatcher.mu: the sync loop replaces a stalled one
	msgs          <-chan interface{} // pubsub's; read by the sync loop only
	syncDone      chan struct{}
	drains        sync.WaitGroup // goroutines that read out replaced subscriptions
	replaced      atomic.Int32   // subscriptions replaced, so drains may be pending

	hbCancel  context.CancelFunc
	hbCtx     context.Context
	hbStarted bool // under RedisServiceWatcher.mu
	hbDone    chan struct{}

	// The catalog goroutine (redis_catalog.go) and what it is asked to do;
	// the bools and catOps are under RedisServiceWatcher.mu.
	catDone          chan struct{}
	catKick          chan struct{} // capacity 1
	catConfirmed     chan struct{} // closed at the catalog channel's first confirmation
	catConfirmedOnce bool
	catSubscribed    bool
	catOps           []catalogOp
	catFull          bool // a full read of the catalog is due

	stopOnce sync.Once
	stopErr  error
}

// NewRedisServiceWatcher builds a watcher for self on client. It checks every
// argument (each bad one is an error wrapping ErrInvalid; all of them are
// reported at once) and touches no network; Start registers self and loads the
// watched tables.
//
// client may be a *redis.Client, a Sentinel *redis.Client (redis.NewFailoverClient)
// or a *redis.ClusterClient; *redis.Ring is refused. For contexts to bound every
// call, set ContextTimeoutEnabled in the client's options; otherwise a call to an
// unresponsive Redis lasts until the client's ReadTimeout.
func NewRedisServiceWatcher(client redis.UniversalClient, self Instance, opts ...Option) (*RedisServiceWatcher, error) {
	clientErr := checkClient(client)
	core, b, err := NewServiceWatcher(self, opts...)
	if err = errors.Join(clientErr, err); err != nil {
		return nil, err
	}
	conf := b.Config()
	w := &RedisServiceWatcher{ServiceWatcher: core, b: b, conf: conf, log: conf.Logger, client: client,
		syncs: make(map[string]*tableSync), cat: protocol.Catalog(conf.KeyPrefix), regLock: make(chan struct{}, 1)}
	b.SetSelfWriter(w.writeSelf, w.Stop)
	return w, nil
}

var _ Watcher = (*RedisServiceWatcher)(nil)

// Start subscribes to every watched table, registers self (unless watch-only)
// and adds its table to the catalog, loads each table (and the tables under
// the watched prefixes) and starts the heartbeat. It returns nil once OnAdd has been
// delivered for every peer already present. While Redis does not answer it keeps
// trying until ctx ends. If it fails (ctx ended, or ErrDuplicateID), it
// deregisters what it registered and stops the watcher: build a new one to retry.
// Start on a started watcher is an error wrapping ErrInvalid; after Stop it
// returns ErrStopped.
func (w *RedisServiceWatcher) Start(ctx context.Context) error {
	w.mu.Lock()
	switch w.state {
	case stateStopped:
		w.mu.Unlock()
		return ErrStopped
	case stateStarting, stateRunning:
		w.mu.Unlock()
		return fmt.Errorf("%w: Start called twice", ErrInvalid)
	}
	w.state = stateStarting
	run := &running{syncDone: make(chan struct{}), hbDone: make(chan struct{}), catDone: make(chan struct{}),
		catKick: make(chan struct{}, 1), catConfirmed: make(chan struct{})}
	run.ctx, run.cancel = context.WithCancel(context.Background())
	run.attempt, run.attemptCancel = context.WithCancel(run.ctx)
	run.hbCtx, run.hbCancel = context.WithCancel(run.ctx)
	// Made before w.run is visible, so that a concurrent Stop finds it whole;
	// the PubSub connects in the background.
	run.pubsub, run.msgs = w.newPubSub(run)
	w.run = run
	var syncs []*tableSync
	for _, t := range w.Tables() {
		syncs = append(syncs, w.syncFor(t))
	}
	w.mu.Unlock()

	w.b.StartEvents()
	go w.syncLoop(run, w.newSyncTimers())
	go w.catalogLoop(run, w.b.NewTimer(w.gcDelay()))

	err := w.start(ctx, run, syncs)
	if err == nil {
		w.mu.Lock()
		if w.state == stateStarting {
			w.state = stateRunning
		} else {
			err = ErrStopped // Stop ran meanwhile
		}
		w.mu.Unlock()
	}
	if err != nil {
		w.mu.Lock()
		if w.state == stateStopped {
			err = ErrStopped // Stop ran meanwhile and ended the attempt
		}
		w.state = stateStopped
		w.mu.Unlock()
		// ctx may be over; deregistering still deserves a bounded try.
		sctx, cancel := context.WithTimeout(context.Background(), 2*w.conf.KeepAlive)
		defer cancel()
		w.shutdown(sctx, run)
		_ = w.b.StopEvents(sctx)
		return err
	}
	return nil
}

func (w *RedisServiceWatcher) start(ctx context.Context, run *running, syncs []*tableSync) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(run.attempt, cancel)()

	if err := w.subscribe(ctx, run, syncs); err != nil {
		return err
	}
	if !w.conf.WatchOnly {
		w.b.SetRegistration(newToken(), time.Time{})
		if err := w.b.Retry(ctx, "register", w.register); err != nil {
			return err
		}
	}
	for _, ts := range syncs {
		if err := w.loadUntilDone(ctx, ts); err != nil {
			return err
		}
	}
	if len(w.b.Prefixes()) > 0 {
		if err := w.discover(ctx, run); err != nil {
			return err
		}
	}
	if !w.conf.WatchOnly {
		w.mu.Lock()
		if w.state == stateStopped {
			w.mu.Unlock()
			return ErrStopped
		}
		run.hbStarted = true
		w.mu.Unlock()
		// The schedule starts now, not whenever the goroutine first runs.
		go w.heartbeatLoop(run, w.b.NewTimer(w.conf.KeepAlive))
	}
	return w.b.Flush(ctx)
}

// Watch adds a table to watch. Before Start it only records the table. After
// Start it subscribes, loads the table and returns once OnAdd has been delivered
// for its peers; called from a handler, it returns after the load and the events
// follow when the handler returns. Watching a watched table waits for its load.
func (w *RedisServiceWatcher) Watch(ctx context.Context, table string) error {
	if err := checkTable(table); err != nil {
		return err
	}
	w.mu.Lock()
	if w.state == stateStopped {
		w.mu.Unlock()
		return ErrStopped
	}
	added := w.b.AddTable(table)
	run := w.run
	if run == nil {
		w.mu.Unlock()
		return nil
	}
	ts := w.syncFor(table)
	w.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(run.attempt, cancel)()
	if added {
		if err := w.subscribe(ctx, run, []*tableSync{ts}); err != nil {
			return w.stoppedOr(err)
		}
	} else {
		select {
		case <-ts.confirmed:
		case <-ctx.Done():
			return w.stoppedOr(ctx.Err())
		}
	}
	if err := w.loadUntilDone(ctx, ts); err != nil {
		return w.stoppedOr(err)
	}
	return w.stoppedOr(w.b.Flush(ctx))
}

// stoppedOr returns ErrStopped for a failure that Stop caused, else err.
func (w *RedisServiceWatcher) stoppedOr(err error) error {
	if err == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.state == stateStopped {
		return ErrStopped
	}
	return err
}

// Stop deregisters self, so that peers see OnRemove at once, and ends every
// goroutine of the watcher. With Redis down it returns when ctx ends (a call in
// flight, such as closing a connection still being dialed, may outlive it until
// the client's own timeout). A ctx that is already over (a signal handler's,
// often) still gets a short best effort of its own, bounded by the keepalive
// interval and 1s, so that peers need not wait a TTL. It is idempotent: later
// calls return nil. After it returns, no handler is called. A handler or the
// WithOnRegistrationLost callback may call it.
func (w *RedisServiceWatcher) Stop(ctx context.Context) error {
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
// then stops the subscription and the sync loop. Once. Every wait ends with ctx.
func (w *RedisServiceWatcher) shutdown(ctx context.Context, run *running) error {
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
		// go-redis's Close waits for a connect in progress, which a stalled
		// network can hold for the client's dial timeout: wait only until ctx ends.
		closeErr := make(chan error, 1)
		pubsub := w.currentPubSub(run)
		go func() { closeErr <- pubsub.Close() }()
		select {
		case err := <-closeErr:
			errs = append(errs, err)
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("svcwatch: closing the subscription: %w", ctx.Err()))
		}
		errs = append(errs, waitDone(ctx, run.syncDone, "sync loop"))
		errs = append(errs, waitDone(ctx, run.catDone, "catalog loop"))
		if run.replaced.Load() > 0 {
			drained := make(chan struct{})
			go func() { run.drains.Wait(); close(drained) }()
			errs = append(errs, waitDone(ctx, drained, "replaced subscriptions"))
		}
		run.stopErr = errors.Join(errs...)
	})
	return run.stopErr
}

// newPubSub makes a subscription that connects when it first subscribes.
func (w *RedisServiceWatcher) newPubSub(run *running) (*redis.PubSub, <-chan interface{}) {
	ps := w.client.Subscribe(run.ctx)
	return ps, ps.ChannelWithSubscriptions(redis.WithChannelSize(1024))
}

// currentPubSub returns the run's subscription.
func (w *RedisServiceWatcher) currentPubSub(run *running) *redis.PubSub {
	w.mu.Lock()
	defer w.mu.Unlock()
	return run.pubsub
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
		return fmt.Errorf("svcwatch: waiting for the %s to end: %w", what, ctx.Err())
	}
}
