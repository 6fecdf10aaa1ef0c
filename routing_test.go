package svcwatch

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch/internal/redistest"
	"github.com/svcwatch/svcwatch/protocol"
)

// Routing: Meta, State, Pick, Drain and the health check, on every backend of
// the behaviour suite where they do not need a fault.

// metaAt is the Meta and State of id as n sees it.
func metaAt(n *node, id string) (map[string]string, State, bool) {
	got, ok := n.w.Lookup(gameTable, id)
	return got.Meta, got.State, ok
}

func TestMetaAndStateReachPeers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		checkLeaks(t)
		meta := map[string]string{"zone": "eu", "weight": "2"}
		a, err := b.startNode(t, Instance{Table: gameTable, ID: "a", Name: "127.0.0.1:a", Meta: meta, State: Draining})
		if err != nil {
			t.Fatal(err)
		}
		meta["zone"] = "changed by the caller" // the watcher kept a copy
		peer := b.newNode(t, gameTable, "peer")
		eventually(t, "Meta and State on add", func() bool {
			m, s, ok := metaAt(peer, "a")
			return ok && s == Draining && maps.Equal(m, map[string]string{"zone": "eu", "weight": "2"})
		})
		if s := a.w.Stats().State; s != Draining {
			t.Errorf("Stats.State = %v", s)
		}
		ctx := context.Background()
		if err := a.w.SetMeta(ctx, map[string]string{"zone": "us"}); err != nil {
			t.Fatal(err)
		}
		if err := a.w.SetState(ctx, Serving); err != nil {
			t.Fatal(err)
		}
		eventually(t, "Meta and State on update", func() bool {
			m, s, _ := metaAt(peer, "a")
			return s == Serving && maps.Equal(m, map[string]string{"zone": "us"})
		})
		late := b.newNode(t, gameTable, "late")
		m, s, _ := metaAt(late, "a")
		if s != Serving || !maps.Equal(m, map[string]string{"zone": "us"}) {
			t.Errorf("a full read gave %v %v", m, s)
		}
		// Observers get copies: changing one changes nothing in the watcher.
		m["zone"] = "scribbled"
		for _, inst := range late.w.Services(gameTable) {
			if inst.ID == "a" {
				inst.Meta["zone"] = "scribbled too"
			}
		}
		if m, _, _ := metaAt(late, "a"); m["zone"] != "us" {
			t.Errorf("an observer's copy changed the view: %v", m)
		}
		var updates []string
		for _, e := range peer.rec.events() {
			if e.op == "update" && e.inst.ID == "a" {
				updates = append(updates, fmt.Sprintf("%v/%v", e.inst.State, e.inst.Meta["zone"]))
			}
		}
		// Two changes: two updates, or one if the peer's queue merged them.
		if n := len(updates); n < 1 || n > 2 || updates[n-1] != "serving/us" {
			t.Errorf("peer updates %v, want at most one per change, ending serving/us", updates)
		}
	})
}

func TestPickAgreesAndMovesOnlyDrainedKeys(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		checkLeaks(t)
		games := map[string]*node{}
		for i := 0; i < 5; i++ {
			id := fmt.Sprintf("game-%d", i)
			games[id] = b.newNode(t, gameTable, id)
		}
		gate1, err := b.startNode(t, Instance{Table: gameTable}, WatchOnly())
		if err != nil {
			t.Fatal(err)
		}
		gate2, err := b.startNode(t, Instance{Table: gameTable}, WatchOnly())
		if err != nil {
			t.Fatal(err)
		}
		converge(t, []*node{gate1, gate2}, gameTable, "game-0,game-1,game-2,game-3,game-4")
		const keys = 2000
		owners := func(n *node) []string {
			out := make([]string, keys)
			for k := range out {
				inst, ok := n.w.Pick(gameTable, fmt.Sprintf("player-%d", k))
				if !ok {
					t.Fatalf("no owner for player-%d", k)
				}
				out[k] = inst.ID
			}
			return out
		}
		before := owners(gate1)
		if got := owners(gate2); strings.Join(got, ",") != strings.Join(before, ",") {
			t.Fatal("two watchers pick different owners")
		}
		counts := map[string]int{}
		for _, o := range before {
			counts[o]++
		}
		if len(counts) != 5 {
			t.Fatalf("keys spread over %d of 5 servers: %v", len(counts), counts)
		}

		// game-3 drains: only its keys move, and none go to it.
		if err := games["game-3"].w.SetState(context.Background(), Draining); err != nil {
			t.Fatal(err)
		}
		eventually(t, "gate sees game-3 draining", func() bool { _, s, _ := metaAt(gate1, "game-3"); return s == Draining })
		after := owners(gate1)
		for k := range after {
			switch {
			case after[k] == "game-3":
				t.Fatalf("player-%d went to the draining game-3", k)
			case before[k] != "game-3" && after[k] != before[k]:
				t.Fatalf("player-%d moved from %s to %s though %s serves", k, before[k], after[k], before[k])
			}
		}
		if n := gate1.w.PickN(gameTable, "player-1", 10); len(n) != 4 || n[0].ID != after[1] {
			t.Errorf("PickN(10) = %v, want the 4 serving, owner first", ids(n))
		}
		// Back to serving: the same keys come back.
		if err := games["game-3"].w.SetState(context.Background(), Serving); err != nil {
			t.Fatal(err)
		}
		eventually(t, "game-3 owns its keys again", func() bool { return strings.Join(owners(gate1), ",") == strings.Join(before, ",") })
	})
}

