package svcwatch_test

// watchertest_redis_test.go: the behaviour suite (watchertest) on every Redis
// topology: miniredis, a real redis-server, the Cluster and Sentinel.

import (
	"sync"
	"testing"
	"time"

	"github.com/svcwatch/svcwatch"
	"github.com/svcwatch/svcwatch/watchertest"
)

func TestWatchertest(t *testing.T) {
	for _, s := range svcwatch.RedisStores() {
		t.Run(s.Name, func(t *testing.T) {
			store := s.Start(t) // first: a shared Cluster or Sentinel outlives the test
			svcwatch.CheckLeaks(t)
			f := watchertest.Factory{
				New: func(t testing.TB, self svcwatch.Instance, opts ...svcwatch.Option) (svcwatch.Watcher, error) {
					w, err := svcwatch.NewRedisServiceWatcher(store.Client(t), self, append(opts, store.Opts...)...)
					if err != nil {
						return nil, err // a nil *RedisServiceWatcher must not become a non-nil Watcher
					}
					return w, nil
				},
				Crash: func(t testing.TB, w svcwatch.Watcher) {
					svcwatch.CrashRedisWatcher(t, w.(*svcwatch.RedisServiceWatcher))
				},
				TTL:       store.TTL,
				KeepAlive: store.KeepAlive,
			}
			if mr := store.Mini; mr != nil {
				// miniredis's TIME follows the wall clock until a test sets
				// it; from the first step on it moves only here.
				var mu sync.Mutex
				var now time.Time
				f.AdvanceTime = func(d time.Duration) {
					mu.Lock()
					defer mu.Unlock()
					if now.IsZero() {
						now = time.Now()
					}
					now = now.Add(d)
					mr.SetTime(now)
				}
			}
			watchertest.Run(t, f)
		})
	}
}
