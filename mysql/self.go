package mysql

// self.go: what the process says about itself: SetDesc, SetMeta, SetState
// and Drain. They run on the caller's goroutine and write self's record under
// regLock, like the heartbeat's writes (heartbeat.go). Peers see a change at
// their next scan.

import (
	"context"
	"fmt"

	"github.com/svcwatch/svcwatch"
)

// SetDesc changes this process's Desc; peers get OnUpdate at their next scan.
// Before Start it only sets the Desc that Start registers. It is an error
// wrapping svcwatch.ErrInvalid on a watch-only watcher or for a Desc over the
// size limit (with Meta), and svcwatch.ErrReplaced when a newer incarnation
// holds the ID. The write is bounded by the keepalive interval.
func (w *MySQLServiceWatcher) SetDesc(ctx context.Context, desc string) error {
	return w.changeSelf(ctx, "set desc", func(self svcwatch.Instance) (func(), error) {
		next := self
		next.Desc = desc
		if err := w.b.CheckSelf(next); err != nil {
			return nil, err
		}
		w.b.SetSelfDesc(desc)
		return func() { w.b.SetSelfDesc(self.Desc) }, nil
	})
}

// SetMeta replaces this process's Meta (nil or empty: none); peers get
// OnUpdate. Meta is checked as at the constructor (at most 64 keys, printable
// keys, a "weight" that is a non-negative integer, Desc and Meta together
// within the size limit); else an error wrapping svcwatch.ErrInvalid. The
// watcher keeps a copy of meta. Otherwise as SetDesc.
func (w *MySQLServiceWatcher) SetMeta(ctx context.Context, meta map[string]string) error {
	return w.changeSelf(ctx, "set meta", func(self svcwatch.Instance) (func(), error) {
		next := self
		next.Meta = meta
		if err := w.b.CheckSelf(next); err != nil {
			return nil, err
		}
		w.b.SetSelfMeta(meta)
		return func() { w.b.SetSelfMeta(self.Meta) }, nil
	})
}

// SetState sets this process's State; peers get OnUpdate. Draining and
// Unhealthy processes keep their connections and their work but get no new
// keys from Pick. While the WithHealthCheck check fails, peers see Unhealthy
// whatever was set; the set state returns when it passes. Otherwise as SetDesc.
func (w *MySQLServiceWatcher) SetState(ctx context.Context, s svcwatch.State) error {
	return w.changeSelf(ctx, "set state", func(self svcwatch.Instance) (func(), error) {
		next := self
		next.State = s
		if err := w.b.CheckSelf(next); err != nil {
			return nil, err
		}
		prev := w.b.WantState()
		w.b.SetSelfState(s)
		return func() { w.b.SetSelfState(prev) }, nil
	})
}

// Drain takes this process out of rotation and then stops it: SetState
// (Draining), so that peers see it at their next scan and Pick moves its keys
// elsewhere; then wait, if not nil, for the process to finish what it has;
// then Stop. If wait returns an error, Drain returns it and the process stays
// registered and draining. Let wait last at least one scan interval, so that
// every peer has seen the drain before the process goes.
func (w *MySQLServiceWatcher) Drain(ctx context.Context, wait func(context.Context) error) error {
	if err := w.SetState(ctx, svcwatch.Draining); err != nil {
		return err
	}
	if wait != nil {
		if err := wait(ctx); err != nil {
			return err
		}
	}
	return w.Stop(ctx)
}

// changeSelf applies a change to self and writes self's record, undoing the
// change if the write fails. Before Start it only applies the change.
func (w *MySQLServiceWatcher) changeSelf(ctx context.Context, what string,
	change func(self svcwatch.Instance) (undo func(), err error)) error {
	if w.conf.WatchOnly {
		return fmt.Errorf("%w: %s on a watch-only watcher", svcwatch.ErrInvalid, what)
	}
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
	undo, err := change(w.Self())
	if err != nil || state == stateNew {
		return err
	}
	if err := w.updateLocked(ctx, true); err != nil {
		undo()
		return w.stoppedOr(fmt.Errorf("svcwatch/mysql: %s: %w", what, err))
	}
	return nil
}