// A game server that restarts (same ID, new incarnation) gets its players back.
func TestPickRestartKeepsKeys(t *testing.T) {
	checkLeaks(t)
	b := miniBackend(t)
	gate, err := b.startNode(t, Instance{Table: gameTable}, WatchOnly())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		b.newNode(t, gameTable, fmt.Sprintf("game-%d", i))
	}
	old := b.newNode(t, gameTable, "game-9")
	converge(t, []*node{gate}, gameTable, "game-0,game-1,game-2,game-3,game-9")
	owner := func(k int) string { inst, _ := gate.w.Pick(gameTable, fmt.Sprintf("room-%d", k)); return inst.ID }
	before := make([]string, 1000)
	for k := range before {
		before[k] = owner(k)
	}
	oldInc := old.w.Self().Incarnation
	crash(t, old.w)
	cur := b.newNode(t, gameTable, "game-9") // the same ID and address: a restart
	eventually(t, "the gate sees the new incarnation", func() bool {
		got, _ := gate.w.Lookup(gameTable, "game-9")
		return got.Incarnation == cur.w.Self().Incarnation && got.Incarnation != oldInc
	})
	for k := range before {
		if got := owner(k); got != before[k] {
			t.Fatalf("room-%d: owner %s after the restart, %s before", k, got, before[k])
		}
	}
}

func TestDrain(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		checkLeaks(t)
		a, peer := b.newNode(t, gameTable, "a"), b.newNode(t, gameTable, "peer")
		converge(t, []*node{peer}, gameTable, "a,peer")
		ctx := context.Background()
		sawDraining := false
		err := a.w.Drain(ctx, func(ctx context.Context) error {
			// Players finish here; the peers already route around a.
			eventually(t, "peer sees a draining", func() bool { _, s, _ := metaAt(peer, "a"); return s == Draining })
			if _, ok := peer.w.Pick(gameTable, "anyone"); ok {
				if got, _ := peer.w.Pick(gameTable, "anyone"); got.ID == "a" {
					t.Error("a draining process was picked")
				}
			}
			sawDraining = true
			return nil
		})
		if err != nil || !sawDraining {
			t.Fatalf("Drain = %v (wait ran: %v)", err, sawDraining)
		}
		eventually(t, "peer sees a removed", func() bool { return peer.rec.has("remove", "a") })

		// A wait that fails leaves the process registered and draining.
		c := b.newNode(t, gameTable, "c")
		boom := errors.New("players still on")
		if err := c.w.Drain(ctx, func(context.Context) error { return boom }); !errors.Is(err, boom) {
			t.Fatalf("Drain with a failing wait = %v", err)
		}
		if s := c.w.Stats(); !s.Registered || s.State != Draining {
			t.Errorf("after a failed wait: %+v", s)
		}
		eventually(t, "peer sees c draining", func() bool { _, s, ok := metaAt(peer, "c"); return ok && s == Draining })
	})
}

// The health check: failing makes the process Unhealthy at its peers, passing
// restores the state it had set, and a hung check neither delays the heartbeat
// past its deadline nor lets the process expire.
func TestHealthCheck(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		checkLeaks(t)
		var mode atomic.Int32 // 0 pass, 1 fail, 2 hang
		release := make(chan struct{})
		check := func(ctx context.Context) error {
			switch mode.Load() {
			case 1:
				return errors.New("game loop stuck")
			case 2:
				<-release // ignores ctx, as a deadlocked loop would
			}
			return nil
		}
		a := b.newNode(t, gameTable, "a", WithHealthCheck(check))
		peer := b.newNode(t, gameTable, "peer")
		stateAt := func() State { _, s, _ := metaAt(peer, "a"); return s }
		converge(t, []*node{peer}, gameTable, "a,peer")

		mode.Store(1)
		eventually(t, "unhealthy at the peer", func() bool { return stateAt() == Unhealthy })
		if s := a.w.Stats().State; s != Unhealthy {
			t.Errorf("Stats.State = %v", s)
		}
		// The state it sets is kept for when it is healthy again.
		if err := a.w.SetState(context.Background(), Draining); err != nil {
			t.Fatal(err)
		}
		mode.Store(0)
		eventually(t, "the set state back at the peer", func() bool { return stateAt() == Draining })
		if err := a.w.SetState(context.Background(), Serving); err != nil {
			t.Fatal(err)
		}
		eventually(t, "serving at the peer", func() bool { return stateAt() == Serving })

		mode.Store(2)
		eventually(t, "a hung check makes it unhealthy", func() bool { return stateAt() == Unhealthy })
		hb := a.w.Stats().Heartbeats
		eventually(t, "heartbeats go on while the check hangs", func() bool { return a.w.Stats().Heartbeats >= hb+3 })
		b.advancePastTTL(t, 2*b.ttl, a, peer)
		if peer.rec.has("remove", "a") {
			t.Fatal("the process expired while its health check hung")
		}
		mode.Store(0)
		close(release)
		eventually(t, "serving again once the check returns", func() bool { return stateAt() == Serving })
	})
}

