package svcwatch

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch/internal/redistest"
)

// The behaviour suite: each test runs on miniredis and on a real redis-server
// that the test starts on a free loopback port.

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

func TestDiscoverAcrossWatchers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		checkLeaks(t)
		a := b.newNode(t, gameTable, "a")
		bb := b.newNode(t, gameTable, "b")
		c := b.newNode(t, gameTable, "c")
		for _, n := range []*node{a, bb, c} {
			eventually(t, n.w.Self().ID+" sees a,b,c", func() bool { return ids(n.w.Services(gameTable)) == "a,b,c" })
		}
		// Each sees the two others added once, never itself.
		for _, n := range []*node{a, bb, c} {
			if err := n.w.b.Flush(context.Background()); err != nil { // events trail the view
				t.Fatal(err)
			}
			self := n.w.Self().ID
			for _, id := range []string{"a", "b", "c"} {
				want := 1
				if id == self {
					want = 0
				}
				if got := n.rec.count("add", id); got != want {
					t.Errorf("%s saw %d adds of %s, want %d (%s)", self, got, id, want, n.rec)
				}
			}
			if n.rec.overlappedCalls() {
				t.Errorf("%s: handler calls overlapped", self)
			}
		}
		// Lookup returns what was registered, with the watcher-set fields.
		got, ok := a.w.Lookup(gameTable, "c")
		if !ok || got.Name != "127.0.0.1:c" || got.Incarnation != c.w.Self().Incarnation || got.RegisteredAt.IsZero() {
			t.Errorf("Lookup(c) = %+v, %v; want c's registration", got, ok)
		}
		if _, ok := a.w.Lookup(gameTable, "zz"); ok {
			t.Error("Lookup of an unknown id succeeded")
		}
		st := a.w.Stats()
		if !st.Connected || !st.Registered || st.FullLoads == 0 || st.Events < 2 || st.LastSync.IsZero() {
			t.Errorf("stats = %+v", st)
		}
	})
}

func TestStartDeliversExistingPeers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		checkLeaks(t)
		b.newNode(t, gameTable, "p1")
		b.newNode(t, gameTable, "p2")
		// No waiting: when Start returns, OnAdd has been delivered for both.
		n := b.newNode(t, gameTable, "late")
		if !n.rec.has("add", "p1") || !n.rec.has("add", "p2") {
			t.Fatalf("after Start returned, events were %s; want adds of p1 and p2", n.rec)
		}
		if got := ids(n.w.Services(gameTable)); got != "late,p1,p2" {
			t.Fatalf("Services = %s, want late,p1,p2 (sorted, self included)", got)
		}
	})
}

func TestSetDescUpdatesPeers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		checkLeaks(t)
		a := b.newNode(t, gameTable, "a")
		peer := b.newNode(t, gameTable, "b")
		if err := a.w.SetDesc(context.Background(), `{"load":7}`); err != nil {
			t.Fatal(err)
		}
		eventually(t, "OnUpdate at b", func() bool { return peer.rec.has("update", "a") })
		for _, e := range peer.rec.events() {
			if e.op == "update" {
				var d struct{ Load int }
				if err := e.inst.Decode(&d); err != nil || d.Load != 7 || e.old.Desc != "" {
					t.Errorf("update: old %q cur %q (decoded %v, %v)", e.old.Desc, e.inst.Desc, d, err)
				}
			}
		}
		if got := a.w.Self().Desc; got != `{"load":7}` {
			t.Errorf("Self().Desc = %q", got)
		}
		if a.rec.has("update", "a") {
			t.Error("a was told about its own update")
		}
	})
}

func TestCleanStopRemovesAtPeers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		checkLeaks(t)
		a := b.newNode(t, gameTable, "a")
		peer := b.newNode(t, gameTable, "b")
		stopNode(t, a.w)
		// Well within the TTL: deregistration is pushed, not waited for.
		eventually(t, "OnRemove at b", func() bool { return peer.rec.has("remove", "a") })
		if got := ids(peer.w.Services(gameTable)); got != "b" {
			t.Errorf("Services after stop = %s", got)
		}
		if err := a.w.Stop(context.Background()); err != nil {
			t.Errorf("second Stop: %v", err)
		}
		if err := a.w.Start(context.Background()); !errors.Is(err, ErrStopped) {
			t.Errorf("Start after Stop = %v, want ErrStopped", err)
		}
	})
}

