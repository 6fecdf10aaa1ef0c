package svcwatch

// redis_self.go: how the Redis backend stores what the process says about
// itself (the core's SetDesc, SetMeta, SetState and Drain, self.go): under
// regLock, like the heartbeat's writes (redis_heartbeat.go), on the caller's
// goroutine.

import (
	"context"
)

// writeSelf is the core's writer of self (Backend.SetSelfWriter): it applies
// a change under regLock and writes self's record, undoing the change if the
// write fails. Until Start has an incarnation to register (before Start, or
// while Start still waits for its subscriptions) it only applies the change,
// which Start registers.
func (w *RedisServiceWatcher) writeSelf(ctx context.Context, apply func() (undo func(), err error)) error {
	if err := w.lockReg(ctx); err != nil {
		return err
	}
	defer w.unlockReg()
	// Read under regLock: a Start that registers meanwhile has either
	// registered already (then this writes) or will register this change.
	w.mu.Lock()
	stopped := w.state == stateStopped
	w.mu.Unlock()
	if stopped {
		return ErrStopped
	}
	unregistered := w.Self().Incarnation == "" // Start sets it just before it registers
	undo, err := apply()
	if err != nil || unregistered {
		return err
	}
	if err := w.updateLocked(ctx, true); err != nil {
		undo()
		return w.stoppedOr(err)
	}
	return nil
}