func TestBadMetaIsErrInvalid(t *testing.T) {
	mr := miniredis.RunT(t)
	client := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer client.Close()
	many := map[string]string{}
	for i := 0; i <= maxMetaKeys; i++ {
		many[fmt.Sprintf("k%d", i)] = "v"
	}
	cases := map[string]map[string]string{
		"empty key":        {"": "x"},
		"control char key": {"a\x01": "x"},
		"space in key":     {"a b": "x"},
		"too many keys":    many,
		"too large":        {"blob": strings.Repeat("x", DefaultMaxDescSize)},
		"negative weight":  {"weight": "-1"},
		"word weight":      {"weight": "heavy"},
		"fraction weight":  {"weight": "1.5"},
		"bad utf-8 value":  {"zone": "\xff"},
	}
	for name, meta := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := NewRedisServiceWatcher(client, Instance{Table: gameTable, ID: "a", Name: "h:1", Meta: meta})
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("constructor: %v", err)
			}
			w, err := NewRedisServiceWatcher(client, Instance{Table: gameTable, ID: "a", Name: "h:1"})
			if err != nil {
				t.Fatal(err)
			}
			if err := w.SetMeta(context.Background(), meta); !errors.Is(err, ErrInvalid) {
				t.Errorf("SetMeta: %v", err)
			}
		})
	}
	if _, err := NewRedisServiceWatcher(client, Instance{Table: gameTable, ID: "a", Name: "h:1", State: 7}); !errors.Is(err, ErrInvalid) {
		t.Errorf("state 7: %v", err)
	}
	w, _ := NewRedisServiceWatcher(client, Instance{Table: gameTable, ID: "a", Name: "h:1", Meta: map[string]string{"weight": "0"}})
	if w == nil {
		t.Fatal("weight 0 refused")
	}
	if err := w.SetState(context.Background(), 9); !errors.Is(err, ErrInvalid) {
		t.Errorf("SetState(9) = %v", err)
	}
}

// Records written before Meta and State existed still load: serving, no Meta.
func TestOldRecordsStillLoad(t *testing.T) {
	checkLeaks(t)
	b, srv := faultBackend(t, redistest.ServerOptions{})
	keys := protocol.TableKeys(DefaultKeyPrefix, gameTable)
	rc := srv.Client(t)
	ctx := context.Background()
	old := `{"inc":"0a1b2c3d4e5f6071","name":"10.0.0.9:7000","desc":"{\"zone\":1}","reg":1795664680550,"ttl":60000}`
	rc.HSet(ctx, keys.Inst, "old", old)
	rc.ZAdd(ctx, keys.Exp, redis.Z{Score: float64(time.Now().Add(time.Hour).UnixMilli()), Member: "old"})
	w := b.newNode(t, gameTable, "w")
	got, ok := w.w.Lookup(gameTable, "old")
	if !ok || got.State != Serving || got.Meta != nil || got.Desc != `{"zone":1}` || got.Weight() != 1 {
		t.Fatalf("old record read as %+v (found %v)", got, ok)
	}
	if p, ok := w.w.Pick(gameTable, "someone"); !ok || (p.ID != "old" && p.ID != "w") {
		t.Errorf("Pick over old and new records = %+v, %v", p, ok)
	}
}

// Meta and State survive an empty Redis restart: the processes register again
// with what they had set, and no peer is told anything changed.
func TestMetaAndStateAfterEmptyRestart(t *testing.T) {
	checkLeaks(t)
	b, srv := faultBackend(t, redistest.ServerOptions{})
	a, err := b.startNode(t, Instance{Table: gameTable, ID: "a", Name: "127.0.0.1:a", Meta: map[string]string{"weight": "3"}, State: Draining})
	if err != nil {
		t.Fatal(err)
	}
	peer := b.newNode(t, gameTable, "peer")
	converge(t, []*node{peer}, gameTable, "a,peer")
	srv.Kill(t)
	srv.Start(t)
	eventually(t, "a registered again", func() bool { return a.w.Stats().Reregistrations >= 1 })
	late := b.newNode(t, gameTable, "late")
	for _, n := range []*node{peer, late} {
		eventually(t, n.w.Self().ID+" sees a's Meta and State", func() bool {
			m, s, ok := metaAt(n, "a")
			return ok && s == Draining && m["weight"] == "3"
		})
	}
	if peer.rec.has("update", "a") || peer.rec.has("remove", "a") {
		t.Errorf("peer was told of a change: %s", peer.rec)
	}
}
