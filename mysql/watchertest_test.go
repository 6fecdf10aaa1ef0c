package mysql

import (
	"context"
	"testing"
	"time"

	"github.com/svcwatch/svcwatch"
	"github.com/svcwatch/svcwatch/watchertest"
)

// TestWatchertest runs the behaviour suite every backend passes, on one
// database; each watcher has a pool of its own, as a process would. The scan
// runs every 100ms (the suite's TTL is 1s), so that the suite's waits for a
// change, which take one scan interval here, stay short.
func TestWatchertest(t *testing.T) {
	d := newTestDB(t)
	watchertest.Run(t, watchertest.Factory{
		New: func(t testing.TB, self svcwatch.Instance, opts ...svcwatch.Option) (svcwatch.Watcher, error) {
			opts = append(opts, svcwatch.WithScanInterval(100*time.Millisecond))
			return NewMySQLServiceWatcher(openDB(t, d.cfg), self, opts...)
		},
		Crash: func(t testing.TB, w svcwatch.Watcher) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := w.(*MySQLServiceWatcher).crash(ctx); err != nil {
				t.Errorf("crash: %v", err)
			}
		},
	})
}
