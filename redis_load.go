package svcwatch

// redis_load.go: full reads of a table: one atomic script call that returns the
// table's position and its live records, turned into the view. Runs on the
// goroutine of Start or Watch (first loads) or on the sync goroutine (reloads).

import (
	"context"
	"fmt"
	"sort"
	"time"
)

// loadUntilDone loads a table, retrying until ctx ends, unless someone else
// loaded it first.
func (w *RedisServiceWatcher) loadUntilDone(ctx context.Context, ts *tableSync) error {
	select {
	case <-ts.loadedCh:
		return nil
	default:
	}
	return w.b.Retry(ctx, "load "+ts.table, func(ctx context.Context) error { return w.loadTable(ctx, ts) })
}

// loadTable reads the whole table atomically and makes it the view.
func (w *RedisServiceWatcher) loadTable(ctx context.Context, ts *tableSync) error {
	ctx, cancel := context.WithTimeout(ctx, 2*w.callTimeout())
	defer cancel()
	res, err := w.eval(ctx, scriptLoad, ts).Slice()
	w.noteRoundTrip(err)
	if err != nil {
		return fmt.Errorf("svcwatch: load %s: %w", ts.table, err)
	}
	w.b.CountFullLoad()
	if len(res) != 5 {
		return fmt.Errorf("svcwatch: load %s: unexpected reply of %d items", ts.table, len(res))
	}
	epoch, _ := res[0].(string)
	rev, _ := res[1].(int64)
	flat, _ := res[3].([]interface{})
	tok, _ := res[4].(string)
	insts := make([]Instance, 0, len(flat)/3)
	for i := 0; i+2 < len(flat); i += 3 {
		id, _ := flat[i].(string)
		raw, _ := flat[i+1].(string)
		inst, err := decodeRecord(ts.table, id, raw, w.conf.MaxDescSize)
		if err != nil {
			w.logBadOnce(ts.table, id, err)
			continue
		}
		insts = append(insts, inst)
	}
	sort.Slice(insts, func(i, j int) bool { return insts[i].ID < insts[j].ID }) // events in a stable order

	if held, newEpoch := w.applyLoad(ts, epoch, rev, tok, insts); held {
		w.log.Warn("svcwatch: table data lost, restored or rolled back; holding back removals for one TTL",
			"table", ts.table, "ttl", w.conf.TTL, "new_epoch", newEpoch)
	}
	return nil
}

// applyLoad makes a full read the view, under mu. It reports whether removals
// are now held back because the table's data was lost, restored or rolled back,
// and whether a new epoch showed it.
func (w *RedisServiceWatcher) applyLoad(ts *tableSync, epoch string, rev int64, tok string, insts []Instance) (held, newEpoch bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.syncs[ts.table] != ts {
		return false, false // unwatched while it was read
	}
	ts.lastLoad = w.b.Now()
	sameEpoch := ts.loaded && epoch == ts.epoch
	if !ts.diverged && sameEpoch && rev < ts.rev && ts.history[rev] == tok {
		// Messages got ahead of this read: the view is newer already. (Unless
		// the scan saw Redis go back: then this read is the truth.)
		ts.reloadAt, ts.force = time.Time{}, false
		return false, false
	}
	newEpoch = ts.loaded && ts.epoch != "" && epoch != ts.epoch
	rewritten := ts.diverged || (sameEpoch && rev <= ts.rev && ts.history[rev] != tok)
	var hold time.Time
	// An empty view has nothing to hold back: the table was collected (it has
	// no keys, and is maybe re-created), or it was empty when Redis lost it.
	if (newEpoch || rewritten) && w.reg.size(ts.table) > 0 {
		// Redis lost, restored or rolled back the table's data (an empty restart,
		// a restore, a failover to a replica that missed writes). The processes
		// that are alive register again within a keepalive interval; until one
		// TTL has passed, a missing or expiring instance is more likely lost data
		// than dead. (A table that had no epoch yet is simply new.)
		hold = w.b.Now().Add(w.conf.TTL)
		ts.holdExpiredUntil = hold
	}
	if rewritten || ts.epoch != epoch {
		ts.history = nil
	}
	ts.epoch, ts.diverged = epoch, false
	ts.remember(rev, tok)
	ts.reloadAt, ts.force = time.Time{}, false
	w.b.ReplaceTable(ts.table, insts, hold)
	if !ts.loaded {
		ts.loaded = true
		close(ts.loadedCh)
		w.applyEarly(ts)
	}
	return !hold.IsZero(), newEpoch
}
