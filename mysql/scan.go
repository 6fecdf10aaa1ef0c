package mysql

// scan.go: keeping each watched table's view current without push. Every scan
// interval, one statement reads the revision row of each watched table and of
// each table under a watched prefix, the guard row and a few expired
// instances; a table is read again only when its (epoch, revision) moved. The
// scan loop runs on the scan goroutine, owned by the running Start and ended
// by Stop; loads also run on the goroutine of Start, Watch or WatchPrefix.

import (
	"context"
	"database/sql"
	"fmt"
	mrand "math/rand"
	"sort"
	"strings"
	"time"

	"github.com/svcwatch/svcwatch"
)

// reapLimit bounds the expired instances one scan finds and one reap
// transaction removes, so that each stays short however many processes died
// at once; reapBatches bounds the batches of one scan.
const (
	reapLimit   = 16
	reapBatches = 8
)

// scanLoop runs the scan every scan interval, and the anti-entropy reads and
// the collection of emptied tables every resync interval, until Stop.
func (w *MySQLServiceWatcher) scanLoop(run *running, scan, resync svcwatch.Timer) {
	defer close(run.scanDone)
	defer scan.Stop()
	defer resync.Stop()
	for {
		select {
		case <-run.ctx.Done():
			return
		case <-scan.C():
			w.scan(run.ctx)
			scan.Reset(w.scanDelay(false))
		case <-resync.C():
			w.resync(run.ctx)
			resync.Reset(w.resyncDelay())
		}
	}
}

// scanDelay is the time to the next scan: at first a random part of the scan
// interval, then between nine tenths of it and all of it, at random. Processes
// started together (a deploy) would otherwise scan in step: all of them would
// see a change at the same moment, and race each other to reap.
func (w *MySQLServiceWatcher) scanDelay(first bool) time.Duration {
	d := w.conf.ScanInterval
	if first {
		return 1 + time.Duration(mrand.Int63n(int64(d)))
	}
	return d - time.Duration(mrand.Int63n(int64(d/10)+1))
}

// resyncDelay is the time to the next anti-entropy read: the resync
// interval, less up to a quarter at random, so that processes spread out.
func (w *MySQLServiceWatcher) resyncDelay() time.Duration {
	d := w.conf.ResyncInterval
	return d - time.Duration(mrand.Int63n(int64(d/4)+1))
}

// scanResult is what one scan statement read.
type scanResult struct {
	named      map[string]bool     // the watched tables the statement asked for
	prefixes   []string            // the watched prefixes it asked for
	revs       map[string]position // revision rows found, watched or under a prefix
	lastMS     int64               // the guard row: when a scan last reached the database
	nowMS      int64               // the database's clock
	guardFound bool
	expired    []expired // instances whose deadline passed, oldest first
}

type expired struct{ table, id string }

// asked reports whether the scan statement asked for table's revision row: a
// table watched since (by Watch or WatchPrefix, which load it themselves) is
// for the next scan to judge.
func (r scanResult) asked(table string) bool {
	if r.named[table] {
		return true
	}
	for _, p := range r.prefixes {
		if svcwatch.UnderPrefix(table, p) {
			return true
		}
	}
	return false
}

// scan is one round of the scan loop.
func (w *MySQLServiceWatcher) scan(ctx context.Context) {
	res, err := w.readScan(ctx)
	if err != nil {
		return // keep the last view; Stats shows Connected false
	}
	touched := w.guardAndReap(ctx, res)
	w.apply(ctx, res, touched)
}

// readScan runs the scan statement.
func (w *MySQLServiceWatcher) readScan(ctx context.Context) (scanResult, error) {
	tables, prefixes := w.Tables(), w.b.Prefixes()
	var conds []string
	var args []any
	if len(tables) > 0 {
		conds = append(conds, "tbl IN (?"+strings.Repeat(", ?", len(tables)-1)+")")
		for _, t := range tables {
			args = append(args, t)
		}
	}
	for _, p := range prefixes {
		cond, a := prefixCond(p)
		conds, args = append(conds, cond), append(args, a...)
	}
	if len(conds) == 0 {
		conds = []string{"FALSE"}
	}
	args = append(args, reapLimit)
	query := w.q.scanHead + "(" + strings.Join(conds, " OR ") + ")" + w.q.scanTail

	ctx, cancel := context.WithTimeout(ctx, w.callTimeout())
	defer cancel()
	res := scanResult{named: make(map[string]bool, len(tables)), prefixes: prefixes, revs: make(map[string]position)}
	for _, t := range tables {
		res.named[t] = true
	}
	err := w.queryRows(ctx, func(rows *sql.Rows) error {
		var kind int
		var tbl, s []byte
		var n1, n2 sql.NullInt64
		if err := rows.Scan(&kind, &tbl, &n1, &n2, &s); err != nil {
			return err
		}
		switch kind {
		case 0:
			res.revs[string(tbl)] = position{epoch: string(s), rev: n1.Int64}
		case 1:
			res.guardFound, res.lastMS, res.nowMS = true, n1.Int64, n2.Int64
		case 2:
			res.expired = append(res.expired, expired{table: string(tbl), id: string(s)})
		}
		return nil
	}, query, args...)
	return res, err
}

// queryRows runs query and calls each for every row.
func (w *MySQLServiceWatcher) queryRows(ctx context.Context, each func(*sql.Rows) error, query string, args ...any) error {
	rows, err := w.db.QueryContext(ctx, query, args...)
	if err == nil {
		for rows.Next() && err == nil {
			err = each(rows)
		}
		if cerr := rows.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = rows.Err()
		}
	}
	w.noteRoundTrip(err)
	return err
}

