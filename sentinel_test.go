package svcwatch

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch/internal/redistest"
	"github.com/svcwatch/svcwatch/protocol"
)

// Redis Sentinel: the behaviour suite (forEachBackend runs it on sentinelBackend)
// and a forced failover under running watchers.

var sharedSentinel sharedSetup[*redistest.Sentinel]

// sentinelBackend is the "redis-sentinel" backend of forEachBackend: one shared
// master, replica and sentinel; each watcher on its own redis.NewFailoverClient.
var sentinelBackend = func(t testing.TB) *backend {
	s := sharedSentinel.get(t, func() (*redistest.Sentinel, error) {
		return redistest.NewSentinel("svcwatch-shared")
	})
	return &backend{
		name:   "redis-sentinel",
		client: func(t testing.TB) redis.UniversalClient { return sentinelClient(t, s) },
		ttl:    time.Second, keepAlive: 200 * time.Millisecond,
		opts: []Option{WithKeyPrefix(uniquePrefix())},
	}
}

func sentinelClient(t testing.TB, s *redistest.Sentinel) *redis.Client {
	return s.Client(t, func(o *redis.FailoverOptions) { o.ContextTimeoutEnabled = true })
}

// failoverBackend is a backend on s with the fast settings of the failover tests
// and a prefix of its own.
func failoverBackend(s *redistest.Sentinel) *backend {
	return &backend{
		name: "redis-sentinel",
		client: func(t testing.TB) redis.UniversalClient {
			return s.Client(t, func(o *redis.FailoverOptions) {
				o.ContextTimeoutEnabled = true
				o.DialTimeout = 200 * time.Millisecond
			})
		},
		ttl: 2 * time.Second, keepAlive: 400 * time.Millisecond,
		opts: []Option{WithKeyPrefix(uniquePrefix())},
	}
}

// SENTINEL FAILOVER while three watchers run: the replica becomes master, the
// failover clients follow it, every watcher is registered on the new master,
// views converge, nobody alive is reported removed, and changes flow again.
func TestSentinelFailover(t *testing.T) {
	// A setup of its own: the shared one must not change under the suite.
	checkLeaks(t)
	s := redistest.StartSentinel(t, "svcwatch-failover")
	b := failoverBackend(s)
	prefix := prefixOf(b)
	logs := &logCounter{}
	nodes := []*node{
		b.newNode(t, gameTable, "a", WithLogger(logs.logger())),
		b.newNode(t, gameTable, "b", WithLogger(logs.logger())),
		b.newNode(t, gameTable, "c", WithLogger(logs.logger())),
	}
	converge(t, nodes, gameTable, "a,b,c")

	m1 := s.Master(t)
	// The replica has every registration before the failover. (Without this wait
	// a failover right after start may promote a replica that has nothing yet:
	// with diskless sync the master streams writes only after the replica's
	// first REPLCONF ACK, up to a second after master_link_status is up. The
	// watchers cope with that too, as with any lost data: they register again
	// under a new epoch, without reporting anyone removed.)
	if n := m1.Do(t, "WAIT", 1, 5000); n != int64(1) {
		t.Fatalf("WAIT = %v", n)
	}
	loads := make([]uint64, len(nodes))
	for i, n := range nodes {
		loads[i] = n.w.Stats().FullLoads
	}
	began := time.Now()
	s.Failover(t)
	done := time.Now()
	m2 := s.Master(t)
	if m2 == m1 {
		t.Fatalf("master unchanged after Failover: %s", m1)
	}
	t.Logf("failover %s -> %s took %v", m1, m2, done.Sub(began).Round(time.Millisecond))

	marks := make([]uint64, len(nodes))
	for i, n := range nodes {
		marks[i] = n.w.Stats().Heartbeats
	}
	rc := m2.Client(t)
	eventually(t, "all three registered on the new master", func() bool {
		return rc.HLen(context.Background(), protocol.TableKeys(prefix, gameTable).Inst).Val() == 3
	})
	for i, n := range nodes {
		eventually(t, "heartbeats after the failover at "+n.w.Self().ID, func() bool {
			st := n.w.Stats()
			return st.Heartbeats > marks[i]+1 && st.Registered && st.Connected
		})
	}
	converge(t, nodes, gameTable, "a,b,c")
	var rereg uint64
	for _, n := range nodes {
		rereg += n.w.Stats().Reregistrations
	}
	t.Logf("every watcher heartbeating again %v after the failover; re-registrations: %d",
		time.Since(done).Round(time.Millisecond), rereg)
	if rereg > 0 {
		t.Logf("watcher logs:\n%s", logs)
	}

	// Where the subscriptions are now: the failover client leaves them on the old
	// master, now a replica, which gets every PUBLISH of the new master through
	// replication. (Had the old master died, they would have reconnected to the
	// new one and read the table again.)
	for _, srv := range s.Servers() {
		t.Logf("%s: subscribers %v", srv, srv.Do(t, "PUBSUB", "NUMSUB", protocol.TableKeys(prefix, gameTable).Channel))
	}
	for i, n := range nodes {
		t.Logf("%s: %d full reads since the failover", n.w.Self().ID, n.w.Stats().FullLoads-loads[i])
		loads[i] = n.w.Stats().FullLoads
	}

	// Changes flow again, to all three, by push.
	d := b.newNode(t, gameTable, "d")
	converge(t, append(nodes, d), gameTable, "a,b,c,d")
	if n := rc.HLen(context.Background(), protocol.TableKeys(prefix, gameTable).Inst).Val(); n != 4 {
		t.Errorf("the new master holds %d registrations, want 4", n)
	}
	stopNode(t, d.w)
	converge(t, nodes, gameTable, "a,b,c")
	noRemoves(t, nodes, "a", "b", "c")
	for i, n := range nodes {
		if got := n.w.Stats().FullLoads - loads[i]; got != 0 {
			t.Errorf("%s read the table %d times for one add and one remove: they should arrive by push", n.w.Self().ID, got)
		}
	}
}

