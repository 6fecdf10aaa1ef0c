package svcwatch

// health.go: WithHealthCheck, the process's own health check. A backend runs it
// on its heartbeat schedule through Backend.CheckHealth: at most one check at a
// time, each bounded by half the keepalive interval, so that a hung check never
// holds the heartbeat longer than that. The check runs on a goroutine of its
// own, owned by the core; Backend.StopEvents waits for it.

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// WithHealthCheck sets the process's own health check. It runs before each
// heartbeat, at most one at a time, with a deadline of half the keepalive
// interval. A check that fails, panics or does not return in time makes this
// process Unhealthy (peers get OnUpdate; Pick gives it no new keys); the first
// check that passes restores the state the process had set. A check still
// running at the next heartbeat counts as failing. Each change of health is
// logged once. Default: none (always healthy).
func WithHealthCheck(check func(ctx context.Context) error) Option {
	return func(c *config) { c.health = check }
}

// errCheckHung is the verdict while an earlier check has not returned.
var errCheckHung = errors.New("svcwatch: the previous health check has not returned")

// healthRunner runs the checks of one watcher.
type healthRunner struct {
	running atomic.Bool // a check is in flight (perhaps hung)
	wg      sync.WaitGroup
}

// run runs check with a deadline and returns its verdict: nil, its error, a
// panic, the deadline, or errCheckHung.
func (h *healthRunner) run(ctx context.Context, check func(context.Context) error, deadline time.Duration) error {
	if !h.running.CompareAndSwap(false, true) {
		return errCheckHung
	}
	ctx, cancel := context.WithTimeout(ctx, deadline)
	done := make(chan error, 1)
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		defer h.running.Store(false)
		done <- callCheck(ctx, check)
	}()
	defer cancel()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("svcwatch: the health check did not return within %v", deadline)
	}
}

func callCheck(ctx context.Context, check func(context.Context) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("svcwatch: the health check panicked: %v\n%s", r, debug.Stack())
		}
	}()
	return check(ctx)
}

// wait waits for a check in flight until ctx ends.
func (h *healthRunner) wait(ctx context.Context) error {
	if !h.running.Load() {
		return nil
	}
	done := make(chan struct{})
	go func() { h.wg.Wait(); close(done) }()
	return waitDone(ctx, done, "health check")
}

// CheckHealth runs the WithHealthCheck check, if any, and records its verdict.
// A backend calls it on its heartbeat goroutine before each heartbeat; it
// returns within half the keepalive interval. It reports whether the state
// peers see changed, in which case the backend writes self's record (Self
// shows the new State).
func (b *Backend) CheckHealth(ctx context.Context) (changed bool) {
	check := b.w.cfg.health
	if check == nil {
		return false
	}
	err := b.w.health.run(ctx, check, b.w.cfg.KeepAlive/2)
	if ctx.Err() != nil {
		return false // stopping: no verdict
	}
	if !b.w.setUnhealthy(err != nil) {
		return false
	}
	self := b.w.Self()
	if err != nil {
		b.w.cfg.Logger.Warn("svcwatch: health check failed; this process is unhealthy and takes no new work",
			"key", self.Key(), "err", err)
	} else {
		b.w.cfg.Logger.Info("svcwatch: health check passes again", "key", self.Key(), "state", self.State.String())
	}
	return true
}
