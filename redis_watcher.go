package svcwatch

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	mrand "math/rand"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch/internal/scripts"
)

// reapLimit bounds the expired entries one script call removes, so that a call
// stays short however many processes died at once.
const reapLimit = 16

var (
	scriptRegister   = redis.NewScript(scripts.Register)
	scriptHeartbeat  = redis.NewScript(scripts.Heartbeat)
	scriptUpdate     = redis.NewScript(scripts.Update)
	scriptDeregister = redis.NewScript(scripts.Deregister)
	scriptCheck      = redis.NewScript(scripts.Check)
	scriptLoad       = redis.NewScript(scripts.Load)
)

// RedisServiceWatcher is the Watcher on Redis. It embeds the backend-free core
// (ServiceWatcher) and adds three goroutines while started: the heartbeat (one
// script call every keepalive interval, which also reaps expired peers), the sync
// loop (the pub/sub subscription, the safety-net scan and reloads) and the event
// goroutine that calls the handlers. Stop ends all three.
type RedisServiceWatcher struct {
	*ServiceWatcher
	client redis.UniversalClient

	mu    sync.Mutex // guards state, run and syncs
	state watcherState
	run   *running
	syncs map[string]*tableSync

	// regLock (capacity 1) serialises the calls that write self: register,
	// update and deregister, so that a deregister can never be overtaken by a
	// register in flight. A channel, so that waiting for it honours a context.
	regLock chan struct{}

	connected  atomic.Bool
	downLogged atomic.Bool // a "does not answer" was logged and not yet taken back
	// slotsRefreshed: when the Cluster slot map was last reloaded (unix ns).
	slotsRefreshed atomic.Int64
	registered     atomic.Bool
	heartbeats     atomic.Uint64
	rereg          atomic.Uint64
	badSeen        sync.Map // fingerprints of unreadable data already logged
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
	ctx      context.Context // ends at Stop
	cancel   context.CancelFunc
	pubsub   *redis.PubSub
	msgs     <-chan interface{}
	syncDone chan struct{}

	hbCancel  context.CancelFunc
	hbCtx     context.Context
	hbStarted bool // under RedisServiceWatcher.mu
	hbDone    chan struct{}

	stopOnce sync.Once
	stopErr  error
}

// tableSync is what the watcher knows of one table's position in Redis.
type tableSync struct {
	table     string
	keys      []string // inst, exp, rev, epoch, meta
	channel   string
	confirmed chan struct{} // closed at the first subscribe confirmation
	loadedCh  chan struct{} // closed at the first successful load

	subscribedOnce bool
	loaded         bool
	epoch          string
	rev            int64
	tok            string // token of the latest change applied: (epoch, rev, tok) is the position
	// history maps the latest revisions applied to their tokens, so that a
	// message or a read that names one of them with another token shows a
	// history rewritten under the same epoch; diverged records that until the
	// next read.
	history  map[int64]string
	diverged bool
	// holdExpiredUntil: after a new epoch, expiry removals are held back until then.
	holdExpiredUntil time.Time
	// reloadAt: when a pending reload is due (zero: none); it is skipped if the
	// view reaches (wantEpoch, wantRev, wantTok) first, and never when force is set.
	reloadAt  time.Time
	wantEpoch string
	wantRev   int64
	wantTok   string
	force     bool
}

// NewRedisServiceWatcher builds a watcher for self on client. It checks every
// argument (each bad one is an error wrapping ErrInvalid) and touches no network;
// Start registers self and loads the watched tables.
//
// client may be a *redis.Client, a Sentinel *redis.Client (redis.NewFailoverClient)
// or a *redis.ClusterClient; *redis.Ring is refused. For contexts to bound every
// call, set ContextTimeoutEnabled in the client's options; otherwise a call to an
// unresponsive Redis lasts until the client's ReadTimeout.
func NewRedisServiceWatcher(client redis.UniversalClient, self Instance, opts ...Option) (*RedisServiceWatcher, error) {
	if err := checkClient(client); err != nil {
		return nil, err
	}
	core, err := NewServiceWatcher(self, opts...)
	if err != nil {
		return nil, err
	}
	return &RedisServiceWatcher{ServiceWatcher: core, client: client, syncs: make(map[string]*tableSync),
		regLock: make(chan struct{}, 1)}, nil
}

