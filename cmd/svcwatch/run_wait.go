package main

// run_wait.go: the blocking queries of `svcwatch run`. Each table served has a
// local index, bumped on every discovery event of that table (and on changes
// of self, which raise no event); a query waits on the table's channel, which
// a bump closes. Waiting costs Redis nothing: the events come from the
// watcher's own view, whatever the number of waiters.

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// maxWait caps the wait of a blocking query (Consul caps at 10 minutes): a
// client asking for more waits this long, then asks again.
const maxWait = 5 * time.Minute

// tableIndexes holds the index of every table a query or an event has
// touched. An index starts at 0, "not loaded yet"; the first bump makes it
// at least 1. Safe for concurrent use.
type tableIndexes struct {
	mu     sync.Mutex
	tables map[string]*tableIndex
	closed chan struct{} // closed by close: every waiter answers at once
	once   sync.Once

	waiters atomic.Int64 // queries blocked right now (for /v1/stats)
}

type tableIndex struct {
	n       uint64
	changed chan struct{} // closed and replaced at each bump
}

func newTableIndexes() *tableIndexes {
	return &tableIndexes{tables: make(map[string]*tableIndex), closed: make(chan struct{})}
}

// getLocked returns table's index, made on first use. Caller holds mu.
func (x *tableIndexes) getLocked(table string) *tableIndex {
	t := x.tables[table]
	if t == nil {
		t = &tableIndex{changed: make(chan struct{})}
		x.tables[table] = t
	}
	return t
}

// bump moves table's index on and wakes its waiters. It is the handler of
// the watcher's events, so it never blocks.
func (x *tableIndexes) bump(table string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.bumpLocked(x.getLocked(table))
}

func (x *tableIndexes) bumpLocked(t *tableIndex) {
	t.n++
	close(t.changed)
	t.changed = make(chan struct{})
}

// bumpAll bumps every table that has an index, after a change no event
// reports (the watcher's Start returned: tables loaded empty are loaded
// now).
func (x *tableIndexes) bumpAll() {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, t := range x.tables {
		x.bumpLocked(t)
	}
}

// current returns table's index and the channel its next bump closes.
func (x *tableIndexes) current(table string) (uint64, <-chan struct{}) {
	x.mu.Lock()
	defer x.mu.Unlock()
	t := x.getLocked(table)
	return t.n, t.changed
}

// loaded records that table was seen loaded: an index still at 0 is bumped
// to 1 (waking queries that wait for the load). It returns the index.
func (x *tableIndexes) loaded(table string) uint64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	t := x.getLocked(table)
	if t.n == 0 {
		x.bumpLocked(t)
	}
	return t.n
}

// wait blocks until changed is closed, d passes, ctx ends or the indexes
// are closed, whichever comes first.
func (x *tableIndexes) wait(ctx context.Context, changed <-chan struct{}, d time.Duration) {
	x.waiters.Add(1)
	defer x.waiters.Add(-1)
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-changed:
	case <-timer.C:
	case <-ctx.Done():
	case <-x.closed:
	}
}

// close makes every waiter answer now and later queries not wait: the
// sidecar is shutting down. Idempotent.
func (x *tableIndexes) close() { x.once.Do(func() { close(x.closed) }) }

// isClosed reports whether close was called.
func (x *tableIndexes) isClosed() bool {
	select {
	case <-x.closed:
		return true
	default:
		return false
	}
}
