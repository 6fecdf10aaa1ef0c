package svcwatch

// watchertest_export_test.go: what the external test of watchertest on Redis
// (watchertest_redis_test.go, package svcwatch_test, which may import
// watchertest without an import cycle) needs from the internal test helpers:
// the Redis topologies of the behaviour suite, the crash of a watcher and the
// goroutine-leak check.

import (
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// RedisStore is one Redis topology of the suite, as a watchertest.Factory
// needs it.
type RedisStore struct {
	Client         func(t testing.TB) redis.UniversalClient // a new client, closed at cleanup
	Mini           *miniredis.Miniredis                     // set on miniredis
	Opts           []Option                                 // for every watcher (a key prefix)
	TTL, KeepAlive time.Duration
}

// RedisStores returns the topologies watchertest runs on, by name: miniredis,
// a real redis-server, the shared Cluster and the shared Sentinel setup (the
// last three skip, or fail under SVCWATCH_REQUIRE_REDIS=1, without
// redis-server). Each call of a start function makes a store for one Run.
func RedisStores() []struct {
	Name  string
	Start func(t testing.TB) RedisStore
} {
	wrap := func(f func(t testing.TB) *backend) func(t testing.TB) RedisStore {
		return func(t testing.TB) RedisStore {
			b := f(t)
			return RedisStore{Client: b.client, Mini: b.mr, Opts: b.opts, TTL: b.ttl, KeepAlive: b.keepAlive}
		}
	}
	return []struct {
		Name  string
		Start func(t testing.TB) RedisStore
	}{
		{"miniredis", wrap(miniBackend)},
		{"redis", wrap(realBackend)},
		// Least privilege: only the prefix's keys and channels, no dangerous command.
		{"redis-acl", wrap(func(t testing.TB) *backend { return aclBackend(t, DefaultKeyPrefix) })},
		{"redis-acl-prefix", wrap(func(t testing.TB) *backend { return aclBackend(t, "studio7") })},
		{"redis-cluster", wrap(clusterBackend)},
		{"redis-sentinel", wrap(sentinelBackend)},
	}
}

// CrashRedisWatcher ends w as SIGKILL would: no deregistration, no heartbeat,
// no event after it returns.
func CrashRedisWatcher(t testing.TB, w *RedisServiceWatcher) { crash(t, w) }

// CheckLeaks fails t if goroutines started after it outlive t (goleak, with
// the miniredis server's own ignored).
func CheckLeaks(t *testing.T) { checkLeaks(t) }