var _ Watcher = (*RedisServiceWatcher)(nil)

// Start subscribes to every watched table, registers self (unless watch-only),
// loads each table and starts the heartbeat. It returns nil once OnAdd has been
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
	run := &running{syncDone: make(chan struct{}), hbDone: make(chan struct{})}
	run.ctx, run.cancel = context.WithCancel(context.Background())
	run.hbCtx, run.hbCancel = context.WithCancel(run.ctx)
	// Made before w.run is visible, so that a concurrent Stop finds it whole;
	// the PubSub connects in the background.
	run.pubsub = w.client.Subscribe(run.ctx)
	run.msgs = run.pubsub.ChannelWithSubscriptions(redis.WithChannelSize(1024))
	w.run = run
	var syncs []*tableSync
	for _, t := range w.Tables() {
		syncs = append(syncs, w.syncFor(t))
	}
	w.mu.Unlock()

	w.StartEvents()
	go w.syncLoop(run)

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
		sctx, cancel := context.WithTimeout(context.Background(), 2*w.cfg.keepAlive)
		defer cancel()
		w.shutdown(sctx, run)
		_ = w.StopEvents(sctx)
		return err
	}
	return nil
}

func (w *RedisServiceWatcher) start(ctx context.Context, run *running, syncs []*tableSync) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(run.ctx, cancel)()

	if err := w.subscribe(ctx, run, syncs); err != nil {
		return err
	}
	if !w.cfg.watchOnly {
		w.SetRegistration(newToken(), time.Time{})
		err := retry(ctx, "register", func(ctx context.Context) error { return w.register(ctx) })
		if err != nil {
			return err
		}
	}
	for _, ts := range syncs {
		if err := w.loadUntilDone(ctx, ts); err != nil {
			return err
		}
	}
	if !w.cfg.watchOnly {
		w.mu.Lock()
		if w.state == stateStopped {
			w.mu.Unlock()
			return ErrStopped
		}
		run.hbStarted = true
		w.mu.Unlock()
		go w.heartbeatLoop(run)
	}
	return w.Flush(ctx)
}

// subscribe asks for the tables' channels and waits for Redis to confirm them.
// A failed SUBSCRIBE is not fatal: the subscription keeps the channels and
// subscribes again when it reconnects.
func (w *RedisServiceWatcher) subscribe(ctx context.Context, run *running, syncs []*tableSync) error {
	channels := make([]string, len(syncs))
	for i, ts := range syncs {
		channels[i] = ts.channel
	}
	subErr := run.pubsub.Subscribe(ctx, channels...)
	for _, ts := range syncs {
		select {
		case <-ts.confirmed:
		case <-ctx.Done():
			if subErr != nil {
				return fmt.Errorf("svcwatch: subscribe to %s: %w (last error: %v)", ts.table, ctx.Err(), subErr)
			}
			return fmt.Errorf("svcwatch: subscribe to %s: %w", ts.table, ctx.Err())
		}
	}
	return nil
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
	added := w.addTable(table)
	run := w.run
	if run == nil {
		w.mu.Unlock()
		return nil
	}
	ts := w.syncFor(table)
	w.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(run.ctx, cancel)()
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
	return w.stoppedOr(w.Flush(ctx))
}

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

// syncFor returns the table's sync state, making it on first use. Caller holds mu.
func (w *RedisServiceWatcher) syncFor(table string) *tableSync {
	if ts := w.syncs[table]; ts != nil {
		return ts
	}
	base := w.cfg.prefix + ":{" + table + "}:"
	ts := &tableSync{
		table:     table,
		keys:      []string{base + "inst", base + "exp", base + "rev", base + "epoch", base + "meta"},
		channel:   base + "ch",
		confirmed: make(chan struct{}),
		loadedCh:  make(chan struct{}),
	}
	w.syncs[table] = ts
	return ts
}

