package svcwatch

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/svcwatch/svcwatch/internal/redistest"
	"github.com/svcwatch/svcwatch/protocol"
)

// Redis Cluster: the behaviour suite (forEachBackend runs it on clusterBackend),
// tables whose slots live on different masters, and a master killed under running
// watchers.

// ---- servers shared by the whole test binary ----
//
// A cluster takes seconds to start, so the suite shares one (and one Sentinel
// setup) across all its subtests; each subtest works under a key prefix of its
// own. The shared servers are started with redistest's constructors, which need
// no testing.TB, and closed by shutdownShared, called by TestMain after m.Run.

// sharedSetup starts one shared thing on first use and keeps it, or the error
// that kept it from starting.
type sharedSetup[T io.Closer] struct {
	once sync.Once
	val  T
	err  error
}

var (
	sharedMu      sync.Mutex
	sharedStarted []io.Closer // what shutdownShared closes, in start order
)

// get starts the thing with start on first use and returns it. If the start
// failed it skips or fails t as redistest.StartCluster and the like would.
func (s *sharedSetup[T]) get(t testing.TB, start func() (T, error)) T {
	t.Helper()
	s.once.Do(func() {
		s.val, s.err = start()
		if s.err == nil {
			sharedMu.Lock()
			sharedStarted = append(sharedStarted, s.val)
			sharedMu.Unlock()
		}
	})
	redistest.SkipOrFatal(t, s.err)
	return s.val
}

// shutdownShared closes the shared servers that were started: kills them and
// removes their directories. TestMain calls it after m.Run.
func shutdownShared() {
	sharedMu.Lock()
	cs := sharedStarted
	sharedStarted = nil
	sharedMu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		if err := cs[i].Close(); err != nil {
			fmt.Fprintf(os.Stderr, "svcwatch shared servers: %v\n", err)
		}
	}
}

// uniquePrefix gives a subtest keys and channels of its own on a shared server.
func uniquePrefix() string { return "t" + newToken() }

// ---- the cluster backend of the suite ----

var sharedCluster sharedSetup[*redistest.Cluster]

// clusterBackend is the "redis-cluster" backend of forEachBackend: one shared
// cluster of 3 masters with a replica each, a *redis.ClusterClient per watcher.
var clusterBackend = func(t testing.TB) *backend {
	c := sharedCluster.get(t, func() (*redistest.Cluster, error) {
		return redistest.NewCluster(redistest.ClusterOptions{Masters: 3, Replicas: 1})
	})
	return &backend{
		name:   "redis-cluster",
		client: func(t testing.TB) redis.UniversalClient { return clusterClient(t, c) },
		ttl:    time.Second, keepAlive: 200 * time.Millisecond,
		opts: []Option{WithKeyPrefix(uniquePrefix())},
	}
}

func clusterClient(t testing.TB, c *redistest.Cluster) *redis.ClusterClient {
	return c.Client(t, func(o *redis.ClusterOptions) { o.ContextTimeoutEnabled = true })
}

// prefixOf returns the key prefix a backend's watchers use.
func prefixOf(b *backend) string {
	cfg := defaultConfig()
	for _, o := range b.opts {
		o(&cfg)
	}
	return cfg.KeyPrefix
}

// slotOf asks the cluster for a key's slot.
func slotOf(t *testing.T, cc *redis.ClusterClient, key string) int64 {
	t.Helper()
	slot, err := cc.ClusterKeySlot(context.Background(), key).Result()
	if err != nil {
		t.Fatalf("CLUSTER KEYSLOT %s: %v", key, err)
	}
	return slot
}

