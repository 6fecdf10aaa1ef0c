package svcwatch

// backoff.go: the one capped, jittered exponential backoff, used by the
// watcher's retries (Start's register and loads, Backend.Retry) and by
// ConnManager's redials; and the random tokens of incarnations and records.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand"
	"time"
)

// backoff is a delay that starts at min and doubles per consecutive failure up
// to max, with equal jitter (a random value in [step/2, step]), so that
// processes that failed together do not retry in lockstep.
type backoff struct{ min, max time.Duration }

// delay returns the wait before retry number attempt+1 (attempt counts from 0).
func (b backoff) delay(attempt int) time.Duration {
	d := b.min
	for i := 0; i < attempt && d < b.max; i++ {
		if d > b.max/2 {
			d = b.max
			break
		}
		d *= 2
	}
	if d > b.max {
		d = b.max
	}
	half := d / 2
	return half + time.Duration(mrand.Int63n(int64(d-half)+1))
}

// retryBackoff paces the retries of a store that does not answer.
var retryBackoff = backoff{min: 50 * time.Millisecond, max: 2 * time.Second}

// retry runs f until it succeeds, fails for good (ErrDuplicateID, ErrInvalid,
// ErrStopped), or ctx ends, with retryBackoff on clock k.
func retry(ctx context.Context, k clock, what string, f func(context.Context) error) error {
	for attempt := 0; ; attempt++ {
		err := f(ctx)
		if err == nil || errors.Is(err, ErrDuplicateID) || errors.Is(err, ErrInvalid) || errors.Is(err, ErrStopped) {
			return err
		}
		if !sleep(ctx, k, retryBackoff.delay(attempt)) {
			return fmt.Errorf("svcwatch: %s: %w (last error: %v)", what, ctx.Err(), err)
		}
	}
}

// newToken returns a random 16-hex-digit token (incarnations, epochs, record
// versions).
func newToken() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails on supported platforms
	return hex.EncodeToString(b[:])
}