// tableOfChannel inverts the channel name: prefix:{table}:ch.
func (w *RedisServiceWatcher) tableOfChannel(ch string) string {
	s := strings.TrimPrefix(ch, w.cfg.prefix+":{")
	return strings.TrimSuffix(s, "}:ch")
}

// Stop deregisters self, so that peers see OnRemove at once, and ends every
// goroutine of the watcher. With Redis down it returns when ctx ends (a call in
// flight may outlive it until the client's own timeout). It is idempotent: later
// calls return nil. After it returns, no handler is called.
func (w *RedisServiceWatcher) Stop(ctx context.Context) error {
	w.mu.Lock()
	if w.state == stateStopped {
		w.mu.Unlock()
		return nil
	}
	w.state = stateStopped
	run := w.run
	w.mu.Unlock()
	var err error
	if run != nil {
		err = w.shutdown(ctx, run)
	}
	return errors.Join(err, w.StopEvents(ctx))
}

// shutdown stops the heartbeat, deregisters, then stops the sync loop. Once.
func (w *RedisServiceWatcher) shutdown(ctx context.Context, run *running) error {
	run.stopOnce.Do(func() {
		w.mu.Lock()
		hbStarted := run.hbStarted
		w.mu.Unlock()
		run.hbCancel()
		var errs []error
		if hbStarted {
			// The heartbeat goes first, so it cannot register again behind us.
			errs = append(errs, waitDone(ctx, run.hbDone, "heartbeat"))
		}
		if !w.cfg.watchOnly {
			errs = append(errs, w.deregister(ctx))
		}
		run.cancel()
		errs = append(errs, run.pubsub.Close())
		errs = append(errs, waitDone(ctx, run.syncDone, "sync loop"))
		run.stopErr = errors.Join(errs...)
	})
	return run.stopErr
}

func waitDone(ctx context.Context, done <-chan struct{}, what string) error {
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("svcwatch: waiting for the %s to end: %w", what, ctx.Err())
	}
}

// SetDesc changes this process's Desc; peers get OnUpdate. Before Start it only
// sets the Desc that Start registers. It is an error wrapping ErrInvalid on a
// watch-only watcher or for a Desc over the size limit, and ErrReplaced when a
// newer incarnation holds the ID.
func (w *RedisServiceWatcher) SetDesc(ctx context.Context, desc string) error {
	if w.cfg.watchOnly {
		return fmt.Errorf("%w: SetDesc on a watch-only watcher", ErrInvalid)
	}
	if err := checkDesc(desc, w.cfg.maxDesc); err != nil {
		return err
	}
	w.mu.Lock()
	state := w.state
	w.mu.Unlock()
	switch state {
	case stateStopped:
		return ErrStopped
	case stateNew:
		w.SetSelfDesc(desc)
		return nil
	}
	if err := w.lockReg(ctx); err != nil {
		return err
	}
	defer w.unlockReg()
	prev := w.Self().Desc
	w.SetSelfDesc(desc)
	self := w.Self()
	res, err := w.eval(ctx, scriptUpdate, w.selfSync(), self.ID, self.Incarnation, self.Name, desc, w.cfg.ttl.Milliseconds()).Text()
	if err == nil && res == "missing" {
		err = w.registerLocked(ctx)
	} else if err == nil && res == "replaced" {
		err = fmt.Errorf("%w: %s", ErrReplaced, self.Key())
	}
	if err != nil {
		w.SetSelfDesc(prev)
		return w.stoppedOr(fmt.Errorf("svcwatch: set desc: %w", err))
	}
	return nil
}

// Stats returns counters and health. Connected reflects the latest round trip of
// any of the watcher's calls.
func (w *RedisServiceWatcher) Stats() Stats {
	s := w.ServiceWatcher.Stats()
	s.Connected = w.connected.Load()
	s.Registered = w.registered.Load()
	s.Heartbeats = w.heartbeats.Load()
	s.Reregistrations = w.rereg.Load()
	return s
}

