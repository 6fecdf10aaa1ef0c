package mysql

// reap.go: removing what died, by whichever process's scan finds it: expired
// instances, a few per transaction with a revision bump; the mass-expiry
// guard that keeps an outage of the database from reaping everyone; and the
// collection of tables that have been empty for longer than the retention.
// Runs on the scan goroutine.

import (
	"context"
	"database/sql"
	"errors"
	"sort"
	"time"
)

// collectLimit bounds the tables one collection pass removes.
const collectLimit = 16

// guardAndReap keeps the guard row current and reaps the expired instances
// the scan found (and more, a batch at a time, while batches come back full).
// It returns the tables that had expired instances: their revision may have
// moved since the scan read it, by this process's reap or by another's that
// got there first, so the caller reads them again.
//
// The mass-expiry guard: the scans of all processes touch the guard row, so
// it is never older than a fraction of a TTL while anyone reaches the
// database. A scan that finds it older than half the TTL knows that nobody
// did (the database was down, frozen or cut off from everyone), so that the
// deadlines it holds are stale, not the processes dead: instead of reaping,
// it pushes every deadline out to now + that instance's TTL (once per TTL at
// most). The live heartbeat meanwhile; the dead are reaped one TTL later.
func (w *MySQLServiceWatcher) guardAndReap(ctx context.Context, res scanResult) map[string]bool {
	silenceMS := (w.conf.TTL / 2).Milliseconds()
	switch {
	case !res.guardFound:
		_, err := w.db.ExecContext(ctx, w.q.guardInit) // deleted by hand: made again
		w.noteRoundTrip(err)
		return nil
	case res.nowMS-res.lastMS > silenceMS:
		if w.guard(ctx, silenceMS) {
			return nil
		}
	case res.nowMS-res.lastMS > w.touchGap().Milliseconds():
		// Conditional, so that of the processes that scan at once, one writes.
		_, err := w.db.ExecContext(ctx, w.q.guardTouch, w.touchGap().Milliseconds())
		w.noteRoundTrip(err)
	}
	touched := make(map[string]bool)
	batch := res.expired
	for i := 0; len(batch) > 0; i++ {
		if !w.reap(ctx, batch, touched) || len(batch) < reapLimit || i+1 == reapBatches {
			break
		}
		var err error
		if batch, err = w.candidates(ctx); err != nil {
			break
		}
	}
	return touched
}

// touchGap is how old the guard row may be before a scan writes it again: a
// tenth of the TTL, far below the half TTL that the guard takes for silence,
// and far above the time between scans when many processes run.
func (w *MySQLServiceWatcher) touchGap() time.Duration { return w.conf.TTL / 10 }

// guard runs the guard's transaction; it reports whether it pushed deadlines
// out (then nothing is reaped this round).
func (w *MySQLServiceWatcher) guard(ctx context.Context, silenceMS int64) (pushed bool) {
	err := w.inTx(ctx, func(tx *sql.Tx) error {
		pushed = false
		var last, guarded, now int64
		if err := tx.QueryRowContext(ctx, w.q.guardLock).Scan(&last, &guarded, &now); err != nil {
			return err
		}
		if now-last <= silenceMS {
			return nil // another process got here first
		}
		if now-guarded < 2*silenceMS {
			// Pushed out within the last TTL: this is a process that scans
			// too seldom, or a second outage; reap as usual.
			_, err := tx.ExecContext(ctx, w.q.guardSet, now, guarded)
			return err
		}
		res, err := tx.ExecContext(ctx, w.q.guardPush, now, now)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, w.q.guardSet, now, now); err != nil {
			return err
		}
		n, _ := res.RowsAffected()
		w.log.Warn("svcwatch/mysql: nobody reached the database for over half a TTL; pushed every deadline out by one TTL instead of reaping",
			"silence_ms", now-last, "instances", n)
		pushed = true
		return nil
	})
	return err == nil && pushed
}

// candidates reads a batch of expired instances, oldest first.
func (w *MySQLServiceWatcher) candidates(ctx context.Context) ([]expired, error) {
	ctx, cancel := context.WithTimeout(ctx, w.callTimeout())
	defer cancel()
	var out []expired
	err := w.queryRows(ctx, func(rows *sql.Rows) error {
		var tbl, id []byte
		if err := rows.Scan(&tbl, &id); err != nil {
			return err
		}
		out = append(out, expired{table: string(tbl), id: string(id)})
		return nil
	}, w.q.candidates, reapLimit)
	return out, err
}

// reap removes the expired instances of batch, one transaction per table
// (each bumping its revision if it removed any), and records in touched the
// tables it went through. Each deadline is checked again under the table's
// lock: a heartbeat, the guard or another process's reap may have got there
// first. It reports whether every transaction went through.
func (w *MySQLServiceWatcher) reap(ctx context.Context, batch []expired, touched map[string]bool) bool {
	byTable := make(map[string][]string)
	for _, e := range batch {
		byTable[e.table] = append(byTable[e.table], e.id)
	}
	tables := make([]string, 0, len(byTable))
	for t := range byTable {
		tables = append(tables, t)
	}
	sort.Strings(tables)
	for _, table := range tables {
		ids := byTable[table]
		var removed int64
		cctx, cancel := context.WithTimeout(ctx, w.callTimeout())
		err := w.inTx(cctx, func(tx *sql.Tx) error {
			removed = 0
			if err := w.lockTable(cctx, tx, table); err != nil {
				return err
			}
			for _, id := range ids {
				res, err := tx.ExecContext(cctx, w.q.reap, table, id)
				if err != nil {
					return err
				}
				n, _ := res.RowsAffected()
				removed += n
			}
			if removed == 0 {
				return nil
			}
			return w.bump(cctx, tx, table)
		})
		cancel()
		if err != nil {
			return false
		}
		touched[table] = true
		if removed > 0 {
			w.log.Debug("svcwatch/mysql: reaped expired instances", "table", table, "count", removed)
		}
	}
	return true
}

// collect removes the revision rows of tables that have had no instance for
// longer than the retention, a few per pass, each in a transaction that
// checks again under the row's lock that no instance came meanwhile (a
// registration takes the same lock first). A watcher of a collected table
// finds its revision row gone at the next scan: its view is read again (and is
// empty), and a table found under a prefix stops being watched.
func (w *MySQLServiceWatcher) collect(ctx context.Context) {
	retention := w.conf.TableRetention.Milliseconds()
	cctx, cancel := context.WithTimeout(ctx, w.callTimeout())
	defer cancel()
	var tables []string
	err := w.queryRows(cctx, func(rows *sql.Rows) error {
		var tbl []byte
		if err := rows.Scan(&tbl); err != nil {
			return err
		}
		tables = append(tables, string(tbl))
		return nil
	}, w.q.gcCandidates, retention, collectLimit)
	if err != nil {
		return
	}
	for _, table := range tables {
		err := w.inTx(cctx, func(tx *sql.Tx) error {
			var old bool
			err := tx.QueryRowContext(cctx, w.q.gcLock, retention, table).Scan(&old)
			if errors.Is(err, sql.ErrNoRows) || (err == nil && !old) {
				return nil
			}
			if err != nil {
				return err
			}
			_, err = tx.ExecContext(cctx, w.q.gcDelete, table, table)
			return err
		})
		if err != nil {
			return
		}
	}
}
