package svcwatch

// redis_sync.go: keeping each watched table's view current: the pub/sub
// subscription, applying change messages in order, and scheduling reloads
// (the safety nets that ask for them are in redis_scan.go). syncLoop runs on
// the sync goroutine, owned by the running Start and ended by Stop; subscribe
// runs on the goroutine of Start or Watch.
// Full reads of a table are in redis_load.go.

import (
	"context"
	"fmt"
	mrand "math/rand"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch/protocol"
)

// tableSync is what the watcher knows of one table's position in Redis.
// table, keys, confirmed and loadedCh are set at creation and never change;
// every other field is guarded by RedisServiceWatcher.mu (the channels are
// closed under it too).
type tableSync struct {
	table     string
	keys      protocol.Keys
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
	// heard: a message of this table arrived since the last scan; silentMoves
	// counts the scans in a row that found it moved forward without one.
	heard       bool
	silentMoves int
	// early holds the messages that came before the first load finished;
	// earlyLost says some did not fit.
	early     []early
	earlyLost bool
	// holdExpiredUntil: after a new epoch, expiry removals are held back until then.
	holdExpiredUntil time.Time
	// reloadAt: when a pending reload is due (zero: none); it is skipped if the
	// view reaches (wantEpoch, wantRev, wantTok) first, and never when force is set.
	// lastLoad: when the table was last read, so that reloads asked for by
	// messages come at most every reloadGap.
	reloadAt  time.Time
	lastLoad  time.Time
	wantEpoch string
	wantRev   int64
	wantTok   string
	force     bool
}

// syncFor returns the table's sync state, making it on first use. Caller holds mu.
func (w *RedisServiceWatcher) syncFor(table string) *tableSync {
	if ts := w.syncs[table]; ts != nil {
		return ts
	}
	ts := &tableSync{
		table:     table,
		keys:      protocol.TableKeys(w.conf.KeyPrefix, table),
		confirmed: make(chan struct{}),
		loadedCh:  make(chan struct{}),
	}
	w.syncs[table] = ts
	return ts
}

// tableOfChannel inverts the channel name.
func (w *RedisServiceWatcher) tableOfChannel(ch string) string {
	t, _ := protocol.TableOf(w.conf.KeyPrefix, protocol.SuffixChannel, ch)
	return t
}

// subscribe asks for the tables' channels and waits for Redis to confirm them.
// A failed SUBSCRIBE is not fatal: the subscription keeps the channels and
// subscribes again when it reconnects.
func (w *RedisServiceWatcher) subscribe(ctx context.Context, run *running, syncs []*tableSync) error {
	channels := make([]string, len(syncs))
	for i, ts := range syncs {
		channels[i] = ts.keys.Channel
	}
	w.subMu.Lock()
	subErr := w.currentPubSub(run).Subscribe(ctx, channels...)
	w.subMu.Unlock()
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

// syncTimers are the sync loop's schedules, made when Start begins.
type syncTimers struct{ scan, reload, resync Timer }

func (w *RedisServiceWatcher) newSyncTimers() syncTimers {
	reload := w.b.NewTimer(time.Hour)
	reload.Stop() // armed when a reload is due
	return syncTimers{scan: w.b.NewTimer(w.conf.ScanInterval), reload: reload, resync: w.b.NewTimer(w.resyncDelay())}
}

// syncLoop owns the subscription's messages, the safety-net scan and reloads.
func (w *RedisServiceWatcher) syncLoop(run *running, timers syncTimers) {
	defer close(run.syncDone)
	scan, reload, resync := timers.scan, timers.reload, timers.resync
	defer scan.Stop()
	defer reload.Stop()
	defer resync.Stop()
	msgs := run.msgs
	for {
		select {
		case <-run.ctx.Done():
			// go-redis's reader blocks on a full channel even after Close (for
			// up to a minute): read on until Stop's Close ends the channel.
			for range msgs {
			}
			return
		case m, ok := <-msgs:
			if !ok {
				return
			}
			w.onPubSub(run, m)
		case <-scan.C():
			if stalled := w.scan(run.ctx, run); stalled {
				msgs = w.resubscribe(run)
			}
			w.b.ReleaseHolds(w.b.Now())
			scan.Reset(w.conf.ScanInterval)
		case <-resync.C():
			w.resyncAll()
			resync.Reset(w.resyncDelay())
		case <-reload.C():
		}
		next := w.reloadDue(run.ctx)
		if !reload.Stop() {
			select {
			case <-reload.C():
			default:
			}
		}
		if !next.IsZero() {
			reload.Reset(next.Sub(w.b.Now()))
		}
	}
}

func (w *RedisServiceWatcher) onPubSub(run *running, m interface{}) {
	switch m := m.(type) {
	case *redis.Subscription:
		if m.Kind != "subscribe" {
			return
		}
		w.noteRoundTrip(nil)
		if m.Channel == w.cat.Channel {
			w.onCatalogSubscribed(run)
			return
		}
		if table, again := w.onSubscribed(w.tableOfChannel(m.Channel)); again {
			w.log.Info("svcwatch: subscription re-established; reading the table again", "table", table)
		}
	case *redis.Message:
		if m.Channel == w.cat.Channel {
			w.onCatalogMessage(run, m.Payload)
			return
		}
		w.applyMessage(w.tableOfChannel(m.Channel), m.Payload)
	}
}

// onSubscribed records a subscribe confirmation; it reports whether it was a
// re-subscription, after which the table is read again.
func (w *RedisServiceWatcher) onSubscribed(table string) (string, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ts := w.syncs[table]
	if ts == nil {
		return table, false
	}
	if !ts.subscribedOnce {
		ts.subscribedOnce = true
		close(ts.confirmed)
		return table, false
	}
	// Messages may have been lost while it was down. Jittered, so that a
	// cluster-wide reconnect does not become a reload storm.
	ts.scheduleReload(w.b.Now().Add(w.reconnectJitter()), "", 0, "", true)
	return table, true
}

func (w *RedisServiceWatcher) reconnectJitter() time.Duration {
	max := min(w.conf.ScanInterval/2, time.Second)
	return time.Duration(mrand.Int63n(int64(max) + 1))
}

// reloadGap is the shortest time between two reads of a table that messages
// ask for: an eighth of the scan interval (500 ms at defaults).
func (w *RedisServiceWatcher) reloadGap() time.Duration { return w.conf.ScanInterval / 8 }

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
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
	m, err := protocol.DecodeMessage(payload)
	if err != nil {
		w.logBadOnce(table, "", err)
	}
	var inst Instance
	var recErr error
	if err == nil && (m.Op == protocol.OpAdd || m.Op == protocol.OpUpdate) {
		inst, recErr = decodeRecord(table, m.ID, m.Rec, w.conf.MaxDescSize)
	}
	if w.applyInOrder(table, early{m, err, inst, recErr}) && recErr != nil {
		w.logBadOnce(table, m.ID, recErr)
	}
}