func (w *RedisServiceWatcher) selfSync() *tableSync {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.syncFor(w.Self().Table)
}

// eval runs a script on the table's keys with the arguments every script takes.
func (w *RedisServiceWatcher) eval(ctx context.Context, s *redis.Script, ts *tableSync, args ...interface{}) *redis.Cmd {
	return s.Run(ctx, w.client, ts.keys, w.scriptArgs(ts, args)...)
}

func (w *RedisServiceWatcher) scriptArgs(ts *tableSync, args []interface{}) []interface{} {
	return append([]interface{}{ts.channel, (w.cfg.ttl / 2).Milliseconds(), reapLimit, newToken()}, args...)
}

func (w *RedisServiceWatcher) lockReg(ctx context.Context) error {
	select {
	case w.regLock <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *RedisServiceWatcher) unlockReg() { <-w.regLock }

// register registers self with its current incarnation.
func (w *RedisServiceWatcher) register(ctx context.Context) error {
	if err := w.lockReg(ctx); err != nil {
		return err
	}
	defer w.unlockReg()
	return w.registerLocked(ctx)
}

// registerLocked registers self unless the watcher is stopped: a Stop that
// deregistered before this call took the lock must not be undone.
func (w *RedisServiceWatcher) registerLocked(ctx context.Context) error {
	w.mu.Lock()
	stopped := w.state == stateStopped
	w.mu.Unlock()
	if stopped {
		return ErrStopped
	}
	self := w.Self()
	cctx, cancel := context.WithTimeout(ctx, w.callTimeout())
	defer cancel()
	replace := 0
	if w.cfg.replaceSameName {
		replace = 1
	}
	var regAt int64
	if !self.RegisteredAt.IsZero() {
		regAt = self.RegisteredAt.UnixMilli()
	}
	res, err := w.eval(cctx, scriptRegister, w.selfSync(), self.ID, self.Incarnation, self.Name, self.Desc,
		w.cfg.ttl.Milliseconds(), replace, regAt).Slice()
	w.noteRoundTrip(err)
	if err != nil {
		return fmt.Errorf("svcwatch: register %s: %w", self.Key(), err)
	}
	status, _ := res[0].(string)
	if status == "dup" {
		holder, _ := res[1].(string)
		return fmt.Errorf("%w: %s is held by a live process at %q", ErrDuplicateID, self.Key(), holder)
	}
	regAt, _ = res[1].(int64)
	w.SetRegistration(self.Incarnation, time.UnixMilli(regAt))
	w.registered.Store(true)
	return nil
}

// deregister removes self's entry if this incarnation still owns it. It waits
// for a register or update in flight, so that it is the last word.
func (w *RedisServiceWatcher) deregister(ctx context.Context) error {
	if err := w.lockReg(ctx); err != nil {
		return fmt.Errorf("svcwatch: deregister: %w", err)
	}
	defer w.unlockReg()
	w.registered.Store(false)
	self := w.Self()
	if self.Incarnation == "" {
		return nil // never tried to register
	}
	_, err := w.eval(ctx, scriptDeregister, w.selfSync(), self.ID, self.Incarnation).Result()
	w.noteRoundTrip(err)
	if err != nil {
		return fmt.Errorf("svcwatch: deregister %s: %w", self.Key(), err)
	}
	return nil
}

// callTimeout bounds one script call of the loops, so that a Redis that does not
// answer never holds a heartbeat past the next one (with ContextTimeoutEnabled).
func (w *RedisServiceWatcher) callTimeout() time.Duration { return w.cfg.keepAlive }

// heartbeatLoop runs one heartbeat every keepalive interval until Stop, or until
// this incarnation stands down.
func (w *RedisServiceWatcher) heartbeatLoop(run *running) {
	defer close(run.hbDone)
	t := time.NewTicker(w.cfg.keepAlive)
	defer t.Stop()
	for {
		select {
		case <-run.hbCtx.Done():
			return
		case <-t.C:
		}
		if !w.heartbeat(run.hbCtx) {
			return
		}
	}
}

// heartbeat refreshes self's deadline; it reports false when this incarnation
// has stood down for good.
func (w *RedisServiceWatcher) heartbeat(ctx context.Context) bool {
	self := w.Self()
	cctx, cancel := context.WithTimeout(ctx, w.callTimeout())
	defer cancel()
	res, err := w.eval(cctx, scriptHeartbeat, w.selfSync(), self.ID, self.Incarnation, w.cfg.ttl.Milliseconds()).Text()
	w.noteRoundTrip(err)
	switch {
	case err != nil:
		return true // next tick tries again; Stats shows Connected false
	case res == "ok":
		w.heartbeats.Add(1)
		w.registered.Store(true)
		return true
	case res == "missing":
		w.registered.Store(false)
		err := w.register(ctx)
		switch {
		case err == nil:
			w.rereg.Add(1)
			w.log.Warn("svcwatch: registration was missing (Redis lost its data?); registered again",
				"key", self.Key(), "incarnation", self.Incarnation)
			return true
		case errors.Is(err, ErrDuplicateID):
			w.standDown(self, err)
			return false
		default:
			return true
		}
	default: // replaced
		w.standDown(self, fmt.Errorf("%w: %s", ErrReplaced, self.Key()))
		return false
	}
}

// standDown gives up the registration for good: another incarnation holds the ID,
// and fighting it would flap the peers' views.
func (w *RedisServiceWatcher) standDown(self Instance, err error) {
	w.registered.Store(false)
	w.log.Error("svcwatch: this incarnation is no longer registered and stops heartbeating",
		"key", self.Key(), "incarnation", self.Incarnation, "err", err)
	if w.cfg.onLost != nil {
		w.cfg.onLost(self, err)
	}
}

// noteRoundTrip records whether Redis answered. An error reply (WRONGTYPE,
// NOPERM, a script error) is an answer: it is logged once, not taken for an outage.
func (w *RedisServiceWatcher) noteRoundTrip(err error) {
	var reply redis.Error
	isReply := errors.As(err, &reply) && !errors.Is(err, redis.Nil)
	ok := err == nil || errors.Is(err, redis.Nil) || isReply
	w.connected.Store(ok)
	switch {
	case isReply:
		if _, seen := w.badSeen.LoadOrStore("reply\x00"+err.Error(), struct{}{}); !seen {
			w.log.Error("svcwatch: Redis refused a call", "err", err)
		}
	case ok && w.downLogged.Swap(false):
		w.log.Info("svcwatch: Redis answers again")
	case !ok && !w.downLogged.Swap(true):
		w.log.Warn("svcwatch: Redis does not answer; keeping the last view", "err", err)
	}
	if !ok {
		w.refreshClusterSlots()
	}
}

// refreshClusterSlots asks a ClusterClient to read the slot map again, at most
// once per keepalive interval. go-redis refreshes it on MOVED or every 10 s, but
// not when a dead master refuses connections: without this, watchers of its
// slots would wait out the 10 s after the replica took over.
func (w *RedisServiceWatcher) refreshClusterSlots() {
	cc, ok := w.client.(*redis.ClusterClient)
	if !ok {
		return
	}
	now := w.clock.Now().UnixNano()
	last := w.slotsRefreshed.Load()
	if now-last < int64(w.cfg.keepAlive) || !w.slotsRefreshed.CompareAndSwap(last, now) {
		return
	}
	cc.ReloadState(context.Background())
}

// syncLoop owns the subscription's messages, the safety-net scan and reloads.
func (w *RedisServiceWatcher) syncLoop(run *running) {
	defer close(run.syncDone)
	scan := time.NewTicker(w.cfg.scan)
	defer scan.Stop()
	reload := time.NewTimer(time.Hour)
	defer reload.Stop()
	for {
		select {
		case <-run.ctx.Done():
			return
		case m, ok := <-run.msgs:
			if !ok {
				return
			}
			w.onPubSub(m)
		case <-scan.C:
			w.scan(run.ctx)
			w.ReleaseHolds(w.clock.Now())
		case <-reload.C:
		}
		next := w.reloadDue(run.ctx)
		if !reload.Stop() {
			select {
			case <-reload.C:
			default:
			}
		}
		if !next.IsZero() {
			reload.Reset(time.Until(next))
		}
	}
}

func (w *RedisServiceWatcher) onPubSub(m interface{}) {
	switch m := m.(type) {
	case *redis.Subscription:
		if m.Kind != "subscribe" {
			return
		}
		w.noteRoundTrip(nil)
		w.mu.Lock()
		defer w.mu.Unlock()
		ts := w.syncs[w.tableOfChannel(m.Channel)]
		if ts == nil {
			return
		}
		if !ts.subscribedOnce {
			ts.subscribedOnce = true
			close(ts.confirmed)
			return
		}
		// A re-subscription: messages may have been lost while it was down.
		// Jittered, so that a cluster-wide reconnect does not become a reload storm.
		w.log.Info("svcwatch: subscription re-established; reading the table again", "table", ts.table)
		ts.scheduleReload(w.clock.Now().Add(w.reconnectJitter()), "", 0, "", true)
	case *redis.Message:
		w.applyMessage(w.tableOfChannel(m.Channel), m.Payload)
	}
}

func (w *RedisServiceWatcher) reconnectJitter() time.Duration {
	max := w.cfg.scan / 2
	if max > time.Second {
		max = time.Second
	}
	return time.Duration(mrand.Int63n(int64(max) + 1))
}

// historySize bounds tableSync.history: a read older than this many changes is
// not told apart from a rewritten history (and only holds removals back).
const historySize = 256

// remember makes (rev, tok) the position held. Caller holds mu.
func (ts *tableSync) remember(rev int64, tok string) {
	if ts.history == nil {
		ts.history = make(map[int64]string)
	}
	ts.rev, ts.tok = rev, tok
	ts.history[rev] = tok
	delete(ts.history, rev-historySize)
}

// scheduleReload asks for a reload at or before at. Caller holds mu.
func (ts *tableSync) scheduleReload(at time.Time, epoch string, rev int64, tok string, force bool) {
	if ts.reloadAt.IsZero() || at.Before(ts.reloadAt) {
		ts.reloadAt = at
	}
	if force {
		ts.force = true
	} else {
		ts.wantEpoch, ts.wantRev, ts.wantTok = epoch, rev, tok
	}
}

// applyMessage applies one change if it is the next revision of the epoch held
// and follows the change held; anything else (a gap, a new epoch, a rewritten
// history, an unreadable message) makes it reload.
func (w *RedisServiceWatcher) applyMessage(table, payload string) {
	m, err := decodeMessage(payload)
	w.mu.Lock()
	defer w.mu.Unlock()
	ts := w.syncs[table]
	if ts == nil || !ts.loaded {
		return // its load is coming
	}
	now := w.clock.Now()
	if err != nil {
		w.logBadOnce(table, "", payload, err)
		ts.scheduleReload(now, "", 0, "", true)
		return
	}
	if m.Epoch == ts.epoch && m.Rev <= ts.rev {
		if tok, ok := ts.history[m.Rev]; ok && tok != m.Tok {
			ts.diverged = true
			ts.scheduleReload(now, "", 0, "", true)
		}
		return // already in the view (a read overtook the message)
	}
	if m.Epoch != ts.epoch || m.Rev != ts.rev+1 || m.Prev != ts.tok {
		ts.diverged = ts.diverged || (m.Epoch == ts.epoch && m.Rev == ts.rev+1)
		ts.scheduleReload(now, "", 0, "", true)
		return
	}
	ts.remember(m.Rev, m.Tok)
	switch m.Op {
	case "add", "update":
		inst, err := decodeRecord(table, m.ID, m.Rec, w.cfg.maxDesc)
		if err != nil {
			w.logBadOnce(table, m.ID, m.Rec, err)
			return
		}
		w.PutInstance(inst)
	case "del":
		w.RemoveInstance(table, m.ID, time.Time{})
	case "expired":
		var hold time.Time
		if now.Before(ts.holdExpiredUntil) {
			hold = ts.holdExpiredUntil
		}
		w.RemoveInstance(table, m.ID, hold)
	}
	w.MarkSynced()
}

// scan asks each loaded table for its (epoch, revision), all in one pipeline, and
// schedules a reload of the tables that moved. An idle table costs one small
// script call per interval, whatever its size.
func (w *RedisServiceWatcher) scan(ctx context.Context) {
	w.mu.Lock()
	var tables []*tableSync
	for _, ts := range w.syncs {
		if ts.loaded {
			tables = append(tables, ts)
		}
	}
	w.mu.Unlock()
	if len(tables) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, w.callTimeout())
	defer cancel()
	pipe := w.client.Pipeline()
	cmds := make([]*redis.Cmd, len(tables))
	for i, ts := range tables {
		cmds[i] = scriptCheck.EvalSha(ctx, pipe, ts.keys, w.scriptArgs(ts, nil)...)
	}
	_, _ = pipe.Exec(ctx)
	for i, ts := range tables {
		if redis.HasErrorPrefix(cmds[i].Err(), "NOSCRIPT") {
			cmds[i] = w.eval(ctx, scriptCheck, ts)
		}
		res, err := cmds[i].Slice()
		w.noteRoundTrip(err)
		if err != nil || len(res) != 3 {
			continue
		}
		epoch, _ := res[0].(string)
		rev, _ := res[1].(int64)
		tok, _ := res[2].(string)
		w.mu.Lock()
		if epoch != ts.epoch || rev != ts.rev || tok != ts.tok {
			// Messages in flight may close a forward gap before the reload is due;
			// anything else (a new epoch, a revision that went back or that names
			// another change) needs the read.
			forward := epoch == ts.epoch && rev > ts.rev
			if epoch == ts.epoch && !forward {
				ts.diverged = true
			}
			ts.scheduleReload(w.clock.Now().Add(w.cfg.scan/8), epoch, rev, tok, !forward)
		} else {
			w.MarkSynced()
		}
		w.mu.Unlock()
	}
}

