package svcwatch

// redis_catalog.go: the catalog of tables on Redis: registration adds self's
// table to it (a second, idempotent call), prefix watchers follow its
// announcements, and the catalog loop finds the tables under the watched
// prefixes and collects emptied tables. The loop runs on the catalog
// goroutine, owned by the running Start and ended by Stop; announcements
// arrive on the sync goroutine, which only queues them.

import (
	"context"
	"fmt"
	mrand "math/rand"
	"sort"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch/protocol"
)

var (
	scriptCatalogTouch = redis.NewScript(protocol.CatalogTouch)
	scriptCatalogDrop  = redis.NewScript(protocol.CatalogDrop)
	scriptCatalogDue   = redis.NewScript(protocol.CatalogDue)
	scriptGC           = redis.NewScript(protocol.GC)
)

const (
	// gcReapLimit bounds the expired entries one collection call reaps.
	gcReapLimit = 1000
	// gcBatch bounds the tables one collection pass looks at.
	gcBatch = 16
	// gcEveryMax caps the time between two collection passes.
	gcEveryMax = 10 * time.Minute
	// gcSilence is the collection's silence: it never elapses, so the
	// mass-expiry guard stays out of it (see gc.lua).
	gcSilence = int64(1) << 40
)

// catalogOp is an announcement queued for the catalog goroutine.
type catalogOp struct {
	op    string // protocol.CatalogAdd or protocol.CatalogDel
	table string
}

// touchCatalog adds table to the catalog or raises its score to at (zero:
// Redis's now).
func (w *RedisServiceWatcher) touchCatalog(ctx context.Context, table string, at int64) error {
	arg := ""
	if at > 0 {
		arg = fmt.Sprint(at)
	}
	err := scriptCatalogTouch.Run(ctx, w.client, w.cat.Script(), w.cat.Channel, table, arg).Err()
	w.noteRoundTrip(err)
	if err != nil {
		return fmt.Errorf("svcwatch: catalog: add %s: %w", table, err)
	}
	return nil
}

// onCatalogMessage queues an announcement for the catalog goroutine; a gap in
// the catalog's revisions (or junk) asks for a full read of the catalog.
func (w *RedisServiceWatcher) onCatalogMessage(run *running, payload string) {
	m, err := protocol.DecodeCatalogMessage(payload)
	w.mu.Lock()
	if err != nil || m.Rev != w.catRev+1 {
		run.catFull = true
	}
	if err == nil {
		w.catRev = max(w.catRev, m.Rev)
		run.catOps = append(run.catOps, catalogOp{m.Op, m.Table})
		if len(run.catOps) > earlyMax { // a flood: read the catalog instead
			run.catOps, run.catFull = nil, true
		}
	}
	w.mu.Unlock()
	if err != nil {
		w.logBadOnce("catalog", "", err)
	}
	kick(run.catKick)
}

