package svcwatch

// backoff.go: the one capped, jittered exponential backoff, used by the
// watcher's retries (Start's register and loads) and by ConnManager's redials.

import (
	"math/rand"
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
	return half + time.Duration(rand.Int63n(int64(d-half)+1))
}
