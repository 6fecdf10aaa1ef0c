package etcd

// watchertest_test.go: the behaviour suite every backend runs, on an embedded
// etcd.

import (
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/svcwatch/svcwatch"
	"github.com/svcwatch/svcwatch/watchertest"
)

func TestWatchertest(t *testing.T) {
	checkGoroutines(t)
	srv := startServer(t)
	var mu sync.Mutex
	clients := map[*EtcdServiceWatcher]*clientv3.Client{}
	watchertest.Run(t, watchertest.Factory{
		New: func(t testing.TB, self svcwatch.Instance, opts ...svcwatch.Option) (svcwatch.Watcher, error) {
			// A client per watcher, as per process, so that a crash can cut it.
			cli := newClient(t, srv.addr())
			w, err := NewEtcdServiceWatcher(cli, self, opts...)
			if err != nil {
				return nil, err
			}
			mu.Lock()
			clients[w] = cli
			mu.Unlock()
			return w, nil
		},
		Crash: func(t testing.TB, w svcwatch.Watcher) {
			ew := w.(*EtcdServiceWatcher)
			if err := ew.crash(ctxT(t)); err != nil {
				t.Fatalf("crash: %v", err)
			}
			mu.Lock()
			cli := clients[ew]
			mu.Unlock()
			cli.Close()
		},
	})
}
