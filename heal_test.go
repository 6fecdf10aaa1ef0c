package svcwatch

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch/internal/redistest"
	"github.com/svcwatch/svcwatch/protocol"
)

// Views that always heal: each test damages a table on a real redis-server the
// way an eviction, a stray command, a failover or an attacker would, and checks
// that every watcher ends with what Redis holds, without false removals.

// A dead process whose record hash is lost (evicted, or a stray DEL) is not
// listed for good: the next script call in the table sees the record count
// disagree, repairs the table under a new epoch, and the dead one is removed
// once the hold ends, while the live ones register again.
func TestHealLostRecordHash(t *testing.T) {
	checkLeaks(t)
	b, srv := faultBackend(t, redistest.ServerOptions{})
	a, peer := b.newNode(t, gameTable, "a"), b.newNode(t, gameTable, "b")
	dead := b.newNode(t, gameTable, "dead")
	converge(t, []*node{a, peer}, gameTable, "a,b,dead")
	crash(t, dead.w)
	srv.Do(t, "DEL", protocol.TableKeys(DefaultKeyPrefix, gameTable).Inst)
	converge(t, []*node{a, peer}, gameTable, "a,b")
	noRemoves(t, []*node{a, peer}, "a", "b")
	late := b.newNode(t, gameTable, "late")
	converge(t, []*node{a, peer, late}, gameTable, "a,b,late")
}

// A live process whose deadline is lost is not missing for good: a watcher
// that reads the table then still sees it, and nobody is told it left.
func TestHealLostDeadline(t *testing.T) {
	checkLeaks(t)
	b, srv := faultBackend(t, redistest.ServerOptions{})
	a, peer := b.newNode(t, gameTable, "a"), b.newNode(t, gameTable, "b")
	converge(t, []*node{a, peer}, gameTable, "a,b")
	srv.Do(t, "ZREM", protocol.TableKeys(DefaultKeyPrefix, gameTable).Exp, "a")
	late := b.newNode(t, gameTable, "late") // reads the table now
	all := []*node{a, peer, late}
	converge(t, all, gameTable, "a,b,late")
	// And it stays: its deadline is back, so it never expires.
	b.advancePastTTL(t, 2*b.ttl, all...)
	converge(t, all, gameTable, "a,b,late")
	noRemoves(t, all, "a", "b")
}

// A table rolled back under the same epoch (what an asynchronous failover that
// lost the last write looks like) with no later change: the watcher that saw
// the lost write does not keep it for good, the process that wrote it writes it
// again, and every view, old and new, ends with the process's own truth, with no
// full read wasted on every scan.
func TestHealRollbackWithoutLaterChange(t *testing.T) {
	checkLeaks(t)
	b, srv := faultBackend(t, redistest.ServerOptions{})
	a, w := b.newNode(t, gameTable, "a"), b.newNode(t, gameTable, "w")
	ctx := context.Background()
	if err := a.w.SetDesc(ctx, "v1"); err != nil {
		t.Fatal(err)
	}
	descAt := func(n *node) string { got, _ := n.w.Lookup(gameTable, "a"); return got.Desc }
	eventually(t, "v1 at w", func() bool { return descAt(w) == "v1" })

	keys := protocol.TableKeys(DefaultKeyPrefix, gameTable)
	dumps := map[string]string{}
	for _, k := range keys.All() {
		dumps[k] = srv.Do(t, "DUMP", k).(string)
	}
	if err := a.w.SetDesc(ctx, "v2"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "v2 at w", func() bool { return descAt(w) == "v2" })
	for _, k := range keys.All() {
		srv.Do(t, "RESTORE", k, 0, dumps[k], "REPLACE")
	}
	fresh := b.newNode(t, gameTable, "fresh")
	rc := srv.Client(t)
	for _, n := range []*node{w, fresh} {
		eventually(t, fmt.Sprintf("%s holds the process's own v2", n.w.Self().ID), func() bool {
			rec, _ := rc.HGet(ctx, keys.Inst, "a").Result()
			return descAt(n) == "v2" && strings.Contains(rec, `"desc":"v2"`)
		})
	}
	// Settled: a few scans confirm the view and read nothing.
	loads := w.w.Stats().FullLoads
	for i := 0; i < 5; i++ {
		synced := w.w.Stats().LastSync
		eventually(t, "a scan that confirms the view", func() bool { return w.w.Stats().LastSync.After(synced) })
	}
	if extra := w.w.Stats().FullLoads - loads; extra > 1 {
		t.Errorf("%d full reads in five idle scans after the rollback healed", extra)
	}
	noRemoves(t, []*node{w, fresh}, "a")
}

