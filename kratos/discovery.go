package svcwatchkratos

// discovery.go: GetService and Watch, on the shared watch-only watcher, and
// the registry.Watcher that Watch returns.

import (
	"context"
	"sync"
	"time"

	"github.com/go-kratos/kratos/v2/registry"

	"github.com/svcwatch/svcwatch"
)

// stopTimeout bounds the UnwatchPrefix of a stopped registry.Watcher
// (registry.Watcher's Stop takes no context).
const stopTimeout = 10 * time.Second

// GetService returns the Serving instances of every version of service
// name, sorted by version then ID. The first call starts the discovery
// watcher; a service nobody Watches is read (loaded) for this call only.
func (r *Registry) GetService(ctx context.Context, name string) ([]*registry.ServiceInstance, error) {
	d, err := r.acquire(ctx, name)
	if err != nil {
		return nil, err
	}
	list := r.list(d, name)
	return list, r.release(ctx, name)
}

// list returns the Serving instances of every table under name's prefix.
func (r *Registry) list(d *svcwatch.RedisServiceWatcher, name string) []*registry.ServiceInstance {
	p, _ := r.servicePrefix(name)
	out := []*registry.ServiceInstance{}
	for _, table := range d.Tables() { // sorted: versions in order
		if !svcwatch.UnderPrefix(table, p) {
			continue
		}
		for _, inst := range d.Services(table) {
			if inst.State == svcwatch.Serving {
				out = append(out, r.fromInstance(name, inst))
			}
		}
	}
	return out
}

// Watch watches every version of service name and returns a registry.Watcher
// whose first Next returns the current list at once and whose every later
// Next returns the whole list after a change. It returns once the service's
// tables are loaded. kratos's discovery resolver calls it for each
// "discovery:///name" ClientConn, and Stop when the ClientConn closes; ctx
// ending stops the watcher too.
func (r *Registry) Watch(ctx context.Context, name string) (registry.Watcher, error) {
	d, err := r.acquire(ctx, name)
	if err != nil {
		return nil, err
	}
	p, _ := r.servicePrefix(name)
	w := &watcher{r: r, d: d, name: name, prefix: p, wake: make(chan struct{}, 1), first: true}
	w.ctx, w.cancel = context.WithCancel(ctx)
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		w.cancel()
		_ = r.release(context.Background(), name)
		return nil, ErrClosed
	}
	r.watchers[w] = struct{}{}
	r.mu.Unlock()
	return w, nil
}

// watcher is the registry.Watcher of one Watch.
type watcher struct {
	r      *Registry
	d      *svcwatch.RedisServiceWatcher
	name   string
	prefix string
	ctx    context.Context
	cancel context.CancelFunc
	wake   chan struct{} // 1-buffered: something under prefix changed

	mu    sync.Mutex // serializes Next (kratos calls it from one goroutine)
	first bool

	stopOnce sync.Once
	stopErr  error
}

// signal records a change; it never blocks.
func (w *watcher) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Next returns the Serving instances of every version of the service: at
// once the first time, then after each change. It returns the context's
// error once the watcher is stopped, its Watch context ends or the Registry
// is closed.
func (w *watcher) Next() ([]*registry.ServiceInstance, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ctx.Err() != nil {
		return nil, w.ctx.Err()
	}
	if w.first {
		w.first = false
		select { // the OnAdds of the initial load are in this list already
		case <-w.wake:
		default:
		}
		return w.r.list(w.d, w.name), nil
	}
	select {
	case <-w.wake:
		return w.r.list(w.d, w.name), nil
	case <-w.ctx.Done():
		return nil, w.ctx.Err()
	}
}

// Stop ends the watcher: a Next in progress returns context.Canceled, and the
// service's tables are unwatched if nothing else holds them. Idempotent.
func (w *watcher) Stop() error {
	w.stopOnce.Do(func() {
		w.cancel()
		w.r.mu.Lock()
		delete(w.r.watchers, w)
		w.r.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		w.stopErr = w.r.release(ctx, w.name)
	})
	return w.stopErr
}
