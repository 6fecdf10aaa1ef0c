package svcwatch

// redis_self.go: what the process says about itself on Redis: SetDesc, SetMeta,
// SetState and Drain. They run on the caller's goroutine and write self's
// record under regLock, like the heartbeat's writes (redis_heartbeat.go).

import (
	"context"
	"fmt"
)

// SetDesc changes this process's Desc; peers get OnUpdate. Before Start it only
// sets the Desc that Start registers. It is an error wrapping ErrInvalid on a
// watch-only watcher or for a Desc over the size limit (with Meta), and
// ErrReplaced when a newer incarnation holds the ID. The call to Redis is
// bounded by the keepalive interval, like a heartbeat, so that it never holds
// up a re-registration or Stop's deregistration for long.
func (w *RedisServiceWatcher) SetDesc(ctx context.Context, desc string) error {
	return w.changeSelf(ctx, "set desc", func(self Instance) (func(), error) {
		if err := checkDesc(desc, w.conf.MaxDescSize); err != nil {
			return nil, err
		}
		if err := checkMeta(self.Meta, desc, w.conf.MaxDescSize); err != nil {
			return nil, err
		}
		w.b.SetSelfDesc(desc)
		return func() { w.b.SetSelfDesc(self.Desc) }, nil
	})
}

// SetMeta replaces this process's Meta (nil or empty: none); peers get
// OnUpdate. Meta is checked as at the constructor: at most 64 keys, printable
// keys, a "weight" that is a non-negative integer, Desc and Meta together
// within the size limit; else an error wrapping ErrInvalid. The watcher keeps
// a copy of meta. Otherwise as SetDesc.
func (w *RedisServiceWatcher) SetMeta(ctx context.Context, meta map[string]string) error {
	return w.changeSelf(ctx, "set meta", func(self Instance) (func(), error) {
		if err := checkMeta(meta, self.Desc, w.conf.MaxDescSize); err != nil {
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
func (w *RedisServiceWatcher) SetState(ctx context.Context, s State) error {
	return w.changeSelf(ctx, "set state", func(Instance) (func(), error) {
		if err := checkState(s); err != nil {
			return nil, err
		}
		prev := w.b.WantState()
		w.b.SetSelfState(s)
		return func() { w.b.SetSelfState(prev) }, nil
	})
}

// Drain takes this process out of rotation and then stops it: SetState
// (Draining), so that peers see it and Pick moves its keys elsewhere; then wait,
// if not nil, for the process to finish what it has (its players leave, its
// rooms close); then Stop. If wait returns an error, Drain returns it and the
// process stays registered and draining.
func (w *RedisServiceWatcher) Drain(ctx context.Context, wait func(context.Context) error) error {
	if err := w.SetState(ctx, Draining); err != nil {
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
func (w *RedisServiceWatcher) changeSelf(ctx context.Context, what string, change func(self Instance) (undo func(), err error)) error {
	if w.conf.WatchOnly {
		return fmt.Errorf("%w: %s on a watch-only watcher", ErrInvalid, what)
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
		return ErrStopped
	}
	undo, err := change(w.Self())
	if err != nil || state == stateNew {
		return err // before Start: registered as it is when Start comes
	}
	if err := w.updateLocked(ctx, true); err != nil {
		undo()
		return w.stoppedOr(fmt.Errorf("svcwatch: %s: %w", what, err))
	}
	return nil
}