// A revision that is not a number makes no script fail halfway: the table is
// repaired and changes keep reaching the watchers.
func TestHealNonNumericRevision(t *testing.T) {
	checkLeaks(t)
	b, srv := faultBackend(t, redistest.ServerOptions{})
	a, w := b.newNode(t, gameTable, "a"), b.newNode(t, gameTable, "w")
	converge(t, []*node{a, w}, gameTable, "a,w")
	srv.Do(t, "SET", protocol.TableKeys(DefaultKeyPrefix, gameTable).Rev, "x")
	if err := a.w.SetDesc(context.Background(), "after"); err != nil {
		t.Fatalf("SetDesc after the damage: %v", err)
	}
	eventually(t, "the update at w", func() bool { got, _ := w.w.Lookup(gameTable, "a"); return got.Desc == "after" })
	c := b.newNode(t, gameTable, "c")
	converge(t, []*node{a, w, c}, gameTable, "a,c,w")
	noRemoves(t, []*node{a, w}, "a", "w")
}

// A record over a watcher's WithMaxDescSize is absent from its view, whether it
// came by push or by a full read: no flapping between the two.
func TestHealOversizedRecordSameByPushAndLoad(t *testing.T) {
	checkLeaks(t)
	b, srv := faultBackend(t, redistest.ServerOptions{})
	a := b.newNode(t, gameTable, "a")
	w := b.newNode(t, gameTable, "w", WithMaxDescSize(100))
	converge(t, []*node{w}, gameTable, "a,w")
	ctx := context.Background()
	if err := a.w.SetDesc(ctx, strings.Repeat("x", 200)); err != nil {
		t.Fatal(err)
	}
	converge(t, []*node{w}, gameTable, "w") // by push
	loads := w.w.Stats().FullLoads
	srv.Do(t, "CLIENT", "KILL", "TYPE", "pubsub")
	eventually(t, "a full read after the subscription came back", func() bool { return w.w.Stats().FullLoads > loads })
	converge(t, []*node{w}, gameTable, "w") // by the full read
	if err := a.w.SetDesc(ctx, "small"); err != nil {
		t.Fatal(err)
	}
	converge(t, []*node{w}, gameTable, "a,w")
	flushed(t, w) // events trail the view
	var seq []string
	for _, e := range w.rec.events() {
		if e.inst.ID == "a" {
			seq = append(seq, e.op+":"+e.inst.Desc)
		}
	}
	if want := "add:,remove:,add:small"; strings.Join(seq, ",") != want {
		t.Errorf("w saw %v, want %s", seq, want)
	}
}