func kick(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// requestCatalogRead asks the catalog goroutine for a full read of the catalog.
func (w *RedisServiceWatcher) requestCatalogRead(run *running) {
	w.mu.Lock()
	run.catFull = true
	w.mu.Unlock()
	kick(run.catKick)
}

// catalogLoop follows the catalog for the watched prefixes and collects
// emptied tables every collection interval.
func (w *RedisServiceWatcher) catalogLoop(run *running, gc Timer) {
	defer close(run.catDone)
	defer gc.Stop()
	for {
		select {
		case <-run.ctx.Done():
			return
		case <-run.catKick:
			w.followCatalog(run.ctx, run)
		case <-gc.C():
			w.collect(run.ctx)
			gc.Reset(w.gcDelay())
		}
	}
}

// gcDelay is the time to the next collection pass: a quarter of the retention,
// at least the scan interval and at most gcEveryMax, less up to a quarter at
// random so that the watchers of a cluster spread their passes.
func (w *RedisServiceWatcher) gcDelay() time.Duration {
	d := min(max(w.conf.TableRetention/4, w.conf.ScanInterval), gcEveryMax)
	return d - time.Duration(mrand.Int63n(int64(d/4)+1))
}

// followCatalog applies the queued announcements, and reads the whole catalog
// when one was missed.
func (w *RedisServiceWatcher) followCatalog(ctx context.Context, run *running) {
	w.mu.Lock()
	ops, full := run.catOps, run.catFull
	run.catOps, run.catFull = nil, false
	w.mu.Unlock()
	if len(w.b.Prefixes()) == 0 {
		return
	}
	var found []string
	for _, op := range ops {
		switch op.op {
		case protocol.CatalogAdd:
			found = append(found, op.table)
		case protocol.CatalogDel:
			w.forgetIfEmpty(ctx, run, op.table)
		}
	}
	if err := w.watchFound(ctx, run, found); err != nil {
		full = true
	}
	if full {
		if err := w.readCatalog(ctx, run); err != nil {
			w.mu.Lock()
			run.catFull = true // the scan kicks again when Redis answers
			w.mu.Unlock()
		}
	}
}

// readCatalog reads the whole catalog: the tables under a watched prefix are
// watched, and tables found before that left it while empty are dropped.
func (w *RedisServiceWatcher) readCatalog(ctx context.Context, run *running) error {
	cctx, cancel := context.WithTimeout(ctx, 2*w.callTimeout())
	defer cancel()
	pipe := w.client.Pipeline()
	revCmd := pipe.Get(cctx, w.cat.Rev)
	listCmd := pipe.ZRange(cctx, w.cat.Tables, 0, -1)
	_, _ = pipe.Exec(cctx)
	rev, err := revCmd.Int64()
	if err == redis.Nil {
		rev, err = 0, nil
	}
	if err == nil {
		err = listCmd.Err()
	}
	w.noteRoundTrip(err)
	if err != nil {
		return fmt.Errorf("svcwatch: read the catalog: %w", err)
	}
	listed := listCmd.Val()
	w.mu.Lock()
	w.catRev = rev
	w.mu.Unlock()
	in := make(map[string]bool, len(listed))
	for _, t := range listed {
		in[t] = true
	}
	for _, t := range w.syncedTables() {
		if !in[t] {
			w.forgetIfEmpty(ctx, run, t)
		}
	}
	return w.watchFound(ctx, run, listed)
}

// syncedTables returns the tables being synced, sorted.
func (w *RedisServiceWatcher) syncedTables() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for t := range w.syncs {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// forgetIfEmpty stops watching a table that was found under a prefix and has
// left the catalog (collected), if its view is empty: a table that still has
// instances lost only its catalog entry, which its processes write again.
func (w *RedisServiceWatcher) forgetIfEmpty(ctx context.Context, run *running, table string) {
	if w.reg.size(table) > 0 {
		return
	}
	if w.b.ForgetFoundTable(table) {
		w.stopSyncing(ctx, run, table)
	}
}

// watchFound watches the tables, among the given ones, that a watched prefix
// covers and that were not watched: it subscribes to them all at once, then
// loads each. It returns once every covered table is loaded.
func (w *RedisServiceWatcher) watchFound(ctx context.Context, run *running, tables []string) error {
	var fresh, covered []*tableSync
	w.mu.Lock()
	if w.state == stateStopped {
		w.mu.Unlock()
		return ErrStopped
	}
	for _, t := range tables {
		if w.b.AddFoundTable(t) {
			fresh = append(fresh, w.syncFor(t))
		}
		if ts := w.syncs[t]; ts != nil && w.b.Covers(t) {
			covered = append(covered, ts)
		}
	}
	w.mu.Unlock()
	if len(fresh) > 0 {
		if err := w.subscribe(ctx, run, fresh); err != nil {
			return err
		}
	}
	for _, ts := range covered {
		select {
		case <-ts.confirmed:
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := w.loadUntilDone(ctx, ts); err != nil {
			return err
		}
	}
	return nil
}

// subscribeCatalog subscribes to the catalog's announcements, once per Start,
// and waits for the confirmation.
func (w *RedisServiceWatcher) subscribeCatalog(ctx context.Context, run *running) error {
	w.mu.Lock()
	first := !run.catSubscribed
	run.catSubscribed = true
	w.mu.Unlock()
	if first {
		w.subMu.Lock()
		err := w.currentPubSub(run).Subscribe(ctx, w.cat.Channel)
		w.subMu.Unlock()
		if err != nil {
			w.log.Debug("svcwatch: subscribe to the catalog failed; the subscription retries", "err", err)
		}
	}
	select {
	case <-run.catConfirmed:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("svcwatch: subscribe to the catalog: %w", ctx.Err())
	}
}

// onCatalogSubscribed records the catalog channel's subscribe confirmation; a
// second one means announcements may have been lost: read the catalog.
func (w *RedisServiceWatcher) onCatalogSubscribed(run *running) {
	w.mu.Lock()
	again := run.catConfirmedOnce
	if !again {
		run.catConfirmedOnce = true
		close(run.catConfirmed)
	}
	w.mu.Unlock()
	if again {
		w.requestCatalogRead(run)
	}
}

// collect is one collection pass: self's table is touched in the catalog (so
// that a catalog that lost it heals, and a live table is never a candidate),
// then each table that showed no sign of life for the retention is asked, by
// one script on its own keys, whether it is empty; one that was empty for the
// retention is deleted there, then dropped from the catalog unless a
// registration came in between. Any number of processes may collect at once:
// each step is atomic and idempotent.
func (w *RedisServiceWatcher) collect(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 4*w.callTimeout())
	defer cancel()
	if !w.conf.WatchOnly && w.registered.Load() {
		_ = w.touchCatalog(ctx, w.Self().Table, 0)
	}
	retention := w.conf.TableRetention.Milliseconds()
	res, err := scriptCatalogDue.Run(ctx, w.client, []string{w.cat.Tables}, retention, gcBatch).StringSlice()
	w.noteRoundTrip(err)
	if err != nil {
		return
	}
	for i := 0; i+1 < len(res); i += 2 {
		table, score := res[i], res[i+1]
		if checkTable(table) != nil {
			continue // not a table this library writes; leave it alone
		}
		w.collectTable(ctx, table, score)
	}
}

// collectTable runs the collection script on one candidate table and brings
// its catalog entry in line with the answer.
func (w *RedisServiceWatcher) collectTable(ctx context.Context, table, score string) {
	keys := protocol.TableKeys(w.conf.KeyPrefix, table)
	retention := w.conf.TableRetention.Milliseconds()
	args := protocol.ScriptArgs(keys, gcSilence, gcReapLimit, newToken(), retention)
	res, err := scriptGC.Run(ctx, w.client, keys.Script(), args...).Slice()
	w.noteRoundTrip(err)
	if err != nil || len(res) == 0 {
		return
	}
	switch status, _ := res[0].(string); status {
	case "collected", "gone":
		dropped, err := scriptCatalogDrop.Run(ctx, w.client, w.cat.Script(), w.cat.Channel, table, score).Int()
		w.noteRoundTrip(err)
		if status == "collected" {
			w.log.Info("svcwatch: collected a table that had no instance for the retention",
				"table", table, "retention", w.conf.TableRetention, "catalog_entry_dropped", dropped == 1)
		}
	case "live":
		_ = w.touchCatalog(ctx, table, 0)
	case "empty":
		if len(res) > 1 {
			since, _ := res[1].(int64)
			_ = w.touchCatalog(ctx, table, since)
		}
	}
}