func TestKilledProcessExpires(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		checkLeaks(t)
		a := b.newNode(t, gameTable, "a")
		peer := b.newNode(t, gameTable, "b")
		other := b.newNode(t, gameTable, "c")
		crash(t, a.w)
		b.advancePastTTL(t, b.ttl+b.ttl/2, peer, other)
		eventually(t, "OnRemove of the killed process at b", func() bool { return peer.rec.has("remove", "a") })
		eventually(t, "OnRemove of the killed process at c", func() bool { return other.rec.has("remove", "a") })
		if peer.rec.has("remove", "c") || other.rec.has("remove", "b") {
			t.Errorf("a live process was removed: b saw %s; c saw %s", peer.rec, other.rec)
		}
	})
}

func TestWatchSecondTable(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		checkLeaks(t)
		const chat = "bingqiu/kaifa/20190510/chat"
		b.newNode(t, chat, "chat1")
		g := b.newNode(t, gameTable, "g1")
		if got := g.w.Services(chat); got != nil {
			t.Fatalf("Services of an unwatched table = %v", got)
		}
		if err := g.w.Watch(context.Background(), chat); err != nil {
			t.Fatal(err)
		}
		if !g.rec.has("add", "chat1") {
			t.Fatalf("after Watch returned, events were %s", g.rec)
		}
		b.newNode(t, chat, "chat2")
		eventually(t, "add of chat2", func() bool { return g.rec.has("add", "chat2") })
		if got := ids(g.w.Services(chat)); got != "chat1,chat2" {
			t.Errorf("Services(chat) = %s", got)
		}
		if err := g.w.Watch(context.Background(), chat); err != nil {
			t.Errorf("watching a watched table again: %v", err)
		}
		// WithTables watches from Start.
		n := b.newNode(t, gameTable, "g2", WithTables(chat))
		if !n.rec.has("add", "chat1") || !n.rec.has("add", "chat2") {
			t.Errorf("WithTables: events %s", n.rec)
		}
	})
}

func TestWatchOnly(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		checkLeaks(t)
		b.newNode(t, gameTable, "a")
		obs, err := b.startNode(t, Instance{Table: gameTable}, WatchOnly())
		if err != nil {
			t.Fatal(err)
		}
		if !obs.rec.has("add", "a") {
			t.Fatalf("watch-only events %s", obs.rec)
		}
		b.newNode(t, gameTable, "b")
		eventually(t, "watch-only sees b", func() bool { return obs.rec.has("add", "b") })
		if got := ids(obs.w.Services(gameTable)); got != "a,b" {
			t.Errorf("watch-only registered itself: Services = %s", got)
		}
		if obs.w.Stats().Registered {
			t.Error("watch-only watcher says Registered")
		}
		if err := obs.w.SetDesc(context.Background(), "x"); !errors.Is(err, ErrInvalid) {
			t.Errorf("SetDesc on watch-only = %v", err)
		}
	})
}

func TestDuplicateID(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		checkLeaks(t)
		first := b.newNode(t, gameTable, "dup")
		peer := b.newNode(t, gameTable, "peer")
		_, err := b.startNode(t, Instance{Table: gameTable, ID: "dup", Name: "10.0.0.9:1"})
		if !errors.Is(err, ErrDuplicateID) {
			t.Fatalf("second Start = %v, want ErrDuplicateID", err)
		}
		// Behind NAT the same address does not mean the same process.
		_, err = b.startNode(t, Instance{Table: gameTable, ID: "dup", Name: first.w.Self().Name}, WithoutRestartReplace())
		if !errors.Is(err, ErrDuplicateID) {
			t.Fatalf("Start with the same address and WithoutRestartReplace = %v, want ErrDuplicateID", err)
		}
		got, ok := peer.w.Lookup(gameTable, "dup")
		if !ok || got.Incarnation != first.w.Self().Incarnation {
			t.Fatalf("holder changed: %+v", got)
		}
		// The first keeps heartbeating: it is still registered after a few beats.
		hb := first.w.Stats().Heartbeats
		eventually(t, "more heartbeats of the holder", func() bool { return first.w.Stats().Heartbeats > hb+2 })
		if !first.w.Stats().Registered || peer.rec.has("remove", "dup") {
			t.Errorf("holder disturbed: stats %+v, peer saw %s", first.w.Stats(), peer.rec)
		}
	})
}