// The suite's two tables hash to slots served by different masters, and one
// plain SUBSCRIBE connection, on whichever node it landed, carries the changes
// of both: a PUBLISH in a Redis Cluster reaches the subscribers of every node.
// Every change below arrives by push (no full read after Start).
func TestClusterTablesOnDifferentMasters(t *testing.T) {
	b := clusterBackend(t) // first: the shared cluster outlives the test
	checkLeaks(t)
	c := sharedCluster.val
	cc := clusterClient(t, c)
	prefix := prefixOf(b)

	const chat = "bingqiu/kaifa/20190510/chat"
	tables := []string{gameTable, chat}
	mA, mB := c.MasterForKey(t, protocol.TableKeys(prefix, tables[0]).Inst), c.MasterForKey(t, protocol.TableKeys(prefix, tables[1]).Inst)
	if mA == mB {
		// Not the case with the suite's tables on 3 masters (slots 3753 and 7604),
		// but keep the test meaningful if they change: pick a second table that
		// lands on another master.
		for i := 0; mA == mB; i++ {
			if i > 1000 {
				t.Fatal("no table found on a second master")
			}
			tables[1] = fmt.Sprintf("bingqiu/kaifa/20190510/chat%d", i)
			mB = c.MasterForKey(t, protocol.TableKeys(prefix, tables[1]).Inst)
		}
	}
	slotA, slotB := slotOf(t, cc, protocol.TableKeys(prefix, tables[0]).Inst), slotOf(t, cc, protocol.TableKeys(prefix, tables[1]).Inst)
	t.Logf("%s: slot %d on %s; %s: slot %d on %s", tables[0], slotA, mA, tables[1], slotB, mB)
	// Every key of a table shares its slot (the hash tag), so one script may touch them all.
	for _, table := range tables {
		keys := protocol.TableKeys(prefix, table)
		want := slotOf(t, cc, keys.Inst)
		for _, k := range append(keys.All(), keys.Channel) {
			if got := slotOf(t, cc, k); got != want {
				t.Errorf("%s is in slot %d, %s in %d", k, got, keys.Inst, want)
			}
		}
	}

	g1 := b.newNode(t, tables[0], "g1", WithTables(tables[1]))
	c1 := b.newNode(t, tables[1], "c1", WithTables(tables[0]))
	obs, err := b.startNode(t, Instance{Table: tables[0]}, WatchOnly(), WithTables(tables[1]))
	if err != nil {
		t.Fatal(err)
	}
	all := []*node{g1, c1, obs}
	for _, n := range all {
		eventually(t, n.w.Self().ID+" sees both tables", func() bool {
			return ids(n.w.Services(tables[0])) == "g1" && ids(n.w.Services(tables[1])) == "c1"
		})
	}

	// The observer's one subscription connection sits on one node; at least one of
	// its channels is served (by slot) by another master, so its messages cross
	// the cluster bus.
	subNodes := subscribedNodes(t, c, protocol.TableKeys(prefix, tables[0]).Channel, protocol.TableKeys(prefix, tables[1]).Channel)
	t.Logf("subscribers per node: %v", subNodes)

	loads := map[*node]uint64{}
	for _, n := range all {
		loads[n] = n.w.Stats().FullLoads
	}
	g2 := b.newNode(t, tables[0], "g2")
	c2 := b.newNode(t, tables[1], "c2")
	for _, n := range all {
		eventually(t, n.w.Self().ID+" sees the adds on both masters", func() bool {
			return n.rec.has("add", "g2") && n.rec.has("add", "c2")
		})
	}
	if err := c1.w.SetDesc(context.Background(), `{"zone":2}`); err != nil {
		t.Fatal(err)
	}
	stopNode(t, g2.w)
	for _, n := range all {
		eventually(t, n.w.Self().ID+" sees the update and the remove", func() bool {
			got, _ := n.w.Lookup(tables[1], "c1")
			return ids(n.w.Services(tables[0])) == "g1" && ids(n.w.Services(tables[1])) == "c1,c2" &&
				got.Desc == `{"zone":2}` && n.rec.has("remove", "g2")
		})
	}
	if !obs.rec.has("add", "g2") || !obs.rec.has("add", "c2") || !obs.rec.has("update", "c1") {
		t.Errorf("observer events: %s", obs.rec)
	}
	for _, n := range all {
		if got := n.w.Stats().FullLoads; got != loads[n] {
			t.Errorf("%s read a table %d times: changes should arrive by push", n.w.Self().ID, got-loads[n])
		}
	}
	noRemoves(t, all, "g1", "c1", "c2")
	if c2.rec.has("remove", "c1") || g1.rec.has("remove", "c2") {
		t.Errorf("a live process was removed: c2 saw %s; g1 saw %s", c2.rec, g1.rec)
	}
}

// subscribedNodes returns, for each channel, the nodes on which someone is
// subscribed to it (PUBSUB NUMSUB is node-local for plain pub/sub), and checks
// that at least one channel is subscribed on a node other than its slot's master.
func subscribedNodes(t *testing.T, c *redistest.Cluster, channels ...string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	crossing := false
	for _, ch := range channels {
		owner := c.MasterForKey(t, ch)
		for _, s := range c.Nodes() {
			if !s.Running() {
				continue
			}
			res, ok := s.Do(t, "PUBSUB", "NUMSUB", ch).([]any)
			if !ok || len(res) != 2 {
				t.Fatalf("PUBSUB NUMSUB on %s: %v", s, res)
			}
			if n, _ := res[1].(int64); n > 0 {
				out[ch] = append(out[ch], s.Addr())
				if s != owner {
					crossing = true
				}
			}
		}
		sort.Strings(out[ch])
	}
	if !crossing {
		t.Errorf("every subscription sits on its channel's own master (%v): the test does not cross nodes", out)
	}
	return out
}