// The master is killed: the sentinel notices (down-after 1 s) and promotes the
// replica. The subscriptions, cut, reconnect to the new master and each watcher
// reads the table again; nobody alive is reported removed.
func TestSentinelMasterKilled(t *testing.T) {
	checkLeaks(t)
	s := redistest.StartSentinel(t, "svcwatch-killed")
	b := failoverBackend(s)
	prefix := prefixOf(b)
	nodes := []*node{b.newNode(t, gameTable, "a"), b.newNode(t, gameTable, "b"), b.newNode(t, gameTable, "c")}
	converge(t, nodes, gameTable, "a,b,c")
	m1 := s.Master(t)
	if n := m1.Do(t, "WAIT", 1, 5000); n != int64(1) { // as in TestSentinelFailover
		t.Fatalf("WAIT = %v", n)
	}
	loads := make([]uint64, len(nodes))
	for i, n := range nodes {
		loads[i] = n.w.Stats().FullLoads
	}
	m1.Kill(t)
	killed := time.Now()
	eventually(t, "the sentinel promotes the replica", func() bool { return s.Master(t) != m1 })
	m2 := s.Master(t)
	t.Logf("%s killed; %s promoted %v later", m1, m2, time.Since(killed).Round(time.Millisecond))

	rc := m2.Client(t)
	for i, n := range nodes {
		eventually(t, "a read of the table on the new master at "+n.w.Self().ID, func() bool {
			st := n.w.Stats()
			return st.FullLoads > loads[i] && st.Registered && st.Connected
		})
	}
	eventually(t, "all three registered on the new master", func() bool {
		return rc.HLen(context.Background(), protocol.TableKeys(prefix, gameTable).Inst).Val() == 3
	})
	t.Logf("every watcher subscribed and read the table on the new master %v after the kill", time.Since(killed).Round(time.Millisecond))
	if n := m2.Do(t, "PUBSUB", "NUMSUB", protocol.TableKeys(prefix, gameTable).Channel).([]any)[1]; n != int64(3) {
		t.Errorf("%v subscribers on the new master, want 3", n)
	}

	d := b.newNode(t, gameTable, "d")
	converge(t, append(nodes, d), gameTable, "a,b,c,d")
	stopNode(t, d.w)
	converge(t, nodes, gameTable, "a,b,c")
	noRemoves(t, nodes, "a", "b", "c")
}
