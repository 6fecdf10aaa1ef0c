package mysql

// schema.go: the three tables the watcher keeps in the database, and every SQL
// statement it runs, written once here. Time in every statement is the
// database's: nowMS is its UTC clock in milliseconds, so that neither a skewed
// client clock nor a session time zone can move a deadline.

import (
	"context"
	"fmt"
	"regexp"
	"strings"

	"github.com/svcwatch/svcwatch"
)

// nowMS is the database's clock, UTC milliseconds since the Unix epoch.
// UTC_TIMESTAMP ignores the session's time zone (and its summer time), and
// TIMESTAMPDIFF is plain arithmetic, so the value is the same in MySQL 8 and
// MariaDB whatever the connection's settings.
const nowMS = "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(3)) DIV 1000)"

// prefixPattern is what WithKeyPrefix may be for this backend: the prefix
// names SQL tables, so it must be a plain identifier that leaves room for the
// longest suffix within MySQL's 64 characters.
var prefixPattern = regexp.MustCompile(`^[A-Za-z0-9_]{1,48}$`)

func checkPrefix(p string) error {
	if !prefixPattern.MatchString(p) {
		return fmt.Errorf("%w: key prefix %q: the MySQL backend names its tables after it, so it must be 1 to 48 letters, digits or '_'",
			svcwatch.ErrInvalid, p)
	}
	return nil
}

// queries holds the statements of one key prefix. Names are VARBINARY, so they
// compare byte for byte (no collation folds "Game" into "game"), as in Redis.
type queries struct {
	create, probe []string

	lockTable, bumpRev, now                         string
	selectInst, insertInst, replaceInst, deleteInst string
	heartbeat, ownerOf                              string
	load, scanHead, scanTail, candidates, reap      string
	guardLock, guardTouch, guardPush, guardSet      string
	guardInit                                       string
	gcCandidates, gcLock, gcDelete                  string
}

