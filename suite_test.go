package svcwatch

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch/internal/redistest"
)

// The Redis topologies of the behaviour suite, and the tests of it that only
// the Redis backend needs. The suite itself is the watchertest package, run on
// every topology by watchertest_redis_test.go.

func realBackend(t testing.TB) *backend {
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	return &backend{
		name: "redis",
		client: func(t testing.TB) redis.UniversalClient {
			c := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true})
			t.Cleanup(func() { c.Close() })
			return c
		},
		ttl: time.Second, keepAlive: 200 * time.Millisecond,
	}
}

// aclBackend logs in as a user allowed only the prefix's keys and channels and
// no dangerous command.
func aclBackend(t testing.TB, prefix string) *backend {
	srv := redistest.StartServer(t, redistest.ServerOptions{ACL: []string{
		"user app on >apppw ~" + prefix + ":* &" + prefix + ":* +@all -@dangerous",
	}})
	b := &backend{
		name: "redis-acl",
		client: func(t testing.TB) redis.UniversalClient {
			c := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: "app", Password: "apppw", ContextTimeoutEnabled: true})
			t.Cleanup(func() { c.Close() })
			return c
		},
		ttl: time.Second, keepAlive: 200 * time.Millisecond,
	}
	if prefix != DefaultKeyPrefix {
		b.opts = []Option{WithKeyPrefix(prefix)}
	}
	return b
}

const gameTable = "bingqiu/kaifa/20190510/game"

// A process told that it was replaced naturally stops itself: Stop called from
// the WithOnRegistrationLost callback returns promptly, not when its context ends.
func TestStopFromRegistrationLost(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		checkLeaks(t)
		stopped := make(chan error, 1)
		var old *node
		ready := make(chan struct{})
		old = b.newNode(t, gameTable, "g", WithOnRegistrationLost(func(_ Instance, err error) {
			<-ready
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			stopped <- old.w.Stop(ctx)
		}))
		close(ready)
		b.newNode(t, gameTable, "g") // the same ID and Name: a restart elsewhere
		select {
		case err := <-stopped:
			if err != nil {
				t.Fatalf("Stop from the callback = %v", err)
			}
		case <-time.After(waitTimeout):
			t.Fatal("the replaced incarnation was not told, or its Stop hung")
		}
		if old.w.Stats().Registered {
			t.Error("stopped incarnation says Registered")
		}
		if err := old.w.Start(context.Background()); !errors.Is(err, ErrStopped) {
			t.Errorf("Start after Stop = %v, want ErrStopped", err)
		}
	})
}

func TestStopDuringStart(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		checkLeaks(t)
		for i := 0; i < 5; i++ {
			w, err := NewRedisServiceWatcher(b.client(t), Instance{Table: gameTable, ID: "s", Name: "127.0.0.1:1"},
				append([]Option{WithTTL(b.ttl), WithKeepAliveInterval(b.keepAlive), WithLogger(quietLogger())}, b.opts...)...)
			if err != nil {
				t.Fatal(err)
			}
			started := make(chan error, 1)
			go func() { started <- w.Start(context.Background()) }()
			if err := w.Stop(context.Background()); err != nil {
				t.Fatalf("Stop during Start: %v", err)
			}
			if err := <-started; err != nil && !errors.Is(err, ErrStopped) {
				t.Fatalf("Start ended by Stop = %v, want nil or ErrStopped", err)
			}
			if err := w.Stop(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		// Whatever the interleaving, nothing is left registered.
		obs, err := b.startNode(t, Instance{Table: gameTable}, WatchOnly())
		if err != nil {
			t.Fatal(err)
		}
		if got := obs.w.Services(gameTable); len(got) != 0 {
			t.Errorf("left registered: %v", got)
		}
	})
}
