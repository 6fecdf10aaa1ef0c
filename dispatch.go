package svcwatch

// dispatch.go: the merged event queue and the event goroutine, the only
// goroutine that calls handlers and the other user callbacks of a watcher.
// enqueue and notify run on whichever goroutine applied a change (the backend's
// sync loop, a Start or Watch, the heartbeat); run is the event goroutine.

import (
	"context"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
)

// dispatcher delivers registry changes to the handlers from one goroutine.
//
// Pending changes are merged per instance key: the queue holds each key once, at
// the position of its oldest undelivered change, with the latest state beside it.
// So the backlog a slow handler leaves is bounded by the number of instances, and a
// handler that catches up sees each instance's latest state. What a handler was
// last told (known) decides the events: a new incarnation is always told as
// OnRemove(old) then OnAdd(new).
type dispatcher struct {
	handlers []Handler
	skipKey  string // self: never reported
	log      *slog.Logger
	events   atomic.Uint64

	mu      sync.Mutex
	wake    chan struct{} // capacity 1: the queue changed or stop was asked
	queue   []queued
	pending map[string]*Instance // key -> latest state, nil when gone
	stopped bool

	known   map[string]Instance // what the handlers were told; run goroutine only
	runGoID atomic.Int64
	done    chan struct{}
}

// queued is one place in the queue: an instance key, a flush marker or a
// callback.
type queued struct {
	key     string
	barrier chan struct{} // a flush marker
	call    func()        // a callback to run on the event goroutine
}

func newDispatcher(handlers []Handler, skipKey string, log *slog.Logger) *dispatcher {
	return &dispatcher{
		handlers: append([]Handler(nil), handlers...), // AddHandler appends to it
		skipKey:  skipKey,
		log:      log,
		wake:     make(chan struct{}, 1),
		pending:  make(map[string]*Instance),
		known:    make(map[string]Instance),
		done:     make(chan struct{}),
	}
}

// enqueue records the latest state of key (nil: gone). Callers keep their own
// order; the registry calls it under its lock.
func (d *dispatcher) enqueue(key string, latest *Instance) {
	if key == d.skipKey {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return
	}
	if _, queuedAlready := d.pending[key]; !queuedAlready {
		d.queue = append(d.queue, queued{key: key})
	}
	d.pending[key] = latest
	d.signal()
}

// notify runs f on the event goroutine after the events queued before it,
// recovered like a handler. It is dropped once the dispatcher is stopped.
func (d *dispatcher) notify(f func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return
	}
	d.queue = append(d.queue, queued{call: f})
	d.signal()
}

func (d *dispatcher) signal() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// flush waits until every change enqueued before it has been delivered. Called on
// the dispatch goroutine itself (from a handler), it returns at once: the events
// follow as soon as the handler returns.
func (d *dispatcher) flush(ctx context.Context) error {
	if d.onRunGoroutine() {
		return nil
	}
	b := make(chan struct{})
	d.mu.Lock()
	if d.stopped {
		d.mu.Unlock()
		return ErrStopped
	}
	d.queue = append(d.queue, queued{barrier: b})
	d.signal()
	d.mu.Unlock()
	select {
	case <-b:
		d.mu.Lock()
		stopped := d.stopped
		d.mu.Unlock()
		if stopped {
			return ErrStopped
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run delivers events until stop. It is the only goroutine that calls handlers.
func (d *dispatcher) run() {
	defer close(d.done)
	if id, ok := goroutineID(); ok {
		d.runGoID.Store(id)
	} else {
		d.log.Error("svcwatch: cannot tell the event goroutine from the stack header (unknown Go runtime format); " +
			"a handler that calls Stop or Watch of its own watcher will wait until its context ends")
	}
	for {
		d.mu.Lock()
		if d.stopped {
			d.mu.Unlock()
			return
		}
		if len(d.queue) == 0 {
			d.mu.Unlock()
			<-d.wake
			continue
		}
		q := d.queue[0]
		d.queue[0] = queued{}
		d.queue = d.queue[1:]
		if len(d.queue) == 0 {
			d.queue = nil // let the backing array go
		}
		if q.barrier != nil {
			d.mu.Unlock()
			close(q.barrier)
			continue
		}
		if q.call != nil {
			d.mu.Unlock()
			d.safeCall(q.call)
			continue
		}
		latest := d.pending[q.key]
		delete(d.pending, q.key)
		d.mu.Unlock()
		d.deliver(q.key, latest)
	}
}

// deliver tells the handlers what changed for key since they were last told.
// Each handler call gets Instances with Meta maps of its own.
func (d *dispatcher) deliver(key string, latest *Instance) {
	old, had := d.known[key]
	switch {
	case latest == nil && had:
		delete(d.known, key)
		d.call(func(h Handler) { h.OnRemove(old.clone()) })
	case latest == nil:
		// added and removed before the handler heard of it
	case !had:
		d.known[key] = *latest
		d.call(func(h Handler) { h.OnAdd(latest.clone()) })
	case old.Incarnation != latest.Incarnation:
		d.known[key] = *latest
		d.call(func(h Handler) { h.OnRemove(old.clone()) })
		d.call(func(h Handler) { h.OnAdd(latest.clone()) })
	case !old.same(*latest):
		d.known[key] = *latest
		d.call(func(h Handler) { h.OnUpdate(old.clone(), latest.clone()) })
	}
}

// call runs fn on every handler, unless the dispatcher was stopped meanwhile.
func (d *dispatcher) call(fn func(Handler)) {
	for _, h := range d.handlers {
		d.mu.Lock()
		stopped := d.stopped
		d.mu.Unlock()
		if stopped {
			return
		}
		d.events.Add(1)
		d.safeCall(func() { fn(h) })
	}
}

// safeCall runs user code, recovering and logging a panic.
func (d *dispatcher) safeCall(f func()) {
	defer func() {
		if r := recover(); r != nil {
			d.log.Error("svcwatch: handler panicked; event skipped", "panic", r,
				"stack", string(stack()))
		}
	}()
	f()
}

// stop ends delivery: the event in progress finishes, nothing else is delivered,
// and every waiting flush returns ErrStopped. It does not wait; see wait.
func (d *dispatcher) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return
	}
	d.stopped = true
	for _, q := range d.queue {
		if q.barrier != nil {
			close(q.barrier)
		}
	}
	d.queue, d.pending = nil, nil
	d.signal()
}

// wait waits for the run goroutine to end, unless called from it (a handler that
// stops its own watcher): then it ends as soon as that handler returns.
func (d *dispatcher) wait(ctx context.Context) error {
	if d.onRunGoroutine() {
		return nil
	}
	select {
	case <-d.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (d *dispatcher) onRunGoroutine() bool {
	id := d.runGoID.Load()
	if id == 0 {
		return false
	}
	cur, ok := goroutineID()
	return ok && cur == id
}

func stack() []byte {
	buf := make([]byte, 4096)
	return buf[:runtime.Stack(buf, false)]
}
