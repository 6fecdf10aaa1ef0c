package etcd

// tables.go: changing what a started etcd watcher watches: Unwatch,
// WatchPrefix and UnwatchPrefix. They run on the caller's goroutine; the
// sources they start and stop are in sync.go.

import (
	"context"

	"github.com/svcwatch/svcwatch"
)

// Unwatch stops watching a table watched by name (Watch, WithTables): OnRemove
// is delivered for each of its peers, then it is no longer followed, and
// Services reports nothing for it. It returns once those events were handled
// (called from a handler: they follow when the handler returns). A table also
// covered by a watched prefix stays watched until the prefix is undone too.
// Unwatching a table not watched by name is a no-op; self's own table cannot
// be unwatched by a watcher that registers (svcwatch.ErrInvalid).
func (w *EtcdServiceWatcher) Unwatch(ctx context.Context, table string) error {
	w.mu.Lock()
	if w.state == stateStopped {
		w.mu.Unlock()
		return svcwatch.ErrStopped
	}
	unwatched, err := w.b.RemoveTable(table)
	if err != nil {
		w.mu.Unlock() // refused (self's own table): its source stays
		return err
	}
	s := w.named[table]
	delete(w.named, table)
	w.mu.Unlock()
	if s != nil {
		// Its events must not outlive the drop below.
		if err := stopSource(ctx, s); err != nil {
			return err
		}
	}
	if !unwatched {
		return nil // not watched by name, or still under a watched prefix
	}
	w.mu.Lock()
	w.dropLocked(table)
	w.mu.Unlock()
	return w.stoppedOr(w.b.Flush(ctx))
}

// WatchPrefix watches every table under prefix, by whole path segments
// ("mygame/prod" covers "mygame/prod/20190510/game", not
// "mygame/production/game"), now and later: one range read and one watch of
// the prefix's range. Before Start it only records the prefix. After Start it
// returns once every table under the prefix is loaded and OnAdd was delivered
// for its peers (from a handler: those events follow when it returns). A
// table that appears later is found by the watch with its first registration,
// its peers arriving as OnAdd.
func (w *EtcdServiceWatcher) WatchPrefix(ctx context.Context, prefix string) error {
	w.mu.Lock()
	if w.state == stateStopped {
		w.mu.Unlock()
		return svcwatch.ErrStopped
	}
	norm, _, err := w.b.AddPrefix(prefix)
	if err != nil {
		w.mu.Unlock()
		return err
	}
	run := w.run
	if run == nil {
		w.mu.Unlock()
		return nil
	}
	s := w.prefixSource(run, norm)
	w.mu.Unlock()
	return w.waitSource(ctx, run, s)
}

// UnwatchPrefix undoes WatchPrefix: the tables it alone kept watched are
// unwatched as by Unwatch (OnRemove for their peers, delivered before it
// returns). Tables watched by name or under another watched prefix stay.
// Unwatching a prefix not watched is a no-op.
func (w *EtcdServiceWatcher) UnwatchPrefix(ctx context.Context, prefix string) error {
	w.mu.Lock()
	if w.state == stateStopped {
		w.mu.Unlock()
		return svcwatch.ErrStopped
	}
	norm, dropped, err := w.b.RemovePrefix(prefix)
	if err != nil {
		w.mu.Unlock()
		return err
	}
	s := w.prefixes[norm]
	delete(w.prefixes, norm)
	w.mu.Unlock()
	if s != nil {
		if err := stopSource(ctx, s); err != nil {
			return err
		}
	}
	w.mu.Lock()
	for _, t := range dropped {
		w.dropLocked(t)
	}
	w.mu.Unlock()
	return w.stoppedOr(w.b.Flush(ctx))
}
