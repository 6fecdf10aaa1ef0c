package svcwatch

// redis_tables.go: changing what a started Redis watcher watches: Unwatch,
// WatchPrefix and UnwatchPrefix. They run on the caller's goroutine; the
// catalog goroutine (redis_catalog.go) watches the tables that appear later.

import (
	"context"
)

// Unwatch stops watching a table watched by name (Watch, WithTables): OnRemove
// is delivered for each of its peers, then it is no longer synced, and
// Services reports nothing for it. It returns once those events were handled
// (called from a handler: they follow when the handler returns). A table also
// covered by a watched prefix stays watched until the prefix is undone too.
// Unwatching a table not watched by name is a no-op; self's own table cannot
// be unwatched by a watcher that registers (ErrInvalid). A table counts as
// under a prefix once the prefix found it (its announcement, or the scan):
// unwatched by name just before that, it is dropped, then found again with
// OnAdd for its peers.
func (w *RedisServiceWatcher) Unwatch(ctx context.Context, table string) error {
	run, err := w.current()
	if err != nil {
		return err
	}
	unwatched, err := w.b.RemoveTable(table)
	if err != nil || !unwatched {
		return err
	}
	w.stopSyncing(ctx, run, table)
	return w.stoppedOr(w.b.Flush(ctx))
}

// WatchPrefix watches every table under prefix, by whole path segments
// ("mygame/prod" covers "mygame/prod/20190510/game", not
// "mygame/production/game"), now and later. Before Start it only records the
// prefix. After Start it returns once every table under the prefix is loaded
// and OnAdd was delivered for its peers (from a handler: those events follow
// when it returns). A table that appears later is found through the catalog's
// announcement, within about a round trip of its first registration, or by
// the scan if the announcement was lost; its peers arrive as OnAdd.
func (w *RedisServiceWatcher) WatchPrefix(ctx context.Context, prefix string) error {
	run, err := w.current()
	if err != nil {
		return err
	}
	if _, _, err = w.b.AddPrefix(prefix); err != nil {
		return err
	}
	if run == nil {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(run.attempt, cancel)()
	if err := w.discover(ctx, run); err != nil {
		return w.stoppedOr(err)
	}
	return w.stoppedOr(w.b.Flush(ctx))
}

// UnwatchPrefix undoes WatchPrefix: the tables it alone kept watched are
// unwatched as by Unwatch (OnRemove for their peers, delivered before it
// returns). Tables watched by name or under another watched prefix stay.
// Unwatching a prefix not watched is a no-op.
func (w *RedisServiceWatcher) UnwatchPrefix(ctx context.Context, prefix string) error {
	run, err := w.current()
	if err != nil {
		return err
	}
	_, dropped, err := w.b.RemovePrefix(prefix)
	if err != nil {
		return err
	}
	for _, t := range dropped {
		w.stopSyncing(ctx, run, t)
	}
	return w.stoppedOr(w.b.Flush(ctx))
}

// discover subscribes to the catalog's announcements and reads the catalog,
// watching every table under a watched prefix; it returns once they are loaded.
func (w *RedisServiceWatcher) discover(ctx context.Context, run *running) error {
	if err := w.subscribeCatalog(ctx, run); err != nil {
		return err
	}
	return w.b.Retry(ctx, "read the catalog", func(ctx context.Context) error { return w.readCatalog(ctx, run) })
}

// stopSyncing ends the sync of a table no longer watched and drops its view
// (OnRemove for its peers are queued). run may be nil (not started).
func (w *RedisServiceWatcher) stopSyncing(ctx context.Context, run *running, table string) {
	w.mu.Lock()
	ts := w.syncs[table]
	delete(w.syncs, table)
	w.b.DropTable(table) // under mu, so that no load in flight brings it back
	w.mu.Unlock()
	if ts == nil || run == nil {
		return
	}
	w.subMu.Lock()
	defer w.subMu.Unlock()
	w.mu.Lock()
	again := w.syncs[table] != nil // watched again meanwhile: keep the channel
	w.mu.Unlock()
	if !again {
		// A failure leaves a channel whose messages are ignored; it goes at the
		// next reconnect.
		_ = w.currentPubSub(run).Unsubscribe(ctx, ts.keys.Channel)
	}
}

// current returns the running Start (nil before Start), or ErrStopped.
func (w *RedisServiceWatcher) current() (*running, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.state == stateStopped {
		return nil, ErrStopped
	}
	return w.run, nil
}