// early is a decoded change message, kept while its table's first load is
// under way.
type early struct {
	m      protocol.Message
	msgErr error
	inst   Instance
	recErr error
}

// earlyMax bounds the messages kept for a table whose first load is under way;
// beyond it, the table is read again once loaded.
const earlyMax = 1024

// applyInOrder is applyMessage's part under mu; it reports whether the message
// was next in order (and so applied, or skipped as unreadable when recErr is
// set). A message that arrives before the table's first load is kept and
// applied after it (applyEarly), so that a change made while the table was
// being read is not missed until the next read.
func (w *RedisServiceWatcher) applyInOrder(table string, e early) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	ts := w.syncs[table]
	switch {
	case ts == nil:
		return false
	case !ts.loaded:
		if len(ts.early) < earlyMax {
			ts.early = append(ts.early, e)
		} else {
			ts.earlyLost = true
		}
		return false
	}
	return w.applyLocked(ts, e)
}

// applyEarly applies the messages kept while the first load was under way
// (those the load already holds are skipped as old). Caller holds mu.
func (w *RedisServiceWatcher) applyEarly(ts *tableSync) {
	for _, e := range ts.early {
		w.applyLocked(ts, e)
	}
	if ts.earlyLost {
		ts.scheduleReload(w.b.Now(), "", 0, "", true)
	}
	ts.early, ts.earlyLost = nil, false
}

// applyLocked applies one message to a loaded table. Caller holds mu.
func (w *RedisServiceWatcher) applyLocked(ts *tableSync, e early) bool {
	table, m, msgErr, inst, recErr := ts.table, e.m, e.msgErr, e.inst, e.recErr
	ts.heard = true
	now := w.b.Now()
	// Reloads that messages ask for come at most every reloadGap, so that a
	// flood of junk or out-of-order messages costs a few reads, not one each.
	soon := maxTime(now, ts.lastLoad.Add(w.reloadGap()))
	if msgErr != nil {
		ts.scheduleReload(soon, "", 0, "", true)
		return false
	}
	if m.Epoch == ts.epoch && m.Rev <= ts.rev {
		if tok, ok := ts.history[m.Rev]; ok && tok != m.Tok {
			ts.diverged = true
			ts.scheduleReload(soon, "", 0, "", true)
		}
		return false // already in the view (a read overtook the message)
	}
	if ts.epoch == "" && ts.rev == 0 && m.Rev == 1 && m.Prev == "" {
		ts.epoch = m.Epoch // the first change of a table that was empty when read
	}
	if m.Epoch != ts.epoch || m.Rev != ts.rev+1 || m.Prev != ts.tok {
		ts.diverged = ts.diverged || (m.Epoch == ts.epoch && m.Rev == ts.rev+1)
		ts.scheduleReload(soon, "", 0, "", true)
		return false
	}
	ts.remember(m.Rev, m.Tok)
	switch m.Op {
	case protocol.OpAdd, protocol.OpUpdate:
		if recErr != nil {
			// As a full read would: a record this watcher cannot read is absent.
			w.b.RemoveInstance(table, m.ID, time.Time{})
			break
		}
		w.b.PutInstance(inst)
	case protocol.OpDel:
		w.b.RemoveInstance(table, m.ID, time.Time{})
	case protocol.OpExpired:
		var hold time.Time
		if now.Before(ts.holdExpiredUntil) {
			hold = ts.holdExpiredUntil
		}
		w.b.RemoveInstance(table, m.ID, hold)
	}
	w.b.MarkSynced()
	return true
}

// reloadDue runs the reloads that are due and returns when the next one is.
func (w *RedisServiceWatcher) reloadDue(ctx context.Context) time.Time {
	now := w.b.Now()
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
			retryAt := now.Add(w.conf.ScanInterval / 2) // Redis away: try again soon
			w.mu.Lock()
			ts.reloadAt = retryAt
			w.mu.Unlock()
			if next.IsZero() || retryAt.Before(next) {
				next = retryAt
			}
		}
	}
	return next
}
