package svcwatch

// conn_manager.go: ConnManager, the Handler that keeps one connection per
// discovered peer. Its Handler methods run on the watcher's event goroutine and
// never block on a dial; each accepted peer has a dial goroutine of its own,
// owned by the manager and ended by the peer's removal or Close.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"
)

// ErrConnInvalidated is the error an OnDisconnect hook receives when the
// connection was closed because Invalidate was called for it.
var ErrConnInvalidated = errors.New("svcwatch: connection invalidated")

// ErrConnPanicked is wrapped by the error an OnDisconnect hook receives when the
// OnConnect hook panicked for that connection; that error also wraps
// ErrConnInvalidated, since the connection is dropped and redialed as if the
// hook had called Invalidate. It is also wrapped by the logged error of a dial
// function that panicked. Test with errors.Is.
var ErrConnPanicked = errors.New("svcwatch: connection callback panicked")

// connPanicError is a panic recovered from the dial function or the OnConnect
// hook. An OnConnect panic also reads as ErrConnInvalidated.
type connPanicError struct {
	fn    string // "dial" or "OnConnect"
	value any    // what was passed to panic
	stack []byte // the panicking goroutine's stack, for the log
}

func (e *connPanicError) Error() string {
	if e.fn == "OnConnect" {
		return fmt.Sprintf("svcwatch: OnConnect panicked: %v (connection invalidated)", e.value)
	}
	return fmt.Sprintf("svcwatch: %s panicked: %v", e.fn, e.value)
}

func (e *connPanicError) Unwrap() []error {
	if e.fn == "OnConnect" {
		return []error{ErrConnPanicked, ErrConnInvalidated}
	}
	return []error{ErrConnPanicked}
}

// ConnManager is a Handler that keeps one connection to each discovered peer:
// it dials peers as they are added, redials with backoff while they stay
// registered, and closes the connection when they go away.
//
// It descends from go-kit's sd endpoint cache, with two differences: nothing is
// ever dialed under a lock or on the caller's goroutine (each accepted peer has
// its own dial goroutine, owned by the manager), and Close closes every
// connection and waits for every goroutine.
//
// Connections are keyed by Instance.Key. An update reconnects only when the
// peer's Name (its address) or Incarnation changed; a Desc-only update keeps
// the connection. OnRemove, OnUpdate and Invalidate never block on a dial: the
// old connection is closed by its dial goroutine shortly after they return.
//
// For one key, hooks never overlap: the OnDisconnect of a connection always
// precedes the OnConnect of the next one, even across a reconnect.
//
// A panic in the dial function or a hook is recovered and logged, like a
// panicking Handler of the watcher, and never ends the process: a panicking dial
// counts as a failed dial, a panicking OnConnect invalidates its connection, and
// a panicking OnDisconnect is as if it had returned. See NewConnManager.
//
// All methods are safe for concurrent use. The dial function must return soon
// after its ctx is done, or Close and reconnects wait for it.
type ConnManager[C io.Closer] struct {
	dial func(ctx context.Context, inst Instance) (C, error)
	cfg  connConfig

	// ctx is the parent of every peer's ctx; Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // one per dial goroutine

	mu     sync.RWMutex
	closed bool
	peers  map[string]*connPeer[C] // live peers, by key
	// tails holds, per key, the newest dial goroutine, live or still draining,
	// so that a replacement waits for it: this is what keeps hooks ordered.
	tails     map[string]*connPeer[C]
	closeErrs []error // errors closing connections during Close
}

var _ Handler = (*ConnManager[io.Closer])(nil)

// connPeer is one dial goroutine's state. Name and Incarnation never change for
// a connPeer (a change replaces it); Desc follows updates.
type connPeer[C io.Closer] struct {
	ctx    context.Context // canceled when the peer is removed, replaced or Close is called
	cancel context.CancelFunc
	done   chan struct{} // closed when the goroutine has exited
	kick   chan struct{} // cap 1: Invalidate asks the goroutine to drop its conn
	addr   string        // inst.Name, readable without the lock

	// Guarded by ConnManager.mu.
	inst       Instance
	conn       C
	ready      bool // conn is published to Get
	connecting bool // the OnConnect hook is running with a fresh conn
}

