package mysql

// call.go: the plumbing of the watcher's statements: transactions that are
// tried again after a deadlock, telling an outage from a refused statement,
// Start's retries, and logging a problem once. Runs on whichever goroutine
// makes the call.

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand"
	"sync"
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
		if attempt > 0 && !sleep(ctx, w.b, time.Duration(1+mrand.Intn(20*attempt))*time.Millisecond) {
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
	_, err := tx.ExecContext(ctx, w.q.lockTable, table, newToken())
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
		if w.logged.first("refused\x00" + err.Error()) {
			w.log.Error("svcwatch/mysql: the database refused a statement", "err", err)
		}
	case ok && w.downLogged.Swap(false):
		w.log.Info("svcwatch/mysql: the database answers again")
	case !ok && !w.downLogged.Swap(true):
		w.log.Warn("svcwatch/mysql: the database does not answer; keeping the last view", "err", err)
	}
}

// retryBackoff paces Start's retries of a database that does not answer.
var retryBackoff = backoff{min: 50 * time.Millisecond, max: 2 * time.Second}

// retry runs f until it succeeds, fails for good, or ctx ends.
func (w *MySQLServiceWatcher) retry(ctx context.Context, what string, f func(context.Context) error) error {
	for attempt := 0; ; attempt++ {
		err := f(ctx)
		if err == nil || errors.Is(err, svcwatch.ErrDuplicateID) || errors.Is(err, svcwatch.ErrInvalid) ||
			errors.Is(err, svcwatch.ErrStopped) {
			return err
		}
		if !sleep(ctx, w.b, retryBackoff.delay(attempt)) {
			return fmt.Errorf("svcwatch/mysql: %s: %w (last error: %v)", what, ctx.Err(), err)
		}
	}
}

// backoff is a delay that starts at min and doubles per consecutive failure
// up to max, with equal jitter, so that processes that failed together do
// not retry in lockstep.
type backoff struct{ min, max time.Duration }

func (b backoff) delay(attempt int) time.Duration {
	d := b.min
	for i := 0; i < attempt && d < b.max; i++ {
		d *= 2
	}
	d = min(d, b.max)
	return d/2 + time.Duration(mrand.Int63n(int64(d/2)+1))
}

// sleep waits d on the watcher's clock, or until ctx ends; it reports whether
// d passed.
func sleep(ctx context.Context, b *svcwatch.Backend, d time.Duration) bool {
	t := b.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return true
	case <-ctx.Done():
		return false
	}
}

// newToken returns a random 16-hex-digit token (incarnations, epochs, record
// versions).
func newToken() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails on supported platforms
	return hex.EncodeToString(b[:])
}

// logOnceMax bounds what a watcher remembers having logged.
const logOnceMax = 1024

// onceSet remembers keys up to logOnceMax of them; when full it forgets them
// all, so that a flood of distinct junk costs bounded memory.
type onceSet struct {
	mu   sync.Mutex
	seen map[string]struct{}
}

// first reports whether key was not seen before, and remembers it.
func (s *onceSet) first(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.seen[key]; ok {
		return false
	}
	if s.seen == nil || len(s.seen) >= logOnceMax {
		s.seen = make(map[string]struct{})
	}
	s.seen[key] = struct{}{}
	return true
}