// A master that holds a table's slot is killed while three watchers run. The
// cluster promotes its replica; every watcher is registered again, views
// converge, nobody alive is reported removed, and changes flow again.
func TestClusterFailover(t *testing.T) {
	// checkLeaks, except that a go-redis pool that failed to dial the killed node
	// retries in a goroutine that sleeps a second between tries and ends only at
	// its next try after Close.
	opts := []goleak.Option{goleak.IgnoreCurrent(),
		goleak.IgnoreTopFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial")}
	t.Cleanup(func() { goleak.VerifyNone(t, opts...) })
	// A cluster of its own: the shared one must not change under the suite, and a
	// short node timeout makes the promotion take a few seconds.
	c := redistest.StartCluster(t, redistest.ClusterOptions{Masters: 3, Replicas: 1, NodeTimeout: time.Second})
	b := &backend{
		name: "redis-cluster",
		client: func(t testing.TB) redis.UniversalClient {
			return c.Client(t, func(o *redis.ClusterOptions) {
				o.ContextTimeoutEnabled = true
				o.DialTimeout = 200 * time.Millisecond
			})
		},
		ttl: 2 * time.Second, keepAlive: 400 * time.Millisecond,
		opts: []Option{WithKeyPrefix(uniquePrefix())},
	}
	prefix := prefixOf(b)
	nodes := []*node{b.newNode(t, gameTable, "a"), b.newNode(t, gameTable, "b"), b.newNode(t, gameTable, "c")}
	converge(t, nodes, gameTable, "a,b,c")

	m := c.MasterForKey(t, protocol.TableKeys(prefix, gameTable).Inst)
	m.Kill(t)
	killed := time.Now()
	for _, n := range nodes {
		eventually(t, "Connected false at "+n.w.Self().ID, func() bool { return !n.w.Stats().Connected })
	}
	c.WaitHealthy(t)
	promoted := time.Now()
	m2 := c.MasterForKey(t, protocol.TableKeys(prefix, gameTable).Inst)
	if m2 == m {
		t.Fatalf("the slot is still served by the killed %s", m)
	}
	t.Logf("killed %s; cluster healthy with %s promoted %v later", m, m2, promoted.Sub(killed).Round(time.Millisecond))

	// No help from the test (no ReloadState): the watchers' clients must find the
	// new master on their own.
	marks := make([]uint64, len(nodes))
	for i, n := range nodes {
		marks[i] = n.w.Stats().Heartbeats
	}
	for i, n := range nodes {
		eventually(t, "heartbeats on the new master at "+n.w.Self().ID, func() bool {
			st := n.w.Stats()
			return st.Heartbeats > marks[i]+1 && st.Registered && st.Connected
		})
	}
	recovered := time.Now()
	rc := m2.Client(t)
	eventually(t, "all three registered on the new master", func() bool {
		return rc.HLen(context.Background(), protocol.TableKeys(prefix, gameTable).Inst).Val() == 3
	})
	converge(t, nodes, gameTable, "a,b,c")
	var rereg uint64
	for _, n := range nodes {
		rereg += n.w.Stats().Reregistrations
	}
	t.Logf("every watcher heartbeating on the new master %v after promotion (%v after the kill); re-registrations: %d",
		recovered.Sub(promoted).Round(time.Millisecond), recovered.Sub(killed).Round(time.Millisecond), rereg)

	// Changes flow again, to all three, by push or by scan.
	d := b.newNode(t, gameTable, "d")
	converge(t, append(nodes, d), gameTable, "a,b,c,d")
	stopNode(t, d.w)
	converge(t, nodes, gameTable, "a,b,c")

	// The old master comes back as a replica; nothing changes for the watchers.
	m.Start(t)
	c.WaitHealthy(t)
	if got := c.MasterForKey(t, protocol.TableKeys(prefix, gameTable).Inst); got != m2 {
		t.Errorf("after the old master rejoined, the slot is served by %s, want %s", got, m2)
	}
	marks = marks[:0]
	for _, n := range nodes {
		marks = append(marks, n.w.Stats().Heartbeats)
	}
	for i, n := range nodes {
		eventually(t, "heartbeats after the old master rejoined at "+n.w.Self().ID, func() bool {
			return n.w.Stats().Heartbeats > marks[i]+1
		})
	}
	converge(t, nodes, gameTable, "a,b,c")
	noRemoves(t, nodes, "a", "b", "c")
	for _, n := range nodes {
		if n.rec.overlapped {
			t.Errorf("%s: handler calls overlapped", n.w.Self().ID)
		}
	}
}