// apply reads again the watched tables whose revision moved (or that this
// scan went through to reap), and starts watching the tables new under a
// watched prefix.
func (w *MySQLServiceWatcher) apply(ctx context.Context, res scanResult, touched map[string]bool) {
	w.loadMu.Lock()
	defer w.loadMu.Unlock()
	moved := false
	var found []string
	for table := range res.revs {
		// Also for a table watched by name: the prefix then keeps it past
		// an Unwatch.
		if w.b.AddFoundTable(table) {
			found = append(found, table)
		}
	}
	sort.Strings(found)
	for _, table := range w.Tables() {
		// A table found under a prefix whose revision row is gone was
		// collected: it is watched no more (unless also by name).
		if _, ok := res.revs[table]; !ok && res.asked(table) && w.b.Covers(table) && w.b.ForgetFoundTable(table) {
			w.dropLocked(table)
			moved = true
		}
	}
	for _, table := range w.Tables() {
		held, loaded := w.pos[table]
		if loaded && (!res.asked(table) || (held == res.revs[table] && !touched[table])) {
			continue
		}
		moved = true
		if err := w.loadLocked(ctx, table); err != nil {
			return // the next scan tries again
		}
	}
	if !moved && len(found) == 0 {
		w.b.MarkSynced()
	}
}

// resync reads every watched table in full, the anti-entropy net for a
// database edited by hand without a revision bump, then collects the tables
// that have been empty for longer than the retention.
func (w *MySQLServiceWatcher) resync(ctx context.Context) {
	w.loadMu.Lock()
	for _, table := range w.Tables() {
		if err := w.loadLocked(ctx, table); err != nil {
			break
		}
	}
	w.loadMu.Unlock()
	w.collect(ctx)
}

// discoverPrefixes lists the tables under the watched prefixes, watches the
// new ones and loads them (Start).
func (w *MySQLServiceWatcher) discoverPrefixes(ctx context.Context) error {
	prefixes := w.b.Prefixes()
	if len(prefixes) == 0 {
		return nil
	}
	return w.discover(ctx, prefixes)
}

// discover lists the tables under prefixes and loads each one not loaded yet.
func (w *MySQLServiceWatcher) discover(ctx context.Context, prefixes []string) error {
	var conds []string
	var args []any
	for _, p := range prefixes {
		cond, a := prefixCond(p)
		conds, args = append(conds, cond), append(args, a...)
	}
	query := w.q.scanHead + "(" + strings.Join(conds, " OR ") + ")"
	cctx, cancel := context.WithTimeout(ctx, w.callTimeout())
	defer cancel()
	var tables []string
	err := w.queryRows(cctx, func(rows *sql.Rows) error {
		var kind int
		var tbl, s []byte
		var n1, n2 sql.NullInt64
		if err := rows.Scan(&kind, &tbl, &n1, &n2, &s); err != nil {
			return err
		}
		tables = append(tables, string(tbl))
		return nil
	}, query, args...)
	if err != nil {
		return fmt.Errorf("svcwatch/mysql: list tables: %w", err)
	}
	sort.Strings(tables)
	w.loadMu.Lock()
	defer w.loadMu.Unlock()
	for _, table := range tables {
		w.b.AddFoundTable(table)
		if _, loaded := w.pos[table]; loaded || !w.b.Watched(table) {
			continue
		}
		if err := w.loadLocked(ctx, table); err != nil {
			return err
		}
	}
	return nil
}

// load reads table in full and makes it the view.
func (w *MySQLServiceWatcher) load(ctx context.Context, table string) error {
	w.loadMu.Lock()
	defer w.loadMu.Unlock()
	return w.loadLocked(ctx, table)
}

// loadOnce loads table unless it is loaded already.
func (w *MySQLServiceWatcher) loadOnce(ctx context.Context, table string) error {
	w.loadMu.Lock()
	defer w.loadMu.Unlock()
	if _, loaded := w.pos[table]; loaded {
		return nil
	}
	return w.loadLocked(ctx, table)
}

// loadLocked reads table in full, in one statement (its revision row and its
// rows, of one moment), and makes it the view, unless the table was unwatched
// meanwhile. Rows whose deadline has passed stay in the view until reaped: a
// reap bumps the revision, so every watcher sees it at its next scan, and a
// database that was out of reach for everyone reaps nobody alive (see
// guardAndReap). The caller holds loadMu.
func (w *MySQLServiceWatcher) loadLocked(ctx context.Context, table string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*w.callTimeout())
	defer cancel()
	var pos position
	var insts []svcwatch.Instance
	err := w.queryRows(ctx, func(rows *sql.Rows) error {
		var kind int
		var rev int64
		var s, rec []byte
		if err := rows.Scan(&kind, &rev, &s, &rec); err != nil {
			return err
		}
		if kind == 0 {
			pos = position{epoch: string(s), rev: rev}
			return nil
		}
		inst, err := w.b.DecodeRecord(table, string(s), string(rec))
		if err != nil {
			if w.b.LogOnce(table + "\x00" + string(s)) {
				w.log.Warn("svcwatch/mysql: skipping an unreadable record", "table", table, "id", string(s), "err", err)
			}
			return nil
		}
		insts = append(insts, inst)
		return nil
	}, w.q.load, table, table)
	if err != nil {
		return fmt.Errorf("svcwatch/mysql: load %s: %w", table, err)
	}
	w.b.CountFullLoad()
	if !w.b.Watched(table) {
		return nil // unwatched while it was read
	}
	sort.Slice(insts, func(i, j int) bool { return insts[i].ID < insts[j].ID }) // events in a stable order
	w.b.ReplaceTable(table, insts, time.Time{})
	w.pos[table] = pos
	return nil
}