// reloadDue runs the reloads that are due and returns when the next one is.
func (w *RedisServiceWatcher) reloadDue(ctx context.Context) time.Time {
	now := w.clock.Now()
	var due []*tableSync
	var next time.Time
	w.mu.Lock()
	for _, ts := range w.syncs {
		switch {
		case ts.reloadAt.IsZero():
		case !ts.force && ts.epoch == ts.wantEpoch && ts.rev == ts.wantRev && ts.tok == ts.wantTok:
			ts.reloadAt = time.Time{} // messages caught up
		case !ts.reloadAt.After(now):
			due = append(due, ts)
		case next.IsZero() || ts.reloadAt.Before(next):
			next = ts.reloadAt
		}
	}
	w.mu.Unlock()
	for _, ts := range due {
		if err := w.loadTable(ctx, ts); err != nil {
			w.mu.Lock()
			ts.reloadAt = now.Add(w.cfg.scan / 2) // Redis away: try again soon
			w.mu.Unlock()
			if next.IsZero() || ts.reloadAt.Before(next) {
				next = ts.reloadAt
			}
		}
	}
	return next
}

// loadUntilDone loads a table, retrying until ctx ends, unless someone else
// loaded it first.
func (w *RedisServiceWatcher) loadUntilDone(ctx context.Context, ts *tableSync) error {
	select {
	case <-ts.loadedCh:
		return nil
	default:
	}
	return retry(ctx, "load "+ts.table, func(ctx context.Context) error { return w.loadTable(ctx, ts) })
}

