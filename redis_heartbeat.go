package svcwatch

// redis_heartbeat.go: self's registration on Redis: register, update,
// deregister, the heartbeat loop and standing down when replaced. The loop runs
// on the heartbeat goroutine, owned by the running Start and ended by Stop; the
// other calls run on the goroutine of Start, SetDesc or Stop. regLock
// serialises every write of self.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/svcwatch/svcwatch/protocol"
)

func (w *RedisServiceWatcher) lockReg(ctx context.Context) error {
	select {
	case w.regLock <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *RedisServiceWatcher) unlockReg() { <-w.regLock }

// register registers self with its current incarnation.
func (w *RedisServiceWatcher) register(ctx context.Context) error {
	if err := w.lockReg(ctx); err != nil {
		return err
	}
	defer w.unlockReg()
	return w.registerLocked(ctx)
}

// registerLocked registers self unless the watcher is stopped: a Stop that
// deregistered before this call took the lock must not be undone.
func (w *RedisServiceWatcher) registerLocked(ctx context.Context) error {
	w.mu.Lock()
	stopped := w.state == stateStopped
	w.mu.Unlock()
	if stopped {
		return ErrStopped
	}
	self := w.Self()
	cctx, cancel := context.WithTimeout(ctx, w.callTimeout())
	defer cancel()
	replace := 0
	if w.conf.RestartReplace {
		replace = 1
	}
	var regAt int64
	if !self.RegisteredAt.IsZero() {
		regAt = self.RegisteredAt.UnixMilli()
	}
	if w.recVer == "" {
		w.recVer = newToken()
	}
	res, err := w.eval(cctx, scriptRegister, w.selfSync(), self.ID, self.Incarnation, self.Name, self.Desc,
		w.conf.TTL.Milliseconds(), replace, regAt, w.recVer, protocol.EncodeMeta(self.Meta), stateName(self.State)).Slice()
	w.noteRoundTrip(err)
	if err != nil {
		return fmt.Errorf("svcwatch: register %s: %w", self.Key(), err)
	}
	status, _ := res[0].(string)
	if status == "dup" {
		holder, _ := res[1].(string)
		return fmt.Errorf("%w: %s is held by a live process at %q", ErrDuplicateID, self.Key(), holder)
	}
	regAt, _ = res[1].(int64)
	w.b.SetRegistration(self.Incarnation, time.UnixMilli(regAt))
	w.b.SetRegistered(true)
	// The catalog lives in another slot, so this is a second call. A failure
	// costs nothing lasting: the collection pass adds self's table again.
	if err := w.touchCatalog(cctx, self.Table, 0); err != nil {
		w.log.Debug("svcwatch: adding the table to the catalog failed; the next pass retries", "err", err)
	}
	return nil
}

// updateLocked writes self's current record over this incarnation's, or
// registers it again if Redis lost it. A new Desc gets a new record version
// (newVersion); rewriting a stale record keeps it. The caller holds regLock.
func (w *RedisServiceWatcher) updateLocked(ctx context.Context, newVersion bool) error {
	self := w.Self()
	if newVersion || w.recVer == "" {
		// Taken even if the call fails: a heartbeat that then finds another
		// version in Redis writes this record again.
		w.recVer = newToken()
	}
	cctx, cancel := context.WithTimeout(ctx, w.callTimeout())
	defer cancel()
	res, err := w.eval(cctx, scriptUpdate, w.selfSync(), self.ID, self.Incarnation, self.Name, self.Desc,
		w.conf.TTL.Milliseconds(), w.recVer, protocol.EncodeMeta(self.Meta), stateName(self.State)).Text()
	w.noteRoundTrip(err)
	switch {
	case err != nil:
		return err
	case res == "missing":
		return w.registerLocked(ctx)
	case res == "replaced":
		return fmt.Errorf("%w: %s", ErrReplaced, self.Key())
	}
	return nil
}

// writeState writes self's record after its state changed. It reports false
// when this incarnation has stood down, and whether the write must be tried again.
func (w *RedisServiceWatcher) writeState(ctx context.Context) (ok, again bool) {
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
	case errors.Is(err, ErrReplaced), errors.Is(err, ErrDuplicateID):
		w.standDown(w.Self(), err)
		return false, false
	}
	return true, true
}