func TestRestartSameIDReplacesOldIncarnation(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		checkLeaks(t)
		lost := make(chan error, 1)
		old := b.newNode(t, gameTable, "g", WithOnRegistrationLost(func(_ Instance, err error) { lost <- err }))
		peer := b.newNode(t, gameTable, "peer")
		oldInc := old.w.Self().Incarnation
		// The same ID and address again: a restart of that process.
		cur := b.newNode(t, gameTable, "g")
		newInc := cur.w.Self().Incarnation
		eventually(t, "remove then add at peer", func() bool { return peer.rec.has("add", "g") && peer.rec.count("add", "g") == 2 })
		var seq []string
		for _, e := range peer.rec.events() {
			if e.inst.ID == "g" {
				seq = append(seq, e.op+":"+e.inst.Incarnation)
			}
		}
		want := []string{"add:" + oldInc, "remove:" + oldInc, "add:" + newInc}
		if len(seq) != 3 || seq[0] != want[0] || seq[1] != want[1] || seq[2] != want[2] {
			t.Fatalf("peer saw %v, want %v", seq, want)
		}
		// The old incarnation stands down at its next heartbeat, never fights back.
		select {
		case err := <-lost:
			if !errors.Is(err, ErrReplaced) {
				t.Errorf("lost callback err = %v", err)
			}
		case <-time.After(waitTimeout):
			t.Fatal("the replaced incarnation was not told")
		}
		if old.w.Stats().Registered {
			t.Error("replaced incarnation still says Registered")
		}
		if got, _ := peer.w.Lookup(gameTable, "g"); got.Incarnation != newInc {
			t.Errorf("peer holds incarnation %s, want %s", got.Incarnation, newInc)
		}
		if err := old.w.SetDesc(context.Background(), "x"); !errors.Is(err, ErrReplaced) {
			t.Errorf("SetDesc of the replaced incarnation = %v", err)
		}
		if err := old.w.SetMeta(context.Background(), map[string]string{"zone": "x"}); !errors.Is(err, ErrReplaced) {
			t.Errorf("SetMeta of the replaced incarnation = %v", err)
		}
		if err := old.w.SetState(context.Background(), Draining); !errors.Is(err, ErrReplaced) {
			t.Errorf("SetState of the replaced incarnation = %v", err)
		}
		stopNode(t, old.w)
		if err := old.w.SetState(context.Background(), Serving); !errors.Is(err, ErrStopped) {
			t.Errorf("SetState after Stop = %v", err)
		}
		if err := old.w.SetMeta(context.Background(), nil); !errors.Is(err, ErrStopped) {
			t.Errorf("SetMeta after Stop = %v", err)
		}
	})
}

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

func TestHandlerMayCallWatcher(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		checkLeaks(t)
		const chat = "bingqiu/kaifa/20190510/chat"
		b.newNode(t, chat, "chat1")
		var w *RedisServiceWatcher
		watched := make(chan error, 1)
		stopped := make(chan error, 1)
		h := HandlerFuncs{
			Add: func(inst Instance) {
				switch inst.ID {
				case "trigger":
					_ = w.Services(gameTable)
					watched <- w.Watch(context.Background(), chat)
				case "chat1":
					stopped <- w.Stop(context.Background())
				}
			},
		}
		var err error
		w, err = NewRedisServiceWatcher(b.client(t), Instance{Table: gameTable, ID: "h", Name: "127.0.0.1:1"},
			append([]Option{WithTTL(b.ttl), WithKeepAliveInterval(b.keepAlive), WithHandler(h), WithLogger(quietLogger())}, b.opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		b.newNode(t, gameTable, "trigger")
		for _, ch := range []chan error{watched, stopped} {
			select {
			case err := <-ch:
				if err != nil {
					t.Fatalf("call from handler: %v", err)
				}
			case <-time.After(waitTimeout):
				t.Fatal("a watcher call from a handler deadlocked")
			}
		}
		if err := w.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}

func TestHandlerPanicIsRecovered(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		checkLeaks(t)
		rec := &recorder{}
		boom := HandlerFuncs{Add: func(inst Instance) {
			if inst.ID == "p1" {
				panic("boom")
			}
		}}
		n := b.newNode(t, gameTable, "w", WithHandler(boom), WithHandler(rec))
		b.newNode(t, gameTable, "p1")
		b.newNode(t, gameTable, "p2")
		eventually(t, "events after a panic", func() bool { return rec.has("add", "p1") && rec.has("add", "p2") })
		if !n.w.Stats().Registered {
			t.Error("the watcher died with the handler")
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
