package mysql

// heartbeat.go: self's registration: register, update, deregister, the
// heartbeat loop and standing down when replaced. The loop runs on the
// heartbeat goroutine, owned by the running Start and ended by Stop; the other
// calls run on the goroutine of Start, SetDesc or Stop. regLock serialises
// every write of self.
//
// Register follows the Redis protocol's register.lua, in one transaction:
// the same incarnation is this process registering again (its registration
// time kept); a live foreign incarnation is a restart (replaced) when
// RestartReplace is on and it advertises the same Name, else ErrDuplicateID;
// an expired one is replaced.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/svcwatch/svcwatch"
	"github.com/svcwatch/svcwatch/protocol"
)

// errMissing: self's row is gone (reaped while this process was cut off, or
// deleted by hand); the caller registers again, same incarnation.
var errMissing = errors.New("svcwatch/mysql: registration missing")

func (w *MySQLServiceWatcher) lockReg(ctx context.Context) error {
	select {
	case w.regLock <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *MySQLServiceWatcher) unlockReg() { <-w.regLock }

// register registers self with its current incarnation.
func (w *MySQLServiceWatcher) register(ctx context.Context) error {
	if err := w.lockReg(ctx); err != nil {
		return err
	}
	defer w.unlockReg()
	return w.registerLocked(ctx)
}

// registerLocked registers self unless the watcher is stopped: a Stop that
// deregistered before this call took the lock must not be undone. The caller
// holds regLock.
func (w *MySQLServiceWatcher) registerLocked(ctx context.Context) error {
	w.mu.Lock()
	stopped := w.state == stateStopped
	w.mu.Unlock()
	if stopped {
		return svcwatch.ErrStopped
	}
	self := w.Self()
	if w.recVer == "" {
		w.recVer = w.b.NewToken()
	}
	ctx, cancel := context.WithTimeout(ctx, w.callTimeout())
	defer cancel()
	var regMS int64
	var holder string
	err := w.inTx(ctx, func(tx *sql.Tx) error {
		if err := w.lockTable(ctx, tx, self.Table); err != nil {
			return err
		}
		now, err := dbNow(ctx, tx, w.q)
		if err != nil {
			return err
		}
		var oldInc string
		var oldRec []byte
		var deadline int64
		err = tx.QueryRowContext(ctx, w.q.selectInst, self.Table, self.ID).Scan(&oldInc, &oldRec, &deadline)
		exists := err == nil
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		regMS = now
		if !self.RegisteredAt.IsZero() {
			// Registering again after the row was lost changes nothing peers see.
			regMS = self.RegisteredAt.UnixMilli()
		}
		if exists {
			old, _ := protocol.DecodeRecord(string(oldRec)) // unreadable: a foreign incarnation
			switch {
			case oldInc == self.Incarnation:
				if old.Reg > 0 {
					regMS = old.Reg
				}
			case deadline > now && !(w.conf.RestartReplace && old.Name == self.Name):
				holder = old.Name
				return svcwatch.ErrDuplicateID
			}
		}
		rec := w.b.EncodeRecord(self, w.recVer, time.UnixMilli(regMS))
		ttl := w.conf.TTL.Milliseconds()
		if exists {
			_, err = tx.ExecContext(ctx, w.q.replaceInst, self.Incarnation, rec, ttl, ttl, self.Table, self.ID)
		} else {
			_, err = tx.ExecContext(ctx, w.q.insertInst, self.Table, self.ID, self.Incarnation, rec, ttl, ttl)
		}
		if err != nil || (exists && oldInc == self.Incarnation && string(oldRec) == rec) {
			return err
		}
		return w.bump(ctx, tx, self.Table)
	})
	if errors.Is(err, svcwatch.ErrDuplicateID) {
		return fmt.Errorf("%w: %s is held by a live process at %q", svcwatch.ErrDuplicateID, self.Key(), holder)
	}
	if err != nil {
		return fmt.Errorf("svcwatch/mysql: register %s: %w", self.Key(), err)
	}
	w.b.SetRegistration(self.Incarnation, time.UnixMilli(regMS))
	w.b.SetRegistered(true)
	return nil
}

// updateLocked writes self's current record over this incarnation's (which
// also refreshes its deadline), or registers it again if it is missing. A new
// Desc, Meta or State gets a new record version (newVersion). The caller
// holds regLock.
func (w *MySQLServiceWatcher) updateLocked(ctx context.Context, newVersion bool) error {
	self := w.Self()
	if self.Incarnation == "" {
		return nil // Start has not registered yet, and will register self as it is now
	}
	if newVersion || w.recVer == "" {
		w.recVer = w.b.NewToken()
	}
	cctx, cancel := context.WithTimeout(ctx, w.callTimeout())
	defer cancel()
	err := w.inTx(cctx, func(tx *sql.Tx) error {
		if err := w.lockTable(cctx, tx, self.Table); err != nil {
			return err
		}
		var oldInc string
		var oldRec []byte
		var deadline int64
		err := tx.QueryRowContext(cctx, w.q.selectInst, self.Table, self.ID).Scan(&oldInc, &oldRec, &deadline)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return errMissing
		case err != nil:
			return err
		case oldInc != self.Incarnation:
			return svcwatch.ErrReplaced
		}
		regMS := self.RegisteredAt.UnixMilli()
		if old, err := protocol.DecodeRecord(string(oldRec)); err == nil && old.Reg > 0 {
			regMS = old.Reg
		}
		rec := w.b.EncodeRecord(self, w.recVer, time.UnixMilli(regMS))
		ttl := w.conf.TTL.Milliseconds()
		if _, err := tx.ExecContext(cctx, w.q.replaceInst, self.Incarnation, rec, ttl, ttl, self.Table, self.ID); err != nil {
			return err
		}
		if string(oldRec) == rec {
			return nil
		}
		return w.bump(cctx, tx, self.Table)
	})
	switch {
	case errors.Is(err, errMissing):
		return w.registerLocked(ctx)
	case errors.Is(err, svcwatch.ErrReplaced):
		return fmt.Errorf("%w: %s", svcwatch.ErrReplaced, self.Key())
	}
	return err
}

