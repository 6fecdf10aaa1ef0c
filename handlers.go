package svcwatch

// handlers.go: handlers added to a watcher after it was built (adapters attach
// this way). Adding and removing happen on the event goroutine, in order with
// the events, so a late handler starts from the same view as the others.

import (
	"sort"
	"sync/atomic"
)

// addedHandler is a handler added by AddHandler; removed stops it at once,
// before the event goroutine drops it from the list.
type addedHandler struct {
	h       Handler
	removed atomic.Bool
}

func (a *addedHandler) OnAdd(inst Instance) {
	if !a.removed.Load() {
		a.h.OnAdd(inst)
	}
}

func (a *addedHandler) OnUpdate(old, cur Instance) {
	if !a.removed.Load() {
		a.h.OnUpdate(old, cur)
	}
}

func (a *addedHandler) OnRemove(inst Instance) {
	if !a.removed.Load() {
		a.h.OnRemove(inst)
	}
}

// AddHandler adds h to the watcher's handlers, for code that gets a watcher
// already built (an adapter such as a gRPC resolver or a metrics collector).
// On the event goroutine, after the events queued before it, h is first told
// OnAdd for every peer the handlers know of (sorted by key), then every later
// change, like the handlers given with WithHandler. remove stops calls to h:
// after it returns, h is not called again unless a call is in progress (or
// remove is called from h itself). remove is idempotent. After Stop, AddHandler
// does nothing.
func (w *ServiceWatcher) AddHandler(h Handler) (remove func()) {
	if h == nil {
		return func() {}
	}
	a := &addedHandler{h: h}
	d := w.disp
	d.notify(func() {
		if a.removed.Load() {
			return
		}
		keys := make([]string, 0, len(d.known))
		for k := range d.known {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			inst := d.known[k].clone()
			d.events.Add(1)
			d.safeCall(func() { a.OnAdd(inst) })
		}
		d.handlers = append(d.handlers, a)
	})
	return func() {
		if a.removed.Swap(true) {
			return
		}
		d.notify(func() {
			for i, x := range d.handlers {
				if x == Handler(a) {
					d.handlers = append(d.handlers[:i:i], d.handlers[i+1:]...)
					return
				}
			}
		})
	}
}