// Junk on a table's channel costs a bounded number of full reads and bounded
// memory, however much of it comes.
func TestHealJunkMessagesBounded(t *testing.T) {
	checkLeaks(t)
	b, srv := faultBackend(t, redistest.ServerOptions{})
	a, w := b.newNode(t, gameTable, "a"), b.newNode(t, gameTable, "w")
	converge(t, []*node{w}, gameTable, "a,w")
	rc := srv.Client(t)
	ctx := context.Background()
	loads := w.w.Stats().FullLoads
	began := time.Now()
	pipe := rc.Pipeline()
	for i := 0; i < 5000; i++ {
		pipe.Publish(ctx, protocol.TableKeys(DefaultKeyPrefix, gameTable).Channel, fmt.Sprintf("{junk %d", i))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.w.SetDesc(ctx, "after the junk"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a change after the junk", func() bool { got, _ := w.w.Lookup(gameTable, "a"); return got.Desc == "after the junk" })
	// At most one read per reload gap while the junk lasted, and a few more.
	elapsed := time.Since(began)
	extra := w.w.Stats().FullLoads - loads
	bound := uint64(elapsed/w.w.reloadGap()) + 5
	t.Logf("5,000 junk messages: %d full reads in %v (bound %d)", extra, elapsed, bound)
	if extra > bound {
		t.Errorf("%d full reads for 5,000 junk messages in %v, want at most %d", extra, elapsed, bound)
	}
	if n := w.w.ServiceWatcher.logged.len(); n > 2 {
		t.Errorf("the watcher remembers %d logged items after junk on one table", n)
	}
}

// Stop with a context that is already over (a signal handler's, usually) still
// deregisters: peers hear at once instead of a TTL later.
func TestHealStopWithCancelledContext(t *testing.T) {
	checkLeaks(t)
	b, srv := faultBackend(t, redistest.ServerOptions{})
	a, peer := b.newNode(t, gameTable, "a"), b.newNode(t, gameTable, "peer")
	converge(t, []*node{peer}, gameTable, "a,peer")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := a.w.Stop(ctx); err != nil {
		t.Errorf("Stop with a cancelled context: %v", err)
	}
	if srv.Client(t).HExists(context.Background(), protocol.TableKeys(DefaultKeyPrefix, gameTable).Inst, "a").Val() {
		t.Error("Stop with a cancelled context left the registration in Redis")
	}
	eventually(t, "the peer hears of the stop", func() bool { return peer.rec.has("remove", "a") })
}

// Under memory pressure with an eviction policy that may take svcwatch's own
// keys (allkeys-lru, allkeys-random: the README says not to use them), tables
// lose keys without any message. While processes die and start, every view must
// still end equal to Redis, and Redis equal to the processes that live.
func TestHealUnderEvictionPressure(t *testing.T) {
	for _, policy := range []string{"allkeys-lru", "allkeys-random"} {
		t.Run(policy, func(t *testing.T) {
			checkLeaks(t)
			b, srv := faultBackend(t, redistest.ServerOptions{Args: []string{"--maxmemory", "3mb", "--maxmemory-policy", policy}})
			// A TTL long against the pressure, so that the dead are still
			// registered while their keys are evicted.
			b.ttl, b.keepAlive = 4*time.Second, 500*time.Millisecond
			live := map[string]*node{}
			for i := 0; i < 5; i++ {
				id := fmt.Sprintf("p%d", i)
				live[id] = b.newNode(t, gameTable, id)
			}

			// 1,000 SETs of 20 KB a second for three seconds, while two
			// processes die and two start.
			ctx, stop := context.WithCancel(context.Background())
			pressure := make(chan error, 1)
			go func() {
				rc := srv.Client(t)
				val := strings.Repeat("v", 20<<10)
				tick := time.NewTicker(50 * time.Millisecond)
				defer tick.Stop()
				for n := 0; ctx.Err() == nil; {
					pipe := rc.Pipeline()
					for i := 0; i < 50; i++ {
						n++
						pipe.Set(ctx, fmt.Sprintf("junk:%d", n), val, 0)
					}
					if _, err := pipe.Exec(ctx); err != nil && ctx.Err() == nil {
						pressure <- err
						return
					}
					select {
					case <-ctx.Done():
					case <-tick.C:
					}
				}
				pressure <- nil
			}()
			time.Sleep(time.Second) // let the pressure build; the run length is not asserted
			crash(t, live["p0"].w)
			delete(live, "p0")
			time.Sleep(time.Second)
			crash(t, live["p1"].w)
			delete(live, "p1")
			for _, id := range []string{"p5", "p6"} {
				n, err := b.startNode(t, Instance{Table: gameTable, ID: id, Name: "127.0.0.1:" + id})
				if err != nil {
					t.Fatalf("start %s under pressure: %v", id, err)
				}
				live[id] = n
			}
			time.Sleep(time.Second)
			stop()
			if err := <-pressure; err != nil {
				t.Fatalf("the pressure writer: %v", err)
			}
			if evicted := srv.Do(t, "INFO", "stats").(string); !strings.Contains(evicted, "evicted_keys:") ||
				strings.Contains(evicted, "evicted_keys:0\r\n") {
				t.Fatalf("nothing was evicted; the test made no pressure:\n%s", evicted)
			}

			var want []string
			for id := range live {
				want = append(want, id)
			}
			wantIDs := strings.Join(sortedCopy(want), ",")
			var nodes []*node
			for _, n := range live {
				nodes = append(nodes, n)
			}
			inst := protocol.TableKeys(DefaultKeyPrefix, gameTable).Inst
			rc := srv.Client(t)
			var got string
			deadline := time.Now().Add(waitTimeout)
			for got != wantIDs && time.Now().Before(deadline) {
				got = strings.Join(sortedCopy(rc.HKeys(context.Background(), inst).Val()), ",")
				time.Sleep(5 * time.Millisecond)
			}
			if got != wantIDs {
				for id, n := range live {
					t.Logf("%s: %+v", id, n.w.Stats())
				}
				t.Fatalf("Redis holds %s, want the live processes %s", got, wantIDs)
			}
			converge(t, nodes, gameTable, wantIDs)
		})
	}
}

func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

// proxiedNode starts a node whose client reaches srv through a proxy the test
// controls (ContextTimeoutEnabled, default dial timeout).
func proxiedNode(t *testing.T, b *backend, proxy *redistest.Proxy, id string, opts ...Option) *node {
	t.Helper()
	pb := *b
	pb.client = func(t testing.TB) redis.UniversalClient {
		c := redis.NewClient(&redis.Options{Addr: proxy.Addr(), ContextTimeoutEnabled: true,
			ReadTimeout: 300 * time.Millisecond, WriteTimeout: 300 * time.Millisecond, MaxRetries: -1})
		t.Cleanup(func() { c.Close() })
		return c
	}
	return pb.newNode(t, gameTable, id, opts...)
}

// Stop keeps to its context while Start is still trying to reach a Redis that
// accepts connections and then says nothing.
func TestHealStopDuringStalledConnect(t *testing.T) {
	checkLeaks(t)
	_, srv := faultBackend(t, redistest.ServerOptions{})
	proxy := redistest.StartProxy(t, srv.Addr())
	proxy.Blackhole(true)
	c := redis.NewClient(&redis.Options{Addr: proxy.Addr(), ContextTimeoutEnabled: true, DialTimeout: 5 * time.Second})
	defer c.Close()
	w, err := NewRedisServiceWatcher(c, Instance{Table: gameTable, ID: "a", Name: "127.0.0.1:1"},
		WithTTL(time.Second), WithKeepAliveInterval(200*time.Millisecond), WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan error, 1)
	go func() { started <- w.Start(context.Background()) }()
	eventually(t, "Start's connections held by the blackhole", func() bool { return proxy.Conns() >= 2 })

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	began := time.Now()
	stopErr := w.Stop(ctx)
	took := time.Since(began)
	t.Logf("Stop with a 500ms context took %v: %v", took, stopErr)
	// The promise is "returns when its context ends"; the margin is for a
	// loaded machine, far below the dial timeout that used to hold it.
	if took > 3*time.Second {
		t.Errorf("Stop took %v with a 500ms context", took)
	}
	select {
	case err := <-started:
		if !errors.Is(err, ErrStopped) {
			t.Errorf("Start = %v, want ErrStopped", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Start did not return after Stop")
	}
	proxy.Close() // the dials it held end now, before the leak check
}

// A subscription whose flow a middlebox dropped silently is replaced: changes
// reach the watcher by push again, not only by the scan.
func TestHealStalledSubscription(t *testing.T) {
	checkLeaks(t)
	b, srv := faultBackend(t, redistest.ServerOptions{})
	proxy := redistest.StartProxy(t, srv.Addr())
	logs := &logCounter{}
	a := b.newNode(t, gameTable, "a")
	w := proxiedNode(t, b, proxy, "w", WithLogger(logs.logger()))
	converge(t, []*node{w}, gameTable, "a,w")
	proxy.Stall() // the subscription and the pooled connections; new ones work

	ctx := context.Background()
	descAt := func() string { got, _ := w.w.Lookup(gameTable, "a"); return got.Desc }
	for i := 0; logs.count("subscribing again") == 0; i++ {
		if i > 100 {
			t.Fatalf("the stalled subscription was never replaced:\n%s", logs)
		}
		want := fmt.Sprintf("v%d", i)
		if err := a.w.SetDesc(ctx, want); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the change by the scan", func() bool { return descAt() == want })
	}
	// Settled (the new subscription's reads done): a change now costs no read.
	for {
		loads := w.w.Stats().FullLoads
		for i := 0; i < 2; i++ {
			synced := w.w.Stats().LastSync
			eventually(t, "a scan", func() bool { return w.w.Stats().LastSync.After(synced) })
		}
		if w.w.Stats().FullLoads == loads {
			break
		}
	}
	loads := w.w.Stats().FullLoads
	if err := a.w.SetDesc(ctx, "by push"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the change by push", func() bool { return descAt() == "by push" })
	if extra := w.w.Stats().FullLoads - loads; extra != 0 {
		t.Errorf("the change after the new subscription took %d full reads: push still does not work", extra)
	}
	noRemoves(t, []*node{w}, "a")
}

// Stats().Registered says what peers see: a process cut off from Redis for
// longer than its TTL is not registered, and is again once Redis answers.
func TestHealRegisteredDuringPartition(t *testing.T) {
	checkLeaks(t)
	b, srv := faultBackend(t, redistest.ServerOptions{})
	proxy := redistest.StartProxy(t, srv.Addr())
	w := proxiedNode(t, b, proxy, "w")
	if !w.w.Stats().Registered {
		t.Fatal("not registered after Start")
	}
	proxy.Blackhole(true)
	proxy.Stall()
	eventually(t, "Registered false after a TTL without Redis", func() bool { return !w.w.Stats().Registered })
	proxy.Blackhole(false)
	eventually(t, "Registered again once Redis answers", func() bool { return w.w.Stats().Registered })
}

// Keys of the wrong type are dropped by the first script, on miniredis too
// (its Lua answers errors through redis.pcall as Redis does).
func TestHealWrongTypeKeys(t *testing.T) {
	for _, suffix := range []string{"inst", "exp", "rev", "epoch", "meta"} {
		t.Run(suffix, func(t *testing.T) {
			checkLeaks(t)
			b := miniBackend(t)
			c := b.client(t)
			key := protocol.Key(DefaultKeyPrefix, gameTable, suffix)
			if suffix == "rev" || suffix == "epoch" {
				c.HSet(context.Background(), key, "f", "v")
			} else {
				c.Set(context.Background(), key, "not a "+suffix, 0)
			}
			a := b.newNode(t, gameTable, "a")
			w := b.newNode(t, gameTable, "w")
			converge(t, []*node{a, w}, gameTable, "a,w")
		})
	}
}

// Stop keeps to its context while Redis is frozen (SIGSTOP), with a client at
// go-redis's default timeouts.
func TestHealStopWithRedisFrozen(t *testing.T) {
	checkLeaks(t)
	_, srv := faultBackend(t, redistest.ServerOptions{})
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true})
	defer c.Close()
	w, err := NewRedisServiceWatcher(c, Instance{Table: gameTable, ID: "a", Name: "127.0.0.1:1"},
		WithTTL(time.Second), WithKeepAliveInterval(200*time.Millisecond), WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv.Freeze(t)
	defer srv.Thaw(t)
	time.Sleep(300 * time.Millisecond) // let calls pile up on the frozen server; not asserted
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	began := time.Now()
	err = w.Stop(ctx)
	took := time.Since(began)
	t.Logf("Stop with a 2s context and Redis frozen took %v: %v", took, err)
	if took > 4*time.Second {
		t.Errorf("Stop took %v with a 2s context", took)
	}
	srv.Thaw(t) // the calls in flight end now, before the leak check
}

// A script given arguments it cannot write answers an error reply and writes
// nothing of its own: no half-written record, no revision bumped.
func TestScriptsRefuseBadArguments(t *testing.T) {
	b := miniBackend(t)
	c := b.client(t)
	ctx := context.Background()
	keys := protocol.TableKeys(DefaultKeyPrefix, gameTable)
	run := func(src string, args ...any) error {
		return redis.NewScript(src).Run(ctx, c, keys.Script(), protocol.ScriptArgs(keys, 500, 16, "tok0", args...)...).Err()
	}
	for name, err := range map[string]error{
		"register, ttl not a number":  run(protocol.Register, "a", "inc1", "h:1", "", "ten", 1, 0, "v1", "", ""),
		"register, fractional ttl":    run(protocol.Register, "a", "inc1", "h:1", "", "10.5", 1, 0, "v1", "", ""),
		"register, no incarnation":    run(protocol.Register, "a", "", "h:1", "", 1000, 1, 0, "v1", "", ""),
		"heartbeat, ttl not a number": run(protocol.Heartbeat, "a", "inc1", "x", "v1"),
		"update, negative ttl":        run(protocol.Update, "a", "inc1", "h:1", "", -5, "v1", "", ""),
	} {
		if err == nil || !strings.Contains(err.Error(), "bad arguments") {
			t.Errorf("%s: %v, want a bad-arguments reply", name, err)
		}
	}
	if n := c.HLen(ctx, keys.Inst).Val(); n != 0 {
		t.Errorf("%d records written by refused calls", n)
	}
	if rev := c.Get(ctx, keys.Rev).Val(); rev != "" && rev != "0" {
		t.Errorf("revision %q after refused calls", rev)
	}
}
