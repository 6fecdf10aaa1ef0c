package svcwatch

import (
	"context"
	"flag"
	"fmt"
	"math/rand"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/svcwatch/svcwatch/internal/redistest"
	"github.com/svcwatch/svcwatch/protocol"
)

// churnSeed replays a churn run's random choices (which process, which operation,
// the pauses; not the machine's timing): go test -run TestChurn -args -seed=N,
// with the N a run logged. 0 draws a fresh seed.
var churnSeed = flag.Int64("seed", 0, "seed of TestChurn's random generator (0: a fresh one); each run logs its seed")

// TestChurn: 20 watchers while processes join, update and leave at random, and
// Redis is killed and restarted empty once in the middle. At the end every
// watcher's view equals what Redis holds, and each watcher saw, per peer, a
// consistent sequence of events.
func TestChurn(t *testing.T) {
	checkLeaks(t)
	seed := *churnSeed
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	t.Logf("seed %d (replay: go test -run TestChurn -args -seed=%d)", seed, seed)
	b, srv := faultBackend(t, redistest.ServerOptions{})
	const table = "churn/dev/v1/game"
	var watchers []*node
	for i := 0; i < 20; i++ {
		watchers = append(watchers, b.newNode(t, table, fmt.Sprintf("w%02d", i)))
	}

	rng := rand.New(rand.NewSource(seed))
	live := map[string]*RedisServiceWatcher{}
	stop := func(id string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = live[id].Stop(ctx) // may fail to deregister while Redis is down: then it expires
		delete(live, id)
	}
	ops := map[string]int{}
	deadline := time.Now().Add(6 * time.Second)
	restarted := false
	for time.Now().Before(deadline) {
		if !restarted && time.Until(deadline) < 3*time.Second {
			srv.Kill(t)
			time.Sleep(300 * time.Millisecond)
			srv.Start(t)
			restarted = true
		}
		id := fmt.Sprintf("p%d", rng.Intn(8))
		w, up := live[id]
		switch {
		case !up:
			n, err := b.tryStart(t, id, table)
			if err != nil {
				ops["start failed"]++
				continue
			}
			live[id] = n
			ops["start"]++
		case rng.Intn(3) == 0:
			stop(id)
			ops["stop"]++
		default:
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			if w.SetDesc(ctx, fmt.Sprintf(`{"n":%d}`, rng.Int())) == nil {
				ops["update"]++
			}
			cancel()
		}
		time.Sleep(time.Duration(rng.Intn(30)) * time.Millisecond)
	}
	t.Logf("churn: %v", ops)
	defer func() {
		for id := range live {
			stop(id)
		}
	}()

	want := make([]string, 0, 28)
	for id := range live {
		want = append(want, id)
	}
	for _, n := range watchers {
		want = append(want, n.w.Self().ID)
	}
	sort.Strings(want)
	wantIDs := strings.Join(want, ",")
	inst := protocol.TableKeys(DefaultKeyPrefix, table).Inst
	rc := srv.Client(t)
	eventually(t, "Redis holds exactly the live processes", func() bool {
		got := rc.HKeys(context.Background(), inst).Val()
		sort.Strings(got)
		return strings.Join(got, ",") == wantIDs
	})
	converge(t, watchers, table, wantIDs)
	for _, n := range watchers {
		checkSequences(t, n)
	}
	// The view also matches the incarnations and descs Redis holds.
	for id, w := range live {
		self := w.Self()
		for _, n := range watchers {
			eventually(t, "the latest desc of "+id, func() bool {
				got, ok := n.w.Lookup(table, id)
				return ok && got.Incarnation == self.Incarnation && got.Desc == self.Desc
			})
		}
	}
}

// tryStart starts a churning process with its own client; its Stop is the
// churn's business.
func (b *backend) tryStart(t *testing.T, id, table string) (*RedisServiceWatcher, error) {
	w, err := NewRedisServiceWatcher(b.client(t), Instance{Table: table, ID: id, Name: "127.0.0.1:" + id},
		WithTTL(b.ttl), WithKeepAliveInterval(b.keepAlive), WithLogger(quietLogger()))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return w, w.Start(ctx)
}

// checkSequences fails t unless, for every peer, the events alternate add,
// updates, remove, with updates and the remove about the incarnation added.
func checkSequences(t *testing.T, n *node) {
	t.Helper()
	cur := map[string]Instance{}
	for _, e := range n.rec.events() {
		key := e.inst.Key()
		held, up := cur[key]
		switch e.op {
		case "add":
			if up {
				t.Errorf("%s: add of %s while %s was up", n.w.Self().ID, e, held.Incarnation)
			}
			cur[key] = e.inst
		case "update":
			if !up || held.Incarnation != e.inst.Incarnation || !e.old.same(held) {
				t.Errorf("%s: update %s does not follow what it was told (%+v)", n.w.Self().ID, e, held)
			}
			cur[key] = e.inst
		case "remove":
			if !up || held.Incarnation != e.inst.Incarnation {
				t.Errorf("%s: remove %s of something not added", n.w.Self().ID, e)
			}
			delete(cur, key)
		}
	}
}
