package watchertest

// pick.go: the subtests about Pick and PickN: every watcher of a table picks
// the same owner for a key, and only serving instances with weight > 0 own
// keys.

import (
	"fmt"

	"github.com/svcwatch/svcwatch"
)

// Pick and PickN agree across watchers (a watch-only one included) that hold
// the same view; PickN is distinct and starts with Pick's owner.
func testPick(h *harness) {
	t := h.t
	tb := h.table("game")
	var nodes []*node
	for _, id := range []string{"a", "b", "c", "d"} {
		nodes = append(nodes, h.start(tb, id))
	}
	nodes = append(nodes, h.watcher(tb))
	for _, n := range nodes {
		h.sees(n, tb, "a,b,c,d")
	}
	owners := map[string]int{}
	for _, k := range keys(400) {
		first, ok := nodes[0].w.Pick(tb, k)
		if !ok {
			t.Fatalf("Pick(%q) found no owner among 4 serving instances", k)
		}
		owners[first.ID]++
		n3 := nodes[0].w.PickN(tb, k, 3)
		if len(n3) != 3 || n3[0].ID != first.ID || distinct(n3) != 3 {
			t.Fatalf("PickN(%q, 3) = [%s], want 3 distinct instances starting with %s", k, idsOf(n3), first.ID)
		}
		for _, n := range nodes[1:] {
			got, _ := n.w.Pick(tb, k)
			if got.ID != first.ID {
				t.Fatalf("%s picks %s for %q, %s picks %s", name(nodes[0]), first.ID, k, name(n), got.ID)
			}
			if other := n.w.PickN(tb, k, 3); idsOf(other) != idsOf(n3) {
				t.Fatalf("PickN(%q) differs: [%s] at %s, [%s] at %s", k, idsOf(n3), name(nodes[0]), idsOf(other), name(n))
			}
		}
	}
	if len(owners) != 4 {
		t.Errorf("400 keys went to %d of 4 instances: %v", len(owners), owners)
	}
	t.Logf("400 keys over 4 equal instances: %v", owners)
	if all := nodes[0].w.PickN(tb, "k", 10); len(all) != 4 || distinct(all) != 4 {
		t.Errorf("PickN(k, 10) = [%s], want the 4 instances once each", idsOf(all))
	}
	if _, ok := nodes[0].w.Pick(h.table("not-watched"), "k"); ok {
		t.Errorf("Pick on a table not watched found an owner")
	}
	if got := nodes[0].w.PickN(h.table("not-watched"), "k", 3); len(got) != 0 {
		t.Errorf("PickN on a table not watched = [%s]", idsOf(got))
	}
}

// Draining, unhealthy and weight-0 instances own no keys, at every watcher.
func testPickSkipsNonServing(h *harness) {
	t := h.t
	tb := h.table("game")
	a := h.start(tb, "a")
	b := h.start(tb, "b")
	h.startInst(svcwatch.Instance{Table: tb, ID: "zero", Name: "10.9.0.1:zero", Meta: map[string]string{"weight": "0"}})
	h.start(tb, "s")
	w := h.watcher(tb)
	h.sees(w, tb, "a,b,s,zero")
	if err := a.w.SetState(h.ctx(), svcwatch.Draining); err != nil {
		t.Fatal(err)
	}
	if err := b.w.SetState(h.ctx(), svcwatch.Unhealthy); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*node{w, a, b} {
		h.eventually(name(n)+" to see a draining and b unhealthy", func() bool {
			ia, _ := n.w.Lookup(tb, "a")
			ib, _ := n.w.Lookup(tb, "b")
			return ia.State == svcwatch.Draining && ib.State == svcwatch.Unhealthy
		})
	}
	for _, k := range keys(200) {
		for _, n := range []*node{w, a, b} {
			got, ok := n.w.Pick(tb, k)
			if !ok || got.ID != "s" {
				t.Fatalf("%s: Pick(%q) = %s, %v; only s serves with a positive weight", name(n), k, got.ID, ok)
			}
			if all := n.w.PickN(tb, k, 5); idsOf(all) != "s" {
				t.Fatalf("%s: PickN(%q, 5) = [%s], want [s]", name(n), k, idsOf(all))
			}
		}
	}
	if err := a.w.SetState(h.ctx(), svcwatch.Serving); err != nil {
		t.Fatal(err)
	}
	h.eventually("some key to move back to a", func() bool {
		for _, k := range keys(200) {
			if got, _ := w.w.Pick(tb, k); got.ID == "a" {
				return true
			}
		}
		return false
	}, func() string { return fmt.Sprintf("w sees %s", w.rec) })
}

func distinct(insts []svcwatch.Instance) int {
	seen := map[string]bool{}
	for _, i := range insts {
		seen[i.ID] = true
	}
	return len(seen)
}