// loadTable reads the whole table atomically and makes it the view.
func (w *RedisServiceWatcher) loadTable(ctx context.Context, ts *tableSync) error {
	ctx, cancel := context.WithTimeout(ctx, 2*w.callTimeout())
	defer cancel()
	res, err := w.eval(ctx, scriptLoad, ts).Slice()
	w.noteRoundTrip(err)
	if err != nil {
		return fmt.Errorf("svcwatch: load %s: %w", ts.table, err)
	}
	if len(res) != 5 {
		return fmt.Errorf("svcwatch: load %s: unexpected reply of %d items", ts.table, len(res))
	}
	epoch, _ := res[0].(string)
	rev, _ := res[1].(int64)
	flat, _ := res[3].([]interface{})
	tok, _ := res[4].(string)
	insts := make([]Instance, 0, len(flat)/3)
	for i := 0; i+2 < len(flat); i += 3 {
		id, _ := flat[i].(string)
		raw, _ := flat[i+1].(string)
		inst, err := decodeRecord(ts.table, id, raw, w.cfg.maxDesc)
		if err != nil {
			w.logBadOnce(ts.table, id, raw, err)
			continue
		}
		insts = append(insts, inst)
	}
	sort.Slice(insts, func(i, j int) bool { return insts[i].ID < insts[j].ID }) // events in a stable order

	w.mu.Lock()
	defer w.mu.Unlock()
	sameEpoch := ts.loaded && epoch == ts.epoch
	if sameEpoch && rev < ts.rev && ts.history[rev] == tok {
		return nil // messages got ahead of this read; the view is newer already
	}
	newEpoch := ts.loaded && ts.epoch != "" && epoch != ts.epoch
	rewritten := ts.diverged || (sameEpoch && rev <= ts.rev && ts.history[rev] != tok)
	var hold time.Time
	if newEpoch || rewritten {
		// Redis lost, restored or rolled back the table's data (an empty restart,
		// a restore, a failover to a replica that missed writes). The processes
		// that are alive register again within a keepalive interval; until one
		// TTL has passed, a missing or expiring instance is more likely lost data
		// than dead. (A table that had no epoch yet is simply new.)
		hold = w.clock.Now().Add(w.cfg.ttl)
		ts.holdExpiredUntil = hold
		w.log.Warn("svcwatch: table data lost, restored or rolled back; holding back removals for one TTL",
			"table", ts.table, "ttl", w.cfg.ttl, "new_epoch", newEpoch)
	}
	if newEpoch || rewritten || ts.epoch != epoch {
		ts.history = nil
	}
	ts.epoch, ts.diverged = epoch, false
	ts.remember(rev, tok)
	ts.reloadAt, ts.force = time.Time{}, false
	w.ReplaceTable(ts.table, insts, hold)
	if !ts.loaded {
		ts.loaded = true
		close(ts.loadedCh)
	}
	return nil
}

