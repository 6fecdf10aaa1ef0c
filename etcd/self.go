package etcd

// self.go: how this backend stores what the process says about itself (the
// core's SetDesc, SetMeta, SetState and Drain): under regLock, like the
// heartbeat's writes (register.go), on the caller's goroutine.

import (
	"context"

	"github.com/svcwatch/svcwatch"
)

// writeSelf is the core's writer of self (Backend.SetSelfWriter): it applies
// a change under regLock and writes self's key, undoing the change if the
// write fails. Before Start registers, it only applies the change.
func (w *EtcdServiceWatcher) writeSelf(ctx context.Context, apply func() (undo func(), err error)) error {
	if err := w.lockReg(ctx); err != nil {
		return err
	}
	defer w.unlockReg()
	// Read under regLock: a Start that registers meanwhile has either
	// registered already (then this writes) or will register this change.
	w.mu.Lock()
	state := w.state
	w.mu.Unlock()
	if state == stateStopped {
		return svcwatch.ErrStopped
	}
	undo, err := apply()
	if err != nil || w.reg.modRev == 0 {
		return err // before Start registers: registered as it is when it does
	}
	if err := w.updateLocked(ctx); err != nil {
		undo()
		return w.stoppedOr(err)
	}
	return nil
}