// rewrite writes self's record again, same version.
func (w *RedisServiceWatcher) rewrite(ctx context.Context) error {
	if err := w.lockReg(ctx); err != nil {
		return err
	}
	defer w.unlockReg()
	return w.updateLocked(ctx, false)
}

// recordVersion is the version of the record this process wrote last.
func (w *RedisServiceWatcher) recordVersion() string {
	select {
	case w.regLock <- struct{}{}:
		defer w.unlockReg()
		return w.recVer
	default:
		return "" // a write is in flight and settles the version: skip the check
	}
}

// deregister removes self's entry if this incarnation still owns it. It waits
// for a register or update in flight, so that it is the last word.
func (w *RedisServiceWatcher) deregister(ctx context.Context) error {
	if err := w.lockReg(ctx); err != nil {
		return fmt.Errorf("svcwatch: deregister: %w", err)
	}
	defer w.unlockReg()
	w.b.SetRegistered(false)
	self := w.Self()
	if self.Incarnation == "" {
		return nil // never tried to register
	}
	_, err := w.eval(ctx, scriptDeregister, w.selfSync(), self.ID, self.Incarnation).Result()
	w.noteRoundTrip(err)
	if err != nil {
		return fmt.Errorf("svcwatch: deregister %s: %w", self.Key(), err)
	}
	return nil
}

// heartbeatLoop runs the health check and one heartbeat each time t fires,
// every keepalive interval, until Stop, or until this incarnation stands down.
// When the health check changes the state peers see, the heartbeat is a write
// of self's record instead, tried again at each tick until it succeeds.
func (w *RedisServiceWatcher) heartbeatLoop(run *running, t Timer) {
	defer close(run.hbDone)
	defer t.Stop()
	unwritten := false // the state peers should see is not in Redis yet
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

// heartbeat refreshes self's deadline; it reports false when this incarnation
// has stood down for good.
func (w *RedisServiceWatcher) heartbeat(ctx context.Context) bool {
	self := w.Self()
	cctx, cancel := context.WithTimeout(ctx, w.callTimeout())
	defer cancel()
	res, err := w.eval(cctx, scriptHeartbeat, w.selfSync(), self.ID, self.Incarnation, w.conf.TTL.Milliseconds(),
		w.recordVersion()).Text()
	w.noteRoundTrip(err)
	switch {
	case err != nil:
		return true // next tick tries again; Stats shows Connected false
	case res == "ok":
		w.b.CountHeartbeat()
		w.b.SetRegistered(true)
		return true
	case res == "stale":
		// Redis holds an older record than this process wrote (a failover or a
		// restore lost the latest write). The process knows the truth: write
		// it again, so that every watcher converges on it.
		w.b.CountHeartbeat()
		w.b.SetRegistered(true)
		if err := w.rewrite(ctx); err == nil {
			w.log.Warn("svcwatch: Redis held an older record of this process (a lost write?); wrote it again",
				"key", self.Key(), "incarnation", self.Incarnation)
		}
		return true
	case res == "missing":
		w.b.SetRegistered(false)
		err := w.register(ctx)
		switch {
		case err == nil:
			w.b.CountReregistration()
			w.log.Warn("svcwatch: registration was missing (Redis lost its data?); registered again",
				"key", self.Key(), "incarnation", self.Incarnation)
			return true
		case errors.Is(err, ErrDuplicateID):
			w.standDown(self, err)
			return false
		default:
			return true
		}
	default: // replaced
		w.standDown(self, fmt.Errorf("%w: %s", ErrReplaced, self.Key()))
		return false
	}
}

// standDown gives up the registration for good: another incarnation holds the ID,
// and fighting it would flap the peers' views. The callback is told on the event
// goroutine, so that it may call Stop, which waits for this goroutine.
func (w *RedisServiceWatcher) standDown(self Instance, err error) {
	w.log.Error("svcwatch: this incarnation is no longer registered and stops heartbeating",
		"key", self.Key(), "incarnation", self.Incarnation, "err", err)
	w.b.RegistrationLost(err)
}
