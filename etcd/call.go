package etcd

// call.go: the plumbing of calls to etcd: timeouts and recording whether etcd
// answers (retries, backoff and tokens are the core's: Backend.Retry,
// Backend.Backoff, Backend.NewToken). Runs on whichever goroutine calls.

import (
	"errors"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
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
