package svcwatch

import (
	"context"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock that moves only when the test says so.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	k      *fakeClock
	c      chan time.Time
	at     time.Time
	active bool
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
}

func (k *fakeClock) Now() time.Time {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.now
}

func (k *fakeClock) NewTimer(d time.Duration) Timer {
	t := &fakeTimer{k: k, c: make(chan time.Time, 1)}
	t.Reset(d)
	return t
}

// Advance moves the clock and fires every timer that comes due.
func (k *fakeClock) Advance(d time.Duration) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.now = k.now.Add(d)
	for _, t := range k.timers {
		if t.active && !t.at.After(k.now) {
			t.active = false
			select {
			case t.c <- k.now:
			default:
			}
		}
	}
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Stop() bool {
	t.k.mu.Lock()
	defer t.k.mu.Unlock()
	was := t.active
	t.active = false
	return was
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	t.k.mu.Lock()
	defer t.k.mu.Unlock()
	was := t.active
	t.at, t.active = t.k.now.Add(d), true
	if !was {
		t.k.timers = append(t.k.timers, t)
	}
	if d <= 0 {
		t.active = false
		select {
		case t.c <- t.k.now:
		default:
		}
	}
	return was
}

// TestClockDrivesTheLoops shows that the heartbeat's schedule and LastSync come
// from the watcher's clock: with a keepalive of ten minutes of real time, every
// heartbeat here is one the test's clock made due.
func TestClockDrivesTheLoops(t *testing.T) {
	checkLeaks(t)
	b := miniBackend(t)
	k := newFakeClock()
	w, err := NewRedisServiceWatcher(b.client(t), Instance{Table: gameTable, ID: "g", Name: "127.0.0.1:1"},
		WithTTL(time.Hour), WithKeepAliveInterval(10*time.Minute), WithLogger(quietLogger()), withClock(k))
	if err != nil {
		t.Fatal(err)
	}
	defer stopNode(t, w)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if got := w.Stats().LastSync; !got.Equal(k.Now()) {
		t.Errorf("LastSync %v, want the clock's %v", got, k.Now())
	}
	for i := uint64(1); i <= 3; i++ {
		k.Advance(10 * time.Minute)
		eventually(t, "a heartbeat due by the clock", func() bool { return w.Stats().Heartbeats >= i })
		if n := w.Stats().Heartbeats; n != i {
			t.Fatalf("after %d keepalive intervals of the clock: %d heartbeats", i, n)
		}
	}
}