// deregister removes self's row if this incarnation still owns it. It waits
// for a register or update in flight, so that it is the last word.
func (w *MySQLServiceWatcher) deregister(ctx context.Context) error {
	if err := w.lockReg(ctx); err != nil {
		return fmt.Errorf("svcwatch/mysql: deregister: %w", err)
	}
	defer w.unlockReg()
	w.b.SetRegistered(false)
	self := w.Self()
	if self.Incarnation == "" {
		return nil // never tried to register
	}
	err := w.inTx(ctx, func(tx *sql.Tx) error {
		if err := w.lockTable(ctx, tx, self.Table); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, w.q.deleteInst, self.Table, self.ID, self.Incarnation)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return nil // not ours any more
		}
		return w.bump(ctx, tx, self.Table)
	})
	if err != nil {
		return fmt.Errorf("svcwatch/mysql: deregister %s: %w", self.Key(), err)
	}
	return nil
}

// heartbeatLoop runs the health check and one heartbeat each time t fires,
// every keepalive interval, until Stop, or until this incarnation stands
// down. When the health check changes the state peers see, the heartbeat is a
// write of self's record instead, tried again at each tick until it succeeds.
func (w *MySQLServiceWatcher) heartbeatLoop(run *running, t svcwatch.Timer) {
	defer close(run.hbDone)
	defer t.Stop()
	unwritten := false // the state peers should see is not stored yet
	for {
		select {
		case <-run.hbCtx.Done():
			return
		case <-t.C():
		}
		began := w.b.Now()
		if w.b.CheckHealth(run.hbCtx) || unwritten {
			var ok bool
			ok, unwritten = w.writeState(run.hbCtx)
			if !ok {
				return
			}
		} else if !w.heartbeat(run.hbCtx) {
			return
		}
		// Keep the period, not period plus the call's duration.
		t.Reset(max(0, w.conf.KeepAlive-w.b.Now().Sub(began)))
	}
}

// heartbeat refreshes self's deadline with one UPDATE; it reports false when
// this incarnation has stood down for good.
func (w *MySQLServiceWatcher) heartbeat(ctx context.Context) bool {
	self := w.Self()
	cctx, cancel := context.WithTimeout(ctx, w.callTimeout())
	defer cancel()
	res, err := w.db.ExecContext(cctx, w.q.heartbeat, w.conf.TTL.Milliseconds(), self.Table, self.ID, self.Incarnation)
	var n int64
	if err == nil {
		n, err = res.RowsAffected()
	}
	if err == nil && n == 0 {
		// No row changed: the row is gone or another incarnation's, or the
		// deadline did not move (two heartbeats within one millisecond).
		var inc string
		err = w.db.QueryRowContext(cctx, w.q.ownerOf, self.Table, self.ID).Scan(&inc)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			err = errMissing
		case err == nil && inc != self.Incarnation:
			err = svcwatch.ErrReplaced
		}
	}
	w.noteRoundTrip(err)
	switch {
	case err == nil:
		w.b.CountHeartbeat()
		w.b.SetRegistered(true)
		return true
	case errors.Is(err, errMissing):
		w.b.SetRegistered(false)
		err := w.register(ctx)
		switch {
		case err == nil:
			w.b.CountReregistration()
			w.log.Warn("svcwatch/mysql: registration was missing (reaped while cut off, or deleted by hand); registered again",
				"key", self.Key(), "incarnation", self.Incarnation)
			return true
		case errors.Is(err, svcwatch.ErrDuplicateID):
			w.standDown(self, err)
			return false
		}
		return true
	case errors.Is(err, svcwatch.ErrReplaced):
		w.standDown(self, fmt.Errorf("%w: %s", svcwatch.ErrReplaced, self.Key()))
		return false
	}
	return true // the next tick tries again; Stats shows Connected false
}

// writeState writes self's record after its state changed. It reports false
// when this incarnation has stood down, and whether the write must be tried
// again.
func (w *MySQLServiceWatcher) writeState(ctx context.Context) (ok, again bool) {
	if err := w.lockReg(ctx); err != nil {
		return true, true
	}
	err := w.updateLocked(ctx, true)
	w.unlockReg()
	switch {
	case err == nil:
		w.b.CountHeartbeat() // it refreshed the deadline too
		w.b.SetRegistered(true)
		return true, false
	case errors.Is(err, svcwatch.ErrReplaced), errors.Is(err, svcwatch.ErrDuplicateID):
		w.standDown(w.Self(), err)
		return false, false
	}
	return true, true
}

// standDown gives up the registration for good: another incarnation holds
// the ID, and fighting it would flap the peers' views.
func (w *MySQLServiceWatcher) standDown(self svcwatch.Instance, err error) {
	w.log.Error("svcwatch/mysql: this incarnation is no longer registered and stops heartbeating",
		"key", self.Key(), "incarnation", self.Incarnation, "err", err)
	w.b.RegistrationLost(err)
}