func newQueries(prefix string) queries {
	inst, revs, guard := "`"+prefix+"_instances`", "`"+prefix+"_revisions`", "`"+prefix+"_guard`"
	r := strings.NewReplacer("{inst}", inst, "{revs}", revs, "{guard}", guard, "{now}", nowMS)
	q := func(s string) string { return r.Replace(s) }
	return queries{
		create: []string{
			// One row per registered instance: its record (the protocol's JSON,
			// as in Redis) and its deadline by the database's clock.
			q(`CREATE TABLE IF NOT EXISTS {inst} (
  tbl VARBINARY(256) NOT NULL,
  id VARBINARY(128) NOT NULL,
  inc VARBINARY(64) NOT NULL,
  rec MEDIUMBLOB NOT NULL,
  deadline_ms BIGINT NOT NULL,
  ttl_ms BIGINT NOT NULL,
  PRIMARY KEY (tbl, id),
  KEY deadline (deadline_ms)
) ENGINE=InnoDB`),
			// One row per table: its revision, bumped in the transaction of each
			// change, and an epoch made when the row is created, so that a row
			// deleted and made again never repeats a (epoch, revision) pair.
			q(`CREATE TABLE IF NOT EXISTS {revs} (
  tbl VARBINARY(256) NOT NULL,
  rev BIGINT NOT NULL,
  epoch VARBINARY(32) NOT NULL,
  changed_ms BIGINT NOT NULL,
  PRIMARY KEY (tbl)
) ENGINE=InnoDB`),
			// One row: when a scan last reached the database (last_ms) and when
			// the mass-expiry guard last pushed deadlines out (guard_ms).
			q(`CREATE TABLE IF NOT EXISTS {guard} (
  one TINYINT NOT NULL,
  last_ms BIGINT NOT NULL,
  guard_ms BIGINT NOT NULL,
  PRIMARY KEY (one)
) ENGINE=InnoDB`),
		},

		probe: []string{q(`SELECT 1 FROM {inst} LIMIT 0`), q(`SELECT 1 FROM {revs} LIMIT 0`), q(`SELECT 1 FROM {guard} LIMIT 0`)},

		// Every write transaction starts here: it creates the table's revision
		// row if missing and takes its lock, so that the writers of one table
		// queue on one row, always before any instance row (no deadlock).
		lockTable: q(`INSERT INTO {revs} (tbl, rev, epoch, changed_ms) VALUES (?, 0, ?, {now})
  ON DUPLICATE KEY UPDATE rev = rev`),
		bumpRev: q(`UPDATE {revs} SET rev = rev + 1, changed_ms = {now} WHERE tbl = ?`),
		now:     q(`SELECT {now}`),

		selectInst:  q(`SELECT inc, rec, deadline_ms FROM {inst} WHERE tbl = ? AND id = ? FOR UPDATE`),
		insertInst:  q(`INSERT INTO {inst} (tbl, id, inc, rec, deadline_ms, ttl_ms) VALUES (?, ?, ?, ?, {now} + ?, ?)`),
		replaceInst: q(`UPDATE {inst} SET inc = ?, rec = ?, deadline_ms = {now} + ?, ttl_ms = ? WHERE tbl = ? AND id = ?`),
		deleteInst:  q(`DELETE FROM {inst} WHERE tbl = ? AND id = ? AND inc = ?`),

		// The heartbeat: one statement, no transaction, no revision bump.
		heartbeat: q(`UPDATE {inst} SET deadline_ms = {now} + ? WHERE tbl = ? AND id = ? AND inc = ?`),
		ownerOf:   q(`SELECT inc FROM {inst} WHERE tbl = ? AND id = ?`),

		// A full read of one table in one statement, so that the revision and
		// the rows are of one moment: first the revision row (kind 0), then
		// the instances (kind 1).
		load: q(`SELECT 0, rev, epoch, NULL FROM {revs} WHERE tbl = ?
UNION ALL
SELECT 1, 0, id, rec FROM {inst} WHERE tbl = ?`),

		// The scan's one statement ends with the guard row (kind 1) and a
		// few expired instances (kind 2), found through the deadline index:
		// nothing to read when nobody expired.
		scanTail: q(`
UNION ALL
SELECT 1, NULL, last_ms, {now}, NULL FROM {guard} WHERE one = 1
UNION ALL
(SELECT 2, tbl, deadline_ms, NULL, id FROM {inst} WHERE deadline_ms <= {now} ORDER BY deadline_ms LIMIT ?)`),
		// ... after the revision rows of the watched tables and prefixes.
		scanHead: q(`SELECT 0 AS kind, tbl, rev AS n1, NULL AS n2, epoch AS s FROM {revs} WHERE `),

		candidates: q(`SELECT tbl, id FROM {inst} WHERE deadline_ms <= {now} ORDER BY deadline_ms LIMIT ?`),
		// The deadline is checked again under the table's lock: a heartbeat or
		// the guard may have moved it since the scan read it.
		reap: q(`DELETE FROM {inst} WHERE tbl = ? AND id = ? AND deadline_ms <= {now}`),

		guardLock:  q(`SELECT last_ms, guard_ms, {now} FROM {guard} WHERE one = 1 FOR UPDATE`),
		guardTouch: q(`UPDATE {guard} SET last_ms = {now} WHERE one = 1 AND last_ms < {now} - ?`),
		// Every deadline short of one TTL from now moves to now + its own TTL:
		// the live heartbeat again meanwhile, the dead are reaped one TTL later.
		guardPush: q(`UPDATE {inst} SET deadline_ms = ? + ttl_ms WHERE deadline_ms < ? + ttl_ms`),
		guardSet:  q(`UPDATE {guard} SET last_ms = ?, guard_ms = ? WHERE one = 1`),
		guardInit: q(`INSERT IGNORE INTO {guard} (one, last_ms, guard_ms) VALUES (1, {now}, 0)`),

		// Garbage collection: revision rows of tables that have had no
		// instance for longer than the retention.
		gcCandidates: q(`SELECT r.tbl FROM {revs} r WHERE r.changed_ms < {now} - ?
  AND NOT EXISTS (SELECT 1 FROM {inst} i WHERE i.tbl = r.tbl) LIMIT ?`),
		gcLock:   q(`SELECT changed_ms < {now} - ? FROM {revs} WHERE tbl = ? FOR UPDATE`),
		gcDelete: q(`DELETE FROM {revs} WHERE tbl = ? AND NOT EXISTS (SELECT 1 FROM {inst} WHERE tbl = ?)`),
	}
}

// ensureSchema creates the tables if they are missing. CREATE TABLE IF NOT
// EXISTS is safe for many processes starting at once. A user without the
// right to create tables may still run on tables made beforehand (the
// README has their DDL): a refused CREATE is fine if they exist.
func (w *MySQLServiceWatcher) ensureSchema(ctx context.Context) error {
	var createErr error
	for _, stmt := range w.q.create {
		if _, createErr = w.db.ExecContext(ctx, stmt); createErr != nil {
			break
		}
	}
	if createErr != nil {
		for _, stmt := range w.q.probe {
			if _, err := w.db.ExecContext(ctx, stmt); err != nil {
				w.noteRoundTrip(createErr)
				return fmt.Errorf("svcwatch/mysql: create tables: %w", createErr)
			}
		}
	}
	_, err := w.db.ExecContext(ctx, w.q.guardInit)
	w.noteRoundTrip(err)
	if err != nil {
		return fmt.Errorf("svcwatch/mysql: create tables: %w", err)
	}
	return nil
}

// likeEscape is the escape character of the LIKE patterns: not a backslash,
// whose meaning in a string literal depends on the NO_BACKSLASH_ESCAPES mode.
const likeEscape = "!"

// escapeLike escapes LIKE's wildcards (and the escape itself) in s, so that
// a table name matches only itself.
func escapeLike(s string) string {
	return strings.NewReplacer("!", "!!", "%", "!%", "_", "!_").Replace(s)
}

// prefixCond returns the condition on revision rows that selects the tables
// under prefix (whole path segments), with its arguments.
func prefixCond(prefix string) (string, []any) {
	return "tbl = ? OR tbl LIKE ? ESCAPE '" + likeEscape + "'", []any{prefix, escapeLike(prefix) + "/%"}
}