// logBadOnce logs unreadable data the first time it is seen.
func (w *RedisServiceWatcher) logBadOnce(table, id, raw string, err error) {
	h := fnv.New64a()
	h.Write([]byte(raw))
	fp := fmt.Sprintf("%s\x00%s\x00%x", table, id, h.Sum64())
	if _, seen := w.badSeen.LoadOrStore(fp, struct{}{}); !seen {
		w.log.Warn("svcwatch: skipping unreadable data", "table", table, "id", id, "err", err)
	}
}

// retry runs f until it succeeds, fails for good, or ctx ends, with capped
// exponential backoff and jitter.
func retry(ctx context.Context, what string, f func(context.Context) error) error {
	backoff := 50 * time.Millisecond
	for {
		err := f(ctx)
		if err == nil || errors.Is(err, ErrDuplicateID) || errors.Is(err, ErrInvalid) || errors.Is(err, ErrStopped) {
			return err
		}
		t := time.NewTimer(backoff/2 + time.Duration(mrand.Int63n(int64(backoff/2)+1)))
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("svcwatch: %s: %w (last error: %v)", what, ctx.Err(), err)
		case <-t.C:
		}
		if backoff < 2*time.Second {
			backoff *= 2
		}
	}
}

// newToken returns a random 16-hex-digit token (incarnations, epochs).
func newToken() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails on supported platforms
	return hex.EncodeToString(b[:])
}
