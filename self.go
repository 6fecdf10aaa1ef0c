package svcwatch

// self.go: what a process says about itself, for every backend: SetDesc,
// SetMeta, SetState and Drain. They run on the caller's goroutine; the
// backend stores the change through the hooks it gave with
// Backend.SetSelfWriter, under its own lock of self's record.

import (
	"context"
	"errors"
	"fmt"
)

// selfHooks store self's record for the methods below (see SetSelfWriter).
type selfHooks struct {
	write func(ctx context.Context, apply func() (undo func(), err error)) error
	stop  func(ctx context.Context) error
}

// SetDesc changes this process's Desc; peers get OnUpdate. Before Start it only
// sets the Desc that Start registers. It is an error wrapping ErrInvalid on a
// watch-only watcher or for a Desc over the size limit (with Meta), and
// ErrReplaced when a newer incarnation holds the ID. The backend bounds its
// write by the keepalive interval, like a heartbeat, so that it never holds up
// a re-registration or Stop's deregistration for long.
func (w *ServiceWatcher) SetDesc(ctx context.Context, desc string) error {
	return w.changeSelf(ctx, "set desc", func(self Instance) (func(), error) {
		if err := checkDesc(desc, w.cfg.MaxDescSize); err != nil {
			return nil, err
		}
		if err := checkMeta(self.Meta, desc, w.cfg.MaxDescSize); err != nil {
			return nil, err
		}
		w.setSelf(func(s *Instance) { s.Desc = desc })
		return func() { w.setSelf(func(s *Instance) { s.Desc = self.Desc }) }, nil
	})
}

// SetMeta replaces this process's Meta (nil or empty: none); peers get
// OnUpdate. Meta is checked as at the constructor: at most 64 keys, printable
// keys, a "weight" that is a non-negative integer, Desc and Meta together
// within the size limit; else an error wrapping ErrInvalid. The watcher keeps
// a copy of meta. Otherwise as SetDesc.
func (w *ServiceWatcher) SetMeta(ctx context.Context, meta map[string]string) error {
	return w.changeSelf(ctx, "set meta", func(self Instance) (func(), error) {
		if err := checkMeta(meta, self.Desc, w.cfg.MaxDescSize); err != nil {
			return nil, err
		}
		w.setSelfMeta(meta)
		return func() { w.setSelfMeta(self.Meta) }, nil
	})
}

// SetState sets this process's State; peers get OnUpdate. Draining and
// Unhealthy processes keep their connections and their work but get no new
// keys from Pick. While the WithHealthCheck check fails, peers see Unhealthy
// whatever was set; the set state returns when it passes. Otherwise as SetDesc.
func (w *ServiceWatcher) SetState(ctx context.Context, s State) error {
	return w.changeSelf(ctx, "set state", func(Instance) (func(), error) {
		if err := checkState(s); err != nil {
			return nil, err
		}
		prev := w.wantStateNow()
		w.setWantState(s)
		return func() { w.setWantState(prev) }, nil
	})
}

// Drain takes this process out of rotation and then stops it: SetState
// (Draining), so that peers see it and Pick moves its keys elsewhere; then wait,
// if not nil, for the process to finish what it has (its players leave, its
// rooms close); then the backend's Stop. If wait returns an error, Drain
// returns it and the process stays registered and draining. On a backend that
// polls, let wait last at least one scan interval, so that every peer saw the
// drain before the process goes.
func (w *ServiceWatcher) Drain(ctx context.Context, wait func(context.Context) error) error {
	if err := w.SetState(ctx, Draining); err != nil {
		return err
	}
	if wait != nil {
		if err := wait(ctx); err != nil {
			return err
		}
	}
	hooks := w.hooks()
	if hooks.stop == nil {
		return fmt.Errorf("%w: drain: the backend gave no Stop (Backend.SetSelfWriter)", ErrInvalid)
	}
	return hooks.stop(ctx)
}

// changeSelf has the backend apply a change to self under its lock of self's
// record and store it; the backend undoes the change if the write fails.
func (w *ServiceWatcher) changeSelf(ctx context.Context, what string, change func(self Instance) (undo func(), err error)) error {
	if w.cfg.WatchOnly {
		return fmt.Errorf("%w: %s on a watch-only watcher", ErrInvalid, what)
	}
	hooks := w.hooks()
	if hooks.write == nil {
		return fmt.Errorf("%w: %s: the backend gave no writer of self (Backend.SetSelfWriter)", ErrInvalid, what)
	}
	var refused error // the change itself was refused: not a write error
	err := hooks.write(ctx, func() (func(), error) {
		undo, err := change(w.Self())
		refused = err
		return undo, err
	})
	switch {
	case err == nil, refused != nil, errors.Is(err, ErrStopped):
		return err
	}
	return fmt.Errorf("svcwatch: %s: %w", what, err)
}

func (w *ServiceWatcher) hooks() selfHooks {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.store
}
