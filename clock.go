package svcwatch

// clock.go: the one local time source of a watcher. Its loops' schedules
// (heartbeat, scan, reloads, retries) and the view's holds read it, so that
// tests can replace it (withClock). Network deadlines (context timeouts of
// Redis calls) stay on real time: the Redis client knows no other.

import (
	"context"
	"time"
)

// clock is the watcher's local time source; server time comes from Redis.
type clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer is a one-shot timer of the watcher's clock (see Backend.NewTimer).
type Timer interface {
	// C delivers the time once the timer fires.
	C() <-chan time.Time
	// Stop stops the timer; it reports whether the timer was still pending.
	Stop() bool
	// Reset makes the timer fire after d; call it on a stopped timer, or on
	// a fired one whose tick was received.
	Reset(d time.Duration) bool
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) NewTimer(d time.Duration) Timer { return systemTimer{time.NewTimer(d)} }

type systemTimer struct{ t *time.Timer }

func (s systemTimer) C() <-chan time.Time        { return s.t.C }
func (s systemTimer) Stop() bool                 { return s.t.Stop() }
func (s systemTimer) Reset(d time.Duration) bool { return s.t.Reset(d) }

// sleep waits d on k, or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, k clock, d time.Duration) bool {
	t := k.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return true
	case <-ctx.Done():
		return false
	}
}
