package etcd

// call.go: the plumbing of calls to etcd: timeouts, retries with backoff,
// recording whether etcd answers, and tokens. Runs on whichever goroutine
// calls.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/svcwatch/svcwatch"
)

// callTimeout bounds one call: a keepalive interval, so that a stalled etcd
// never holds a heartbeat longer than one period.
func (w *EtcdServiceWatcher) callTimeout() time.Duration { return w.conf.KeepAlive }

// loadTimeout bounds one range read, which may carry a large table.
func (w *EtcdServiceWatcher) loadTimeout() time.Duration {
	return max(2*w.conf.KeepAlive, 2*time.Second)
}

// noteRoundTrip records whether etcd answered. An error etcd itself returned
// (a gRPC status such as lease not found or compacted) is an answer.
func (w *EtcdServiceWatcher) noteRoundTrip(err error) {
	var etcdErr rpctypes.EtcdError
	ok := err == nil || errors.As(err, &etcdErr)
	w.b.SetConnected(ok)
	switch {
	case ok && w.downLogged.Swap(false):
		w.log.Info("svcwatch/etcd: etcd answers again")
	case !ok && !w.downLogged.Swap(true):
		w.log.Warn("svcwatch/etcd: etcd does not answer; keeping the last view", "err", err)
	}
}

// retry calls f until it succeeds, fails for good (a duplicate, bad input, a
// stopped watcher) or ctx ends, with a capped jittered backoff between tries.
func (w *EtcdServiceWatcher) retry(ctx context.Context, what string, f func(context.Context) error) error {
	for attempt := 0; ; attempt++ {
		err := f(ctx)
		if err == nil || errors.Is(err, svcwatch.ErrDuplicateID) || errors.Is(err, svcwatch.ErrInvalid) ||
			errors.Is(err, svcwatch.ErrStopped) {
			return err
		}
		if !sleep(ctx, backoff(attempt, 50*time.Millisecond, w.conf.KeepAlive)) {
			return fmt.Errorf("svcwatch/etcd: %s: %w (last error: %v)", what, ctx.Err(), err)
		}
	}
}

// backoff is the wait before retry attempt+1: from lo doubling up to hi, with
// equal jitter, so that processes that failed together do not retry in
// lockstep.
func backoff(attempt int, lo, hi time.Duration) time.Duration {
	d := lo
	for i := 0; i < attempt && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	half := d / 2
	return half + time.Duration(mrand.Int63n(int64(d-half)+1))
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// newToken returns a random 16-hex-digit token (incarnations, record versions).
func newToken() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
