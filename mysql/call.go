package mysql

// call.go: the plumbing of the watcher's statements: transactions that are
// tried again after a deadlock, and telling an outage from a refused statement
// (retries, tokens and logging once are the core's: Backend.Retry,
// Backend.NewToken, Backend.LogOnce). Runs on whichever goroutine makes the
// call.

import (
	"context"
	"database/sql"
	"errors"
	mrand "math/rand"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/svcwatch/svcwatch"
)

// MySQL error numbers that mean "try the transaction again".
const (
	errDeadlock        = 1213 // ER_LOCK_DEADLOCK
	errLockWaitTimeout = 1205 // ER_LOCK_WAIT_TIMEOUT
)

// txAttempts bounds the tries of one transaction that keeps losing deadlocks.
const txAttempts = 4

// inTx runs f in a READ COMMITTED transaction and commits it, trying again
// when the database picked it as a deadlock victim. READ COMMITTED takes no
// gap locks, so writers of different tables never block each other on the
// instances' index; writers of one table queue on its revision row
// (queries.lockTable).
func (w *MySQLServiceWatcher) inTx(ctx context.Context, f func(tx *sql.Tx) error) error {
	var err error
	for attempt := 0; attempt < txAttempts; attempt++ {
		if attempt > 0 && !w.b.Sleep(ctx, time.Duration(1+mrand.Intn(20*attempt))*time.Millisecond) {
			break
		}
		err = w.tryTx(ctx, f)
		if !retryable(err) {
			break
		}
	}
	w.noteRoundTrip(err)
	return err
}

func (w *MySQLServiceWatcher) tryTx(ctx context.Context, f func(tx *sql.Tx) error) error {
	tx, err := w.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return err
	}
	if err := f(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

func retryable(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && (me.Number == errDeadlock || me.Number == errLockWaitTimeout)
}

// lockTable creates the table's revision row if missing and locks it, for
// the rest of tx: every write transaction begins here.
func (w *MySQLServiceWatcher) lockTable(ctx context.Context, tx *sql.Tx, table string) error {
	_, err := tx.ExecContext(ctx, w.q.lockTable, table, w.b.NewToken())
	return err
}

// bump moves the table's revision: the change in tx is what scans look for.
func (w *MySQLServiceWatcher) bump(ctx context.Context, tx *sql.Tx, table string) error {
	_, err := tx.ExecContext(ctx, w.q.bumpRev, table)
	return err
}

// dbNow reads the database's clock (UTC ms).
func dbNow(ctx context.Context, tx *sql.Tx, q queries) (int64, error) {
	var now int64
	err := tx.QueryRowContext(ctx, q.now).Scan(&now)
	return now, err
}

// callTimeout bounds one statement or transaction of the loops, so that a
// database that does not answer never holds a heartbeat past the next one.
func (w *MySQLServiceWatcher) callTimeout() time.Duration { return w.conf.KeepAlive }

// noteRoundTrip records whether the database answered. A refused statement
// (a missing privilege, a table altered by hand) is an answer: it is logged
// once, not taken for an outage.
func (w *MySQLServiceWatcher) noteRoundTrip(err error) {
	if errors.Is(err, context.Canceled) {
		return // Stop, or a caller that gave up: says nothing of the database
	}
	var me *mysql.MySQLError
	refused := errors.As(err, &me)
	// The answers of the protocol (missing, replaced, duplicate) are answers too.
	ok := err == nil || refused || errors.Is(err, sql.ErrNoRows) || errors.Is(err, errMissing) ||
		errors.Is(err, svcwatch.ErrReplaced) || errors.Is(err, svcwatch.ErrDuplicateID)
	w.b.SetConnected(ok)
	switch {
	case refused && !retryable(err):
		if w.b.LogOnce("refused\x00" + err.Error()) {
			w.log.Error("svcwatch/mysql: the database refused a statement", "err", err)
		}
	case ok && w.downLogged.Swap(false):
		w.log.Info("svcwatch/mysql: the database answers again")
	case !ok && !w.downLogged.Swap(true):
		w.log.Warn("svcwatch/mysql: the database does not answer; keeping the last view", "err", err)
	}
}
