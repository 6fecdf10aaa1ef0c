package mysql

// tables.go: changing what a started watcher watches: Unwatch, WatchPrefix
// and UnwatchPrefix. They run on the caller's goroutine; tables that appear
// later under a watched prefix are found by the scan (scan.go), which reads
// the revision rows under each prefix along with the watched ones.

import (
	"context"

	"github.com/svcwatch/svcwatch"
)

// Unwatch stops watching a table watched by name (Watch, WithTables): OnRemove
// is delivered for each of its peers, then it is no longer scanned, and
// Services reports nothing for it. It returns once those events were handled
// (called from a handler: they follow when the handler returns). A table also
// covered by a watched prefix stays watched until the prefix is undone too.
// Unwatching a table not watched by name is a no-op; self's own table cannot
// be unwatched by a watcher that registers (svcwatch.ErrInvalid).
func (w *MySQLServiceWatcher) Unwatch(ctx context.Context, table string) error {
	if w.stopped() {
		return svcwatch.ErrStopped
	}
	w.loadMu.Lock() // so that no load in flight brings the view back
	unwatched, err := w.b.RemoveTable(table)
	if err == nil && unwatched {
		w.dropLocked(table)
	}
	w.loadMu.Unlock()
	if err != nil || !unwatched {
		return err
	}
	return w.stoppedOr(w.b.Flush(ctx))
}

// WatchPrefix watches every table under prefix, by whole path segments
// ("mygame/prod" covers "mygame/prod/20190510/game", not
// "mygame/production/game"), now and later. Before Start it only records the
// prefix. After Start it returns once every table under the prefix is loaded
// and OnAdd was delivered for its peers (from a handler: those events follow
// when it returns). A table that appears later is found by the scan, within
// one scan interval of its first registration; its peers arrive as OnAdd.
func (w *MySQLServiceWatcher) WatchPrefix(ctx context.Context, prefix string) error {
	if w.stopped() {
		return svcwatch.ErrStopped
	}
	norm, _, err := w.b.AddPrefix(prefix)
	if err != nil {
		return err
	}
	w.mu.Lock()
	run := w.run
	w.mu.Unlock()
	if run == nil {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(run.attempt, cancel)()
	err = w.b.Retry(ctx, "list the tables under "+norm, func(ctx context.Context) error {
		return w.discover(ctx, []string{norm})
	})
	if err != nil {
		return w.stoppedOr(err)
	}
	return w.stoppedOr(w.b.Flush(ctx))
}

// UnwatchPrefix undoes WatchPrefix: the tables it alone kept watched are
// unwatched as by Unwatch (OnRemove for their peers, delivered before it
// returns). Tables watched by name or under another watched prefix stay.
// Unwatching a prefix not watched is a no-op.
func (w *MySQLServiceWatcher) UnwatchPrefix(ctx context.Context, prefix string) error {
	if w.stopped() {
		return svcwatch.ErrStopped
	}
	w.loadMu.Lock()
	_, dropped, err := w.b.RemovePrefix(prefix)
	for _, t := range dropped {
		w.dropLocked(t)
	}
	w.loadMu.Unlock()
	if err != nil {
		return err
	}
	return w.stoppedOr(w.b.Flush(ctx))
}

// dropLocked forgets the view of a table no longer watched (OnRemove for its
// peers are queued). The caller holds loadMu.
func (w *MySQLServiceWatcher) dropLocked(table string) {
	w.b.DropTable(table)
	delete(w.pos, table)
}

func (w *MySQLServiceWatcher) stopped() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state == stateStopped
}