// NewConnManager returns a ConnManager that connects to peers with dial. dial is
// called from a per-peer goroutine, never under a lock, with the peer's current
// Instance and a ctx that is canceled when the peer goes away or the manager is
// closed, and expires after the dial timeout. A nil dial makes every dial fail
// with an error wrapping ErrInvalid (logged), rather than a panic.
//
// Panics in dial and in the hooks are recovered and logged with their stack; the
// process goes on. A dial that panics counts as a failed dial: the peer is
// redialed with backoff while it stays registered. An OnConnect that panics
// invalidates its connection: it is never published, it is closed, OnDisconnect
// still gets it (with an error wrapping ErrConnPanicked and ErrConnInvalidated)
// and the peer is redialed after a backoff. An OnDisconnect that panics is
// treated as if it had returned. A panicking filter (WithConnFilter) is
// recovered by the watcher's dispatcher like a Handler; the manager is left as
// it was before that event.
//
// The caller owns the manager and must call Close.
func NewConnManager[C io.Closer](dial func(ctx context.Context, inst Instance) (C, error), opts ...ConnOption) *ConnManager[C] {
	if dial == nil {
		dial = func(context.Context, Instance) (C, error) {
			var zero C
			return zero, fmt.Errorf("%w: NewConnManager was given a nil dial function", ErrInvalid)
		}
	}
	cfg := connConfig{
		dialTimeout: 5 * time.Second,
		backoff:     backoff{min: 100 * time.Millisecond, max: 10 * time.Second},
		clock:       systemClock{},
	}
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	cfg.backoff.max = max(cfg.backoff.max, cfg.backoff.min)
	if cfg.logger == nil {
		cfg.logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &ConnManager[C]{
		dial:   dial,
		cfg:    cfg,
		ctx:    ctx,
		cancel: cancel,
		peers:  make(map[string]*connPeer[C]),
		tails:  make(map[string]*connPeer[C]),
	}
}

// OnAdd starts connecting to inst in the background if the filter accepts it.
// If the key is already known it behaves as OnUpdate. It never blocks on a
// dial. After Close it does nothing.
func (m *ConnManager[C]) OnAdd(inst Instance) { m.apply(inst, m.accepts(inst)) }

// OnUpdate reconnects when cur's Name or Incarnation differs from the instance
// being connected; a Desc-only change keeps the connection (later dials and
// hooks see the new Desc). It closes the connection if the filter now rejects
// cur, and dials if the filter now accepts a peer it rejected. It never blocks
// on a dial. After Close it does nothing.
func (m *ConnManager[C]) OnUpdate(old, cur Instance) {
	accept := m.accepts(cur) // first: if it panics, nothing has changed
	if old.Key() != cur.Key() {
		m.OnRemove(old)
	}
	m.apply(cur, accept)
}

// OnRemove forgets the peer with inst's key: a dial in progress is canceled and
// the connection is closed by the peer's goroutine shortly after OnRemove
// returns; Get stops returning it at once. Unknown keys are ignored.
func (m *ConnManager[C]) OnRemove(inst Instance) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p := m.peers[inst.Key()]; p != nil {
		m.dropLocked(inst.Key(), p)
	}
}

// Get returns the connection to the peer with the given key (Instance.Key) and
// true, or false while the peer is unknown, rejected, not yet connected or
// between connections. It only takes a read lock.
func (m *ConnManager[C]) Get(key string) (C, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if p := m.peers[key]; p != nil && p.ready {
		return p.conn, true
	}
	var zero C
	return zero, false
}

// Invalidate reports that the peer's current connection is broken: Get stops
// returning it at once, the peer's goroutine closes it (OnDisconnect gets
// ErrConnInvalidated) and redials after a backoff for as long as the peer stays
// registered. It acts on whichever connection is current, so call it right
// after the failure, not later. Called from the OnConnect hook (a failed
// handshake), it keeps that connection from ever being published. It is a no-op
// for an unknown key or a peer that is not connected.
func (m *ConnManager[C]) Invalidate(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peers[key]
	if p == nil || !(p.ready || p.connecting) {
		return
	}
	p.ready = false
	select {
	case p.kick <- struct{}{}:
	default: // cannot happen: one kick per published conn, consumed before the next
	}
}

// Close closes every connection, cancels every dial, and waits for every dial
// goroutine (and so every hook) to return. It returns the errors from closing
// connections, joined; nil if none. It is idempotent: later calls return nil
// once the first has finished. After Close, Get reports false and OnAdd,
// OnUpdate, OnRemove and Invalidate do nothing.
func (m *ConnManager[C]) Close() error {
	m.mu.Lock()
	first := !m.closed
	if first {
		m.closed = true
		m.cancel()
		for key, p := range m.peers {
			delete(m.peers, key)
			p.cancel()
		}
	}
	m.mu.Unlock()
	// No wg.Add can follow: Add happens under mu only while !closed.
	m.wg.Wait()
	if !first {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	err := errors.Join(m.closeErrs...)
	m.closeErrs = nil
	return err
}

// accepts runs the filter. It is called outside the lock, before any change:
// the filter is user code and may call Get, and if it panics (the dispatcher
// recovers it) no lock is held and the manager is left untouched.
func (m *ConnManager[C]) accepts(inst Instance) bool {
	return m.cfg.filter == nil || m.cfg.filter(inst)
}

// apply makes the manager's view of inst's key match inst, given the filter's
// verdict on it.
func (m *ConnManager[C]) apply(inst Instance, accept bool) {
	key := inst.Key()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	p := m.peers[key]
	switch {
	case !accept:
		if p != nil {
			m.dropLocked(key, p)
		}
	case p == nil:
		m.startLocked(key, inst)
	case p.inst.Name != inst.Name || p.inst.Incarnation != inst.Incarnation:
		m.dropLocked(key, p)
		m.startLocked(key, inst)
	default:
		p.inst = inst
	}
}

// dropLocked unpublishes p and tells its goroutine to close and exit.
func (m *ConnManager[C]) dropLocked(key string, p *connPeer[C]) {
	delete(m.peers, key)
	p.ready = false
	p.cancel()
}

// startLocked starts the dial goroutine of a new peer. m.mu must be held and
// the manager open.
func (m *ConnManager[C]) startLocked(key string, inst Instance) {
	ctx, cancel := context.WithCancel(m.ctx)
	p := &connPeer[C]{
		ctx:    ctx,
		cancel: cancel,
		done:   make(chan struct{}),
		kick:   make(chan struct{}, 1),
		addr:   inst.Name,
		inst:   inst,
	}
	var prev <-chan struct{}
	if t := m.tails[key]; t != nil {
		prev = t.done
	}
	m.tails[key] = p
	m.peers[key] = p
	m.wg.Add(1)
	go m.run(key, p, prev)
}
