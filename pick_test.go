package svcwatch

import (
	"bytes"
	"fmt"
	"hash/fnv"
	"math"
	"math/big"
	"math/rand"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// routeInst returns a Serving instance with the given weight ("" for none).
func routeInst(id, weight string) Instance {
	in := Instance{Table: "game", ID: id, Name: id + ":7000", Incarnation: "inc-" + id}
	if weight != "" {
		in.Meta = map[string]string{"weight": weight}
	}
	return in
}

// equalInsts returns n Serving instances "game-000".. of weight 1 (no Meta).
func equalInsts(n int) []Instance {
	out := make([]Instance, n)
	for i := range out {
		out[i] = routeInst(fmt.Sprintf("game-%03d", i), "")
	}
	return out
}

func playerKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "player-" + strconv.Itoa(i)
	}
	return keys
}

func shuffled(insts []Instance, seed int64) []Instance {
	out := slices.Clone(insts)
	rand.New(rand.NewSource(seed)).Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// slotOwners returns the ID owning each slot.
func slotOwners(rt *routeTable) []string {
	out := make([]string, rt.m)
	for s := range out {
		out[s] = rt.insts[rt.owner(uint32(s))].ID
	}
	return out
}

// --- An independent, naive implementation of PROTOCOL.md, section 9 (Pick) ---
//
// Written from the text of the spec, sharing no code with pick.go: the
// standard library's FNV-1a, big integers for the weights and quotas, the
// j-th preference computed as (offset + j*skip) mod M, maps for sets, and a
// lookup that walks the slots one by one.

func naiveHash32(s string) uint32 {
	f := fnv.New32a()
	f.Write([]byte(s))
	h := uint64(f.Sum32())
	h ^= h >> 16
	h = h * 0x85ebca6b % (1 << 32)
	h ^= h >> 13
	h = h * 0xc2b2ae35 % (1 << 32)
	h ^= h >> 16
	return uint32(h)
}

func naiveWeight(in Instance) int64 {
	v, ok := in.Meta["weight"]
	if !ok {
		return 1
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 1
	}
	if n > 1000000 {
		n = 1000000
	}
	return n
}

type naiveTable struct {
	m       int64
	ids     []string
	state   map[string]State
	table   []int  // slot -> index in ids
	owns    []bool // by index in ids: owns a slot (a quota above 0)
	holders int
}

func naiveBuild(insts []Instance) *naiveTable {
	type el struct {
		id          string
		w           *big.Int
		quota, left int64
		off, skip   int64
		j           int64
	}
	var els []*el
	nt := &naiveTable{state: map[string]State{}}
	for _, in := range insts {
		if naiveWeight(in) > 0 { // whatever the State
			els = append(els, &el{id: in.ID, w: big.NewInt(naiveWeight(in))})
			nt.state[in.ID] = in.State
		}
	}
	sort.Slice(els, func(a, b int) bool { return bytes.Compare([]byte(els[a].id), []byte(els[b].id)) < 0 })
	if len(els) == 0 {
		return nt
	}
	nt.m = 6553577
	for _, p := range []int64{655373, 6553577} {
		if p >= 100*int64(len(els)) {
			nt.m = p
			break
		}
	}
	g := new(big.Int)
	for _, e := range els {
		g.GCD(nil, nil, g, e.w)
	}
	total := new(big.Int)
	for _, e := range els {
		e.w.Quo(e.w, g)
		total.Add(total, e.w)
	}
	var sum int64
	for _, e := range els {
		q := new(big.Int).Mul(big.NewInt(nt.m), e.w)
		e.quota = q.Quo(q, total).Int64()
		sum += e.quota
	}
	for i := 0; sum < nt.m; i++ {
		els[i].quota++
		sum++
	}
	for _, e := range els {
		nt.ids = append(nt.ids, e.id)
		e.off = int64(naiveHash32("offset:"+e.id)) % nt.m
		e.skip = int64(naiveHash32("skip:"+e.id))%(nt.m-1) + 1
		e.left = e.quota
		nt.owns = append(nt.owns, e.quota > 0)
		if e.quota > 0 {
			nt.holders++
		}
	}
	nt.table = make([]int, nt.m)
	for s := range nt.table {
		nt.table[s] = -1
	}
	filled, m, table := int64(0), nt.m, nt.table
	for filled < m {
		for i, e := range els {
			for c := int64(0); c < e.w.Int64() && e.left > 0 && filled < m; c++ {
				j := e.j
				for table[(e.off+j*e.skip)%m] != -1 {
					j++
				}
				table[(e.off+j*e.skip)%m] = i
				e.j = j + 1
				e.left--
				filled++
			}
		}
	}
	return nt
}

// servingByState is the spec's Serving: the State the instance was built with.
func (nt *naiveTable) servingByState(id string) bool { return nt.state[id] == Serving }

// servingHolders: the serving instances that own a slot.
func (nt *naiveTable) servingHolders(serves func(id string) bool) map[int]bool {
	holders := map[int]bool{}
	for o, id := range nt.ids {
		if nt.owns[o] && serves(id) {
			holders[o] = true
		}
	}
	return holders
}

// pickBy: the owner of the first slot from slot(key) on that serves.
func (nt *naiveTable) pickBy(key string, serves func(id string) bool) (string, bool) {
	if len(nt.servingHolders(serves)) == 0 {
		return "", false
	}
	s := int64(naiveHash32(key)) % nt.m
	for c := int64(0); c < nt.m; c++ {
		if id := nt.ids[nt.table[(s+c)%nt.m]]; serves(id) {
			return id, true
		}
	}
	return "", false
}

// pickNBy: the distinct serving owners from slot(key) on, in the order met,
// until n or every serving instance that owns a slot is listed.
func (nt *naiveTable) pickNBy(key string, n int, serves func(id string) bool) []string {
	var out []string
	if len(nt.ids) == 0 {
		return out
	}
	holders := nt.servingHolders(serves)
	listed := map[int]bool{}
	s := int64(naiveHash32(key)) % nt.m
	for c := int64(0); c < nt.m && len(out) < n && len(out) < len(holders); c++ {
		if o := nt.table[(s+c)%nt.m]; holders[o] && !listed[o] {
			listed[o] = true
			out = append(out, nt.ids[o])
		}
	}
	return out
}

func (nt *naiveTable) pick(key string) (string, bool) { return nt.pickBy(key, nt.servingByState) }

func (nt *naiveTable) pickN(key string, n int) []string {
	return nt.pickNBy(key, n, nt.servingByState)
}

func instIDs(insts []Instance) []string {
	ids := []string{}
	for _, in := range insts {
		ids = append(ids, in.ID)
	}
	return ids
}

// checkAgainstNaive compares the whole table, and the picks of keys: with the
// stored States (pick, pickN) and with other answers of serving (pickFunc,
// pickNFunc).
func checkAgainstNaive(t *testing.T, insts []Instance, keys []string) {
	t.Helper()
	rt, nt := newRouteTable(insts), naiveBuild(insts)
	if int64(rt.m) != nt.m || rt.holders != nt.holders {
		t.Fatalf("M %d holders %d, naive: M %d holders %d", rt.m, rt.holders, nt.m, nt.holders)
	}
	if !slices.Equal(instIDs(rt.insts), nt.ids) {
		t.Fatalf("instances %q, naive %q", instIDs(rt.insts), nt.ids)
	}
	for s := int64(0); s < nt.m; s++ {
		if got, want := rt.insts[rt.owner(uint32(s))].ID, nt.ids[nt.table[s]]; got != want {
			t.Fatalf("slot %d: %s, naive %s", s, got, want)
		}
	}
	for _, k := range keys {
		got, ok := rt.pick(k)
		want, wok := nt.pick(k)
		if ok != wok || got.ID != want {
			t.Fatalf("pick(%q) = %q %v, naive %q %v", k, got.ID, ok, want, wok)
		}
		if ids, want := instIDs(rt.pickN(k, 5)), nt.pickN(k, 5); !slices.Equal(ids, want) {
			t.Fatalf("pickN(%q, 5) = %q, naive %q", k, ids, want)
		}
	}
	// Other answers: everyone, a pseudo-random two thirds or one in 20 (by
	// ID), only one.
	servings := map[string]func(string) bool{
		"all":        func(string) bool { return true },
		"two thirds": func(id string) bool { return naiveHash32("serves?"+id)%3 != 0 },
		"one in 20":  func(id string) bool { return naiveHash32("serves?"+id)%20 == 0 },
	}
	for o := len(nt.ids) / 2; o < len(nt.ids); o++ {
		if nt.owns[o] {
			one := nt.ids[o]
			servings["only "+one] = func(id string) bool { return id == one }
			break
		}
	}
	for name, serving := range servings {
		for _, k := range keys[:min(len(keys), 200)] {
			got, ok := rt.pickFunc(k, serving)
			want, wok := nt.pickBy(k, serving)
			if ok != wok || got.ID != want {
				t.Fatalf("%s: pickFunc(%q) = %q %v, naive %q %v", name, k, got.ID, ok, want, wok)
			}
			if ids, want := instIDs(rt.pickNFunc(k, 4, serving)), nt.pickNBy(k, 4, serving); !slices.Equal(ids, want) {
				t.Fatalf("%s: pickNFunc(%q, 4) = %q, naive %q", name, k, ids, want)
			}
		}
	}
}

// --- The spec's test vectors ------------------------------------------------

func TestRouteHash32Vectors(t *testing.T) {
	// Also computed by a Python and a Node.js implementation of the spec.
	for s, want := range map[string]uint32{
		"":                  2872998923,
		"a":                 444641715,
		"player-42":         1541211778,
		"玩家":                2538123268,
		"offset:game-eu-01": 3613746228,
		"skip:game-eu-01":   1366039909,
	} {
		if got := hash32(s); got != want {
			t.Errorf("hash32(%q) = %d, want %d", s, got, want)
		}
		if got := naiveHash32(s); got != want {
			t.Errorf("naiveHash32(%q) = %d, want %d", s, got, want)
		}
	}
	for _, id := range []string{"", "game-eu-01", "gs-é"} {
		for _, prefix := range []string{"offset:", "skip:"} {
			if hash32Prefixed(prefix, id) != hash32(prefix+id) {
				t.Errorf("hash32Prefixed(%q, %q) != hash32(%q)", prefix, id, prefix+id)
			}
		}
	}
}

func TestRoutePrimes(t *testing.T) {
	for i, p := range routePrimes {
		if !big.NewInt(int64(p)).ProbablyPrime(32) {
			t.Errorf("%d is not prime", p)
		}
		for d := uint32(2); d*d <= p; d++ { // and by trial division
			if p%d == 0 {
				t.Errorf("%d = %d * %d", p, d, p/d)
				break
			}
		}
		if i > 0 && p <= routePrimes[i-1] {
			t.Errorf("routePrimes not increasing at %d", p)
		}
	}
	if last := routePrimes[len(routePrimes)-1]; uint64(last) < 100*(1<<16-1) {
		t.Errorf("largest M %d < 100 * 65535", last)
	}
	for n, want := range map[int]uint32{1: 655373, 3: 655373, 100: 655373, 6553: 655373, 6554: 6553577, 10000: 6553577, 65535: 6553577, 100000: 6553577} {
		if got := routeTableSize(n); got != want {
			t.Errorf("M for %d instances = %d, want %d", n, got, want)
		}
	}
}

// goldenInsts are the instances of the spec's test vectors: 10 in the table
// (8 Serving, 1 Draining, 1 Unhealthy), 1 not (weight 0).
func goldenInsts() []Instance {
	ins := []Instance{
		routeInst("game-eu-01", "1"),
		routeInst("game-eu-02", "2"),
		routeInst("game-eu-03", "3"),
		routeInst("game-us-01", ""),
		routeInst("game-us-02", "5"),
		routeInst("game-ap-01", "1"),
		routeInst("game-ap-02", "4"),
		routeInst("gs-é", "2"),
		routeInst("game-eu-04", "1"), // Draining
		routeInst("game-us-03", "0"), // weight 0
		routeInst("game-ap-03", ""),  // Unhealthy
	}
	ins[4].Meta["zone"] = "us"
	ins[8].State = Draining
	ins[10].State = Unhealthy
	return ins
}

// goldenPicks: key -> slot(key), the owner of that slot, PickN(key, 3) (the
// first being Pick(key)), and Pick(key) when game-us-02 drains too (the same
// table). Computed by the Node.js reference implementation of the README
// (PROTOCOL.md, section 9) and by the naive implementation above.
var goldenPicks = []struct {
	key        string
	slot       uint32
	slotOwner  string
	pick3      string
	usDraining string
}{
	{"", 499064, "game-us-02", "game-us-02,game-ap-02,game-us-01", "game-ap-02"},
	{"a", 298821, "game-eu-02", "game-eu-02,game-us-02,game-ap-02", "game-eu-02"},
	{"player-0", 67391, "game-us-02", "game-us-02,game-ap-02,game-eu-02", "game-ap-02"},
	{"player-1", 289676, "game-eu-03", "game-eu-03,game-ap-02,game-us-02", "game-eu-03"},
	{"player-2", 444663, "game-ap-02", "game-ap-02,gs-é,game-us-02", "game-ap-02"},
	{"player-3", 352735, "game-eu-02", "game-eu-02,game-us-02,gs-é", "game-eu-02"},
	{"player-42", 429855, "game-eu-03", "game-eu-03,game-ap-02,gs-é", "game-eu-03"},
	{"player-99999", 164298, "game-us-02", "game-us-02,game-us-01,game-eu-03", "game-us-01"},
	{"玩家", 519012, "gs-é", "gs-é,game-eu-02,game-us-02", "gs-é"},
	{"room:7", 234407, "game-us-02", "game-us-02,game-ap-02,game-eu-03", "game-ap-02"},
	{"match/eu/123", 137489, "gs-é", "gs-é,game-us-02,game-ap-02", "gs-é"},
	{"guild-alpha", 425417, "game-ap-01", "game-ap-01,game-ap-02,game-eu-03", "game-ap-01"},
	{"u1", 164252, "gs-é", "gs-é,game-eu-02,game-ap-02", "gs-é"},
	{"u2", 314793, "game-us-02", "game-us-02,game-eu-03,game-ap-02", "game-eu-03"},
	{"u3", 46755, "game-us-01", "game-us-01,game-ap-02,game-eu-03", "game-us-01"},
	{"session-deadbeef", 200589, "game-ap-01", "game-ap-01,game-eu-03,game-eu-02", "game-ap-01"},
	{"x", 309408, "game-eu-02", "game-eu-02,game-eu-03,gs-é", "game-eu-02"},
	{"Zürich", 578630, "gs-é", "gs-é,game-eu-03,game-eu-02", "gs-é"},
	{"player-1000", 354251, "game-ap-02", "game-ap-02,game-eu-02,game-eu-01", "game-ap-02"},
	{"player-12345", 608327, "game-ap-02", "game-ap-02,game-eu-02,gs-é", "game-ap-02"},
	{"player-34", 424343, "game-eu-04", "gs-é,game-eu-02,game-us-02", "gs-é"},
	{"player-41", 351167, "game-eu-04", "game-eu-01,game-us-02,game-eu-02", "game-eu-01"},
	{"player-65", 315664, "game-ap-03", "game-us-02,game-ap-02,game-eu-03", "game-ap-02"},
	{"player-75", 539142, "game-ap-03", "game-ap-02,game-eu-03,game-us-02", "game-ap-02"},
	{"player-286", 633057, "game-eu-04", "game-eu-02,game-ap-02,game-eu-03", "game-eu-02"},
	{"player-647", 214569, "game-ap-03", "game-eu-03,game-ap-02,game-eu-02", "game-eu-03"},
}

// goldenSlots: the slots each instance owns (M = 655373, quotas of weights
// 1,4,1,1,2,3,1,1,5,2 out of 21, in ID order).
var goldenSlots = map[string]int{
	"game-ap-01": 31209, "game-ap-02": 124833, "game-ap-03": 31209, "game-eu-01": 31209,
	"game-eu-02": 62416, "game-eu-03": 93624, "game-eu-04": 31208, "game-us-01": 31208,
	"game-us-02": 156041, "gs-é": 62416,
}

func TestRouteGoldenVectors(t *testing.T) {
	usDraining := func(in Instance) bool { return in.State == Serving && in.ID != "game-us-02" }
	for seed := int64(0); seed < 3; seed++ {
		insts := shuffled(goldenInsts(), seed)
		rt := newRouteTable(insts)
		if rt.m != 655373 || len(rt.insts) != 10 || rt.holders != 10 {
			t.Fatalf("M %d, %d instances, %d holders; want 655373, 10, 10", rt.m, len(rt.insts), rt.holders)
		}
		state := map[string]Instance{}
		for _, in := range insts {
			state[in.ID] = in
		}
		for _, g := range goldenPicks {
			if s := hash32(g.key) % rt.m; s != g.slot || rt.insts[rt.owner(s)].ID != g.slotOwner {
				t.Errorf("slot(%q) = %d owned by %s, want %d owned by %s", g.key, s, rt.insts[rt.owner(s)].ID, g.slot, g.slotOwner)
			}
			want := strings.Split(g.pick3, ",")
			if in, ok := rt.pick(g.key); !ok || in.ID != want[0] {
				t.Errorf("pick(%q) = %q %v, want %q", g.key, in.ID, ok, want[0])
			}
			if got := instIDs(rt.pickN(g.key, 3)); !slices.Equal(got, want) {
				t.Errorf("pickN(%q, 3) = %q, want %q", g.key, got, want)
			}
			// The same through pickFunc and pickNFunc, asking the states.
			serving := func(id string) bool { return state[id].State == Serving }
			if in, ok := rt.pickFunc(g.key, serving); !ok || in.ID != want[0] {
				t.Errorf("pickFunc(%q) = %q %v, want %q", g.key, in.ID, ok, want[0])
			}
			if got := instIDs(rt.pickNFunc(g.key, 3, serving)); !slices.Equal(got, want) {
				t.Errorf("pickNFunc(%q, 3) = %q, want %q", g.key, got, want)
			}
			// game-us-02 drains: the same table, asked otherwise.
			if in, ok := rt.pickFunc(g.key, func(id string) bool { return usDraining(state[id]) }); !ok || in.ID != g.usDraining {
				t.Errorf("game-us-02 draining: pickFunc(%q) = %q %v, want %q", g.key, in.ID, ok, g.usDraining)
			}
		}
		count := map[string]int{}
		for _, id := range slotOwners(rt) {
			count[id]++
		}
		if fmt.Sprint(count) != fmt.Sprint(goldenSlots) {
			t.Errorf("slots per instance = %v, want %v", count, goldenSlots)
		}
	}
	keys := []string{}
	for _, g := range goldenPicks {
		keys = append(keys, g.key)
	}
	checkAgainstNaive(t, goldenInsts(), append(keys, playerKeys(2000)...))
	nt := naiveBuild(goldenInsts())
	for _, g := range goldenPicks {
		if id, _ := nt.pickBy(g.key, func(id string) bool { return id != "game-us-02" && nt.servingByState(id) }); id != g.usDraining {
			t.Errorf("naive, game-us-02 draining: pick(%q) = %q, want %q", g.key, id, g.usDraining)
		}
	}
}

// TestRouteAgainstNaive compares the implementation with the naive one on
// random tables: all slots, picks and pickNs.
func TestRouteAgainstNaive(t *testing.T) {
	r := rand.New(rand.NewSource(7))
	for _, n := range []int{1, 2, 5, 50, 200} {
		var insts []Instance
		for i := 0; i < n; i++ {
			in := routeInst(fmt.Sprintf("srv-%x", r.Int63()), strconv.Itoa(r.Intn(12)))
			in.State = State(r.Intn(6) / 3 * r.Intn(4)) // half Serving, the rest any, unknown included
			insts = append(insts, in)
		}
		checkAgainstNaive(t, insts, playerKeys(500))
	}
	// Large, GCD-reduced and capped weights.
	checkAgainstNaive(t, []Instance{routeInst("a", "3000000"), routeInst("b", "1000000"), routeInst("c", "500000"), routeInst("d", "250000")}, playerKeys(500))
	// Shares of 1 slot (c) and none (b): pickN scans about half the table to
	// find c, so few keys.
	checkAgainstNaive(t, []Instance{routeInst("a", "999983"), routeInst("b", "1"), routeInst("c", "2")}, playerKeys(20))
	// Nothing serves.
	none := equalInsts(30)
	for i := range none {
		none[i].State = Draining
	}
	checkAgainstNaive(t, none, playerKeys(5))
}

// --- Properties -------------------------------------------------------------

func TestRouteDeterministic(t *testing.T) {
	r := rand.New(rand.NewSource(3))
	var insts []Instance
	for i := 0; i < 60; i++ {
		in := routeInst(fmt.Sprintf("gs-%02d-%d", i, r.Intn(1000)), strconv.Itoa(1+r.Intn(5)))
		if i%10 == 0 {
			in.State = Draining
		}
		insts = append(insts, in)
	}
	a, b := newRouteTable(insts), newRouteTable(shuffled(insts, 99))
	if !slices.Equal(slotOwners(a), slotOwners(b)) {
		t.Fatal("tables differ with the input order")
	}
	for _, k := range playerKeys(10000) {
		x, _ := a.pick(k)
		y, _ := b.pick(k)
		if x.ID != y.ID {
			t.Fatalf("pick(%q): %s vs %s", k, x.ID, y.ID)
		}
	}
}

// TestRouteStates: every instance of positive weight is in the table, whatever
// its State; only the Serving ones get keys.
func TestRouteStates(t *testing.T) {
	insts := []Instance{
		routeInst("serving", ""),
		routeInst("serving-2", "2"),
		routeInst("draining", ""),
		routeInst("unhealthy", "3"),
		routeInst("zero", "0"),
		routeInst("odd-state", ""),
	}
	insts[2].State = Draining
	insts[3].State = Unhealthy
	insts[5].State = State(9)
	rt := newRouteTable(insts)
	if got := instIDs(rt.insts); !slices.Equal(got, []string{"draining", "odd-state", "serving", "serving-2", "unhealthy"}) || rt.holders != 5 {
		t.Fatalf("table of %q, %d holders; want all but zero", got, rt.holders)
	}
	got := map[string]int{}
	for _, k := range playerKeys(10000) {
		in, ok := rt.pick(k)
		if !ok {
			t.Fatalf("pick(%q) reports none", k)
		}
		got[in.ID]++
	}
	if len(got) != 2 || got["serving"] == 0 || got["serving-2"] == 0 {
		t.Fatalf("keys went to %v, want serving and serving-2 only", got)
	}
	for _, k := range playerKeys(100) {
		if ids := instIDs(rt.pickN(k, 10)); len(ids) != 2 || !slices.Contains(ids, "serving") || !slices.Contains(ids, "serving-2") {
			t.Fatalf("pickN(%q, 10) = %q, want serving and serving-2", k, ids)
		}
	}

	// Nobody serves, no table, nothing.
	for name, rt := range map[string]*routeTable{
		"none serves":   newRouteTable(insts[2:]),
		"none weighs":   newRouteTable(insts[4:5]),
		"empty":         newRouteTable(nil),
		"nil":           nil,
		"serving false": rt,
	} {
		never := func(string) bool { return false }
		if name != "serving false" {
			if in, ok := rt.pick("player-1"); ok || in.ID != "" {
				t.Errorf("%s: pick = %q %v, want false", name, in.ID, ok)
			}
			if got := rt.pickN("player-1", 3); len(got) != 0 {
				t.Errorf("%s: pickN = %v, want none", name, got)
			}
		}
		if in, ok := rt.pickFunc("player-1", never); ok || in.ID != "" {
			t.Errorf("%s: pickFunc = %q %v, want false", name, in.ID, ok)
		}
		if got := rt.pickNFunc("player-1", 3, never); len(got) != 0 {
			t.Errorf("%s: pickNFunc = %v, want none", name, got)
		}
	}
}

// TestRouteStateSameTable: instances that differ only in State make the same
// table, so a change of State needs no new table.
func TestRouteStateSameTable(t *testing.T) {
	r := rand.New(rand.NewSource(11))
	sets := [][]Instance{goldenInsts(), equalInsts(100)}
	var random []Instance
	for i := 0; i < 300; i++ {
		random = append(random, routeInst(fmt.Sprintf("gs-%x", r.Int63()), strconv.Itoa(r.Intn(8))))
	}
	sets = append(sets, random)
	for _, base := range sets {
		want := newRouteTable(base)
		for trial := 0; trial < 4; trial++ {
			other := slices.Clone(base)
			for i := range other {
				other[i].State = State(r.Intn(4)) // unknown included
			}
			got := newRouteTable(other)
			if got.m != want.m || got.holders != want.holders || !slices.Equal(instIDs(got.insts), instIDs(want.insts)) {
				t.Fatalf("%d instances: M %d, %d holders, %d in the table; want %d, %d, %d", len(base),
					got.m, got.holders, len(got.insts), want.m, want.holders, len(want.insts))
			}
			if !slices.Equal(got.slots16, want.slots16) || !slices.Equal(got.slots32, want.slots32) {
				t.Fatalf("%d instances: other States, other slots", len(base))
			}
		}
	}
}

// TestRouteDrainMovesOnlyItsKeys: when one of 100 equal instances drains (or
// turns Unhealthy, or to a state the reader does not know), exactly its keys
// move, each to the owner of the first following slot that serves, and no
// other key moves; PickN only drops it. The same whether the table is rebuilt
// with the new State or kept and asked (pickFunc).
func TestRouteDrainMovesOnlyItsKeys(t *testing.T) {
	keys := playerKeys(100000)
	all := equalInsts(100)
	base := newRouteTable(all)
	owners := make([]string, len(keys))
	for i, k := range keys {
		in, _ := base.pick(k)
		owners[i] = in.ID
	}
	for _, c := range []struct {
		drain int
		state State
	}{{0, Draining}, {13, Unhealthy}, {42, Draining}, {77, State(7)}, {99, Draining}} {
		id := all[c.drain].ID
		changed := slices.Clone(all)
		changed[c.drain].State = c.state
		rebuilt := newRouteTable(changed)
		if !slices.Equal(rebuilt.slots16, base.slots16) {
			t.Fatalf("%s %v: the table changed", id, c.state)
		}
		serving := func(x string) bool { return x != id }
		mine, moved := 0, 0
		for i, k := range keys {
			got, _ := rebuilt.pick(k)
			kept, _ := base.pickFunc(k, serving)
			if got.ID != kept.ID {
				t.Fatalf("%q: %s rebuilt, %s with pickFunc", k, got.ID, kept.ID)
			}
			if got.ID != owners[i] {
				moved++
			}
			if owners[i] != id {
				if got.ID != owners[i] {
					t.Fatalf("%s %v: %q moved from %s, which serves, to %s", id, c.state, k, owners[i], got.ID)
				}
				continue
			}
			mine++
			// The owner of the first following slot not id's.
			s := hash32(k) % base.m
			for base.insts[base.owner(s)].ID == id {
				s = (s + 1) % base.m
			}
			if want := base.insts[base.owner(s)].ID; got.ID != want {
				t.Fatalf("%s %v: %q went to %s, want %s (slot %d)", id, c.state, k, got.ID, want, s)
			}
			if i%50 == 0 { // PickN: the same, less id
				var want []string
				for _, x := range instIDs(base.pickN(k, 4)) {
					if x != id {
						want = append(want, x)
					}
				}
				if ids := instIDs(rebuilt.pickN(k, 3)); !slices.Equal(ids, want[:3]) {
					t.Fatalf("%s %v: pickN(%q, 3) = %q, want %q", id, c.state, k, ids, want[:3])
				}
				if ids := instIDs(base.pickNFunc(k, 3, serving)); !slices.Equal(ids, want[:3]) {
					t.Fatalf("%s %v: pickNFunc(%q, 3) = %q, want %q", id, c.state, k, ids, want[:3])
				}
			}
		}
		if moved != mine || mine == 0 {
			t.Fatalf("%s %v: %d keys moved, it owned %d", id, c.state, moved, mine)
		}
		t.Logf("%s %v: %d keys moved (%.3f%%), all of them its own", id, c.state, moved, 100*float64(moved)/float64(len(keys)))
	}

	// Ten drain at once: the keys of the 90 others stay.
	changed := slices.Clone(all)
	drained := map[string]bool{}
	for i := 5; i < 100; i += 10 {
		changed[i].State = Draining
		drained[changed[i].ID] = true
	}
	rt := newRouteTable(changed)
	moved := 0
	for i, k := range keys {
		got, _ := rt.pick(k)
		switch {
		case drained[got.ID]:
			t.Fatalf("%q went to the draining %s", k, got.ID)
		case !drained[owners[i]] && got.ID != owners[i]:
			t.Fatalf("%q moved from %s, which serves, to %s", k, owners[i], got.ID)
		case got.ID != owners[i]:
			moved++
		}
	}
	t.Logf("10 of 100 drain: %d keys moved (%.2f%%), all theirs", moved, 100*float64(moved)/float64(len(keys)))
}

// TestRouteMovement: when one of 100 equal instances leaves, at most 1.5% of
// 100,000 keys change owner (1% being the ideal: only its own). Also when it
// comes back, and when a 101st joins.
func TestRouteMovement(t *testing.T) {
	keys := playerKeys(100000)
	all := equalInsts(100)
	base := newRouteTable(all)
	owners := make([]string, len(keys))
	for i, k := range keys {
		in, _ := base.pick(k)
		owners[i] = in.ID
	}
	movement := func(rt *routeTable, gone string) (moved, others int) {
		for i, k := range keys {
			in, _ := rt.pick(k)
			if in.ID != owners[i] {
				moved++
				if owners[i] != gone {
					others++ // moved though its owner stayed
				}
			}
		}
		return moved, others
	}
	worst := 0.0
	for _, leave := range []int{0, 13, 42, 77, 99} {
		rest := slices.Delete(slices.Clone(all), leave, leave+1)
		moved, others := movement(newRouteTable(rest), all[leave].ID)
		pct := 100 * float64(moved) / float64(len(keys))
		worst = max(worst, pct)
		t.Logf("%s leaves: %.3f%% of keys move (%d; %d of them from staying instances)", all[leave].ID, pct, moved, others)
		if pct > 1.5 {
			t.Errorf("%s leaves: %.3f%% of keys move, over 1.5%%", all[leave].ID, pct)
		}
	}
	t.Logf("worst: %.3f%% (ideal 1%%)", worst)

	join := append(slices.Clone(all), routeInst("game-100", ""))
	moved, _ := movement(newRouteTable(join), "")
	pct := 100 * float64(moved) / float64(len(keys))
	t.Logf("a 101st joins: %.3f%% of keys move (ideal 0.99%%)", pct)
	if pct > 1.5 {
		t.Errorf("a 101st joins: %.3f%% of keys move, over 1.5%%", pct)
	}
}

// shares returns each ID's count of keys.
func shares(rt *routeTable, keys []string) map[string]int {
	out := map[string]int{}
	for _, k := range keys {
		in, _ := rt.pick(k)
		out[in.ID]++
	}
	return out
}

func TestRouteWeights(t *testing.T) {
	keys := playerKeys(100000)

	// 1:2:3 over 100,000 keys: within ±5% (relative) of 1/6, 2/6, 3/6.
	insts := []Instance{routeInst("gs-a", "1"), routeInst("gs-b", "2"), routeInst("gs-c", "3")}
	got := shares(newRouteTable(insts), keys)
	for i, in := range insts {
		want := float64(len(keys)) * float64(i+1) / 6
		rel := (float64(got[in.ID]) - want) / want
		t.Logf("weight %d: %d keys, %+.2f%%", i+1, got[in.ID], 100*rel)
		if math.Abs(rel) > 0.05 {
			t.Errorf("weight %d: %d keys, want %.0f ±5%%", i+1, got[in.ID], want)
		}
	}

	// 50 instances of random weights 1..5.
	r := rand.New(rand.NewSource(1))
	insts = nil
	total := 0
	weights := map[string]int{}
	for i := 0; i < 50; i++ {
		w := 1 + r.Intn(5)
		id := fmt.Sprintf("gs-%02d", i)
		insts = append(insts, routeInst(id, strconv.Itoa(w)))
		weights[id] = w
		total += w
	}
	rt := newRouteTable(insts)

	// The table: every instance owns within one slot of M*w/W.
	slots := map[string]int{}
	for _, id := range slotOwners(rt) {
		slots[id]++
	}
	for id, w := range weights {
		if want := float64(rt.m) * float64(w) / float64(total); math.Abs(float64(slots[id])-want) > 1 {
			t.Errorf("%s (weight %d) owns %d slots, want %.1f", id, w, slots[id], want)
		}
	}

	// The keys. Each is in effect a random draw: over 100,000 keys an instance
	// of weight 1 (~1/150 of the weight) expects ~670 keys, with a standard
	// deviation σ of ~4% of that from sampling alone, so each instance is held
	// to ±5σ and each weight class (the instances of one weight together) to
	// ±5%.
	check := func(keys []string, perInstance bool) (worst float64) {
		got := shares(rt, keys)
		class, classWant := map[int]int{}, map[int]float64{}
		for id, w := range weights {
			p := float64(w) / float64(total)
			want := float64(len(keys)) * p
			rel := (float64(got[id]) - want) / want
			worst = max(worst, math.Abs(rel))
			sigma := math.Sqrt(float64(len(keys))*p*(1-p)) / want
			if math.Abs(rel) > 5*sigma || (perInstance && math.Abs(rel) > 0.05) {
				t.Errorf("%d keys: %s (weight %d) got %d, want %.0f (%+.2f%%, σ %.2f%%)", len(keys), id, w, got[id], want, 100*rel, 100*sigma)
			}
			class[w] += got[id]
			classWant[w] += want
		}
		for w, want := range classWant {
			rel := (float64(class[w]) - want) / want
			t.Logf("%d keys: weight %d class: %d keys, %+.2f%%", len(keys), w, class[w], 100*rel)
			if math.Abs(rel) > 0.05 {
				t.Errorf("%d keys: weight %d class got %d, want %.0f ±5%%", len(keys), w, class[w], want)
			}
		}
		return worst
	}
	t.Logf("100,000 keys: worst instance share error %.2f%%", 100*check(keys, false))
	// With 1,000,000 keys the noise (σ ≤ 1.3%) is small enough to hold every
	// instance to ±5%.
	t.Logf("1,000,000 keys: worst instance share error %.2f%%", 100*check(playerKeys(1000000), true))
}

// TestRouteWeightScale: weights mean their ratios (divided by their GCD), and
// weights over 1,000,000 count as 1,000,000.
func TestRouteWeightScale(t *testing.T) {
	a := newRouteTable([]Instance{routeInst("a", "1"), routeInst("b", "2"), routeInst("c", "3")})
	b := newRouteTable([]Instance{routeInst("a", "10"), routeInst("b", "20"), routeInst("c", "30")})
	if !slices.Equal(slotOwners(a), slotOwners(b)) {
		t.Error("weights 1:2:3 and 10:20:30 route differently")
	}
	c := newRouteTable([]Instance{routeInst("a", "1000000"), routeInst("b", "9000000")})
	d := newRouteTable([]Instance{routeInst("a", "1"), routeInst("b", "1")})
	if !slices.Equal(slotOwners(c), slotOwners(d)) {
		t.Error("weights 10^6 and 9*10^6 are not capped to the same")
	}
	// A weight too small for one slot (below 1/M of the total): no slot, no
	// keys, and pickN stops at the instances that own some.
	e := newRouteTable([]Instance{routeInst("big", "1000000"), routeInst("tiny", "1")})
	if e.holders != 1 {
		t.Errorf("holders = %d, want 1", e.holders)
	}
	if got := e.pickN("k", 5); len(got) != 1 || got[0].ID != "big" {
		t.Errorf("pickN = %v, want [big]", got)
	}
}

// TestRouteRestart: an instance that restarts (same ID; new Incarnation,
// address and registration time) gets exactly its keys back.
func TestRouteRestart(t *testing.T) {
	keys := playerKeys(100000)
	all := equalInsts(20)
	before := newRouteTable(all)
	gone := newRouteTable(all[1:]) // game-000 stops
	back := slices.Clone(all)
	back[0].Incarnation, back[0].Name, back[0].RegisteredAt = "inc-new", "10.0.0.9:7001", time.Unix(1700000000, 0)
	after := newRouteTable(back)
	mine, elsewhere := 0, 0
	for _, k := range keys {
		b, _ := before.pick(k)
		g, _ := gone.pick(k)
		a, _ := after.pick(k)
		if a.ID != b.ID {
			t.Fatalf("%q: owned by %s before, by %s after the restart", k, b.ID, a.ID)
		}
		if b.ID == "game-000" {
			mine++
			if a.Incarnation != "inc-new" {
				t.Fatalf("%q: got incarnation %q, want the new one", k, a.Incarnation)
			}
			if g.ID == "game-000" {
				t.Fatalf("%q: owned by the stopped instance", k)
			}
		} else if g.ID != b.ID {
			elsewhere++
		}
	}
	t.Logf("game-000 owned %d keys, all back after its restart (%d others moved while it was away)", mine, elsewhere)
}

// TestRouteDuplicateIDs: of two instances with one ID, the latest registered
// is kept, whatever the order.
func TestRouteDuplicateIDs(t *testing.T) {
	old, cur := routeInst("a", "1"), routeInst("a", "1")
	old.RegisteredAt, cur.RegisteredAt = time.Unix(100, 0), time.Unix(200, 0)
	cur.Incarnation = "inc-cur"
	for _, insts := range [][]Instance{{old, cur, routeInst("b", "")}, {cur, routeInst("b", ""), old}} {
		rt := newRouteTable(insts)
		if len(rt.insts) != 2 || rt.insts[0].Incarnation != "inc-cur" {
			t.Errorf("kept %v", rt.insts)
		}
	}
}

func TestRouteMetaCopied(t *testing.T) {
	in := routeInst("a", "2")
	in.Meta["zone"] = "eu"
	rt := newRouteTable([]Instance{in})
	in.Meta["zone"] = "us"
	if got, _ := rt.pick("k"); got.Meta["zone"] != "eu" {
		t.Errorf("stored Meta follows the caller's map: zone %q", got.Meta["zone"])
	}
}

func TestRoutePickN(t *testing.T) {
	insts := equalInsts(20)
	insts[3].State = Draining
	insts[7].Meta = map[string]string{"weight": "3"}
	rt := newRouteTable(insts)
	serving := 19
	for _, k := range playerKeys(300) {
		owner, _ := rt.pick(k)
		for _, n := range []int{-1, 0, 1, 2, 3, 8, 9, 19, 25} {
			got := rt.pickN(k, n)
			if want := max(0, min(n, serving)); len(got) != want {
				t.Fatalf("pickN(%q, %d): %d instances, want %d", k, n, len(got), want)
			}
			if n > 0 && got[0].ID != owner.ID {
				t.Fatalf("pickN(%q, %d) starts with %s, owner %s", k, n, got[0].ID, owner.ID)
			}
			seen := map[string]bool{}
			for _, in := range got {
				if seen[in.ID] || in.State != Serving {
					t.Fatalf("pickN(%q, %d) = %v: repeated or not serving", k, n, got)
				}
				seen[in.ID] = true
			}
			if n > 1 && len(got) > 1 { // a prefix of the longer answer
				if longer := rt.pickN(k, n+1); !slices.Equal(instIDs(longer[:len(got)]), instIDs(got)) {
					t.Fatalf("pickN(%q, %d) is not a prefix of pickN(%q, %d)", k, n, k, n+1)
				}
			}
		}
	}
}

// TestRoutePickFuncAsks: serving is asked once when the owner serves, and
// at most about once per instance when nothing serves (not once per slot),
// whatever the size of the table; pickNFunc asks each instance once.
func TestRoutePickFuncAsks(t *testing.T) {
	for _, n := range []int{1, 3, 100, 2000} {
		rt := newRouteTable(equalInsts(n))
		asks := 0
		yes := func(string) bool { asks++; return true }
		no := func(string) bool { asks++; return false }
		for _, k := range playerKeys(50) {
			asks = 0
			if _, ok := rt.pickFunc(k, yes); !ok || asks != 1 {
				t.Fatalf("%d instances, all serving: pickFunc(%q) %v after %d questions, want 1", n, k, ok, asks)
			}
			asks = 0
			most := n // tables of up to 64 remember all they asked
			if n > 64 {
				most = routeShortWalk + n
			}
			if _, ok := rt.pickFunc(k, no); ok || asks > most {
				t.Fatalf("%d instances, none serving: pickFunc(%q) %v after %d questions, want false after at most %d", n, k, ok, asks, most)
			}
			asks = 0
			if got := rt.pickNFunc(k, 3, no); len(got) != 0 || asks != n {
				t.Fatalf("%d instances, none serving: pickNFunc(%q) = %d after %d questions, want none after %d", n, k, len(got), asks, n)
			}
		}
	}
}

func TestRoutePickAllocs(t *testing.T) {
	insts := equalInsts(1000)
	rt := newRouteTable(insts)
	keys := playerKeys(64)
	// As route.go asks: the state in a map, read at each question.
	view := map[string]State{}
	for _, in := range insts {
		view[in.ID] = Serving
	}
	serving := func(id string) bool { s, ok := view[id]; return ok && s == Serving }
	i := 0
	for name, f := range map[string]func(){
		"pick":     func() { rt.pick(keys[i%len(keys)]) },
		"pickFunc": func() { rt.pickFunc(keys[i%len(keys)], serving) },
		"pickFunc, owner draining": func() {
			owner, _ := rt.pick(keys[i%len(keys)])
			rt.pickFunc(keys[i%len(keys)], func(id string) bool { return id != owner.ID && serving(id) })
		},
		"pickFunc, none serving": func() { rt.pickFunc(keys[i%len(keys)], func(string) bool { return false }) },
	} {
		if a := testing.AllocsPerRun(500, func() { f(); i++ }); a != 0 {
			t.Errorf("%s allocates %.1f times", name, a)
		}
	}
}

// TestRoutePopulateWide checks the uint32 slots (tables of over 65535
// instances) against the uint16 ones on the same input, and the walk past
// owners that do not serve in a table too large to remember them.
func TestRoutePopulateWide(t *testing.T) {
	insts := shuffled(goldenInsts(), 1)
	rt := newRouteTable(insts)
	n := len(rt.insts)
	w := make([]uint64, n)
	quota, next, skip := make([]uint32, n), make([]uint32, n), make([]uint32, n)
	for i, in := range rt.insts {
		w[i] = uint64(in.Weight())
		next[i] = hash32("offset:"+in.ID) % rt.m
		skip[i] = hash32("skip:"+in.ID)%(rt.m-1) + 1
	}
	for s := uint32(0); s < rt.m; s++ {
		quota[rt.owner(s)]++
	}
	wide := populate[uint32](rt.m, w, quota, next, skip)
	for s, o := range wide {
		if o != uint32(rt.slots16[s]) {
			t.Fatalf("slot %d: %d (uint32) vs %d (uint16)", s, o, rt.slots16[s])
		}
	}
	// Past routeMemoOwners instances (these extra ones own no slot).
	many, holds := slices.Clone(rt.insts), slices.Clone(rt.holds)
	for len(many) <= routeMemoOwners {
		many = append(many, routeInst("zz-"+strconv.Itoa(len(many)), ""))
		holds = append(holds, false)
	}
	wideTable := &routeTable{insts: many, m: rt.m, slots32: wide, holds: holds, holders: rt.holders}
	only := func(id string) func(string) bool { return func(x string) bool { return x == id } }
	for _, k := range playerKeys(1000) {
		a, _ := rt.pick(k)
		b, _ := wideTable.pick(k)
		if a.ID != b.ID {
			t.Fatalf("pick(%q): %s vs %s", k, a.ID, b.ID)
		}
		if a, b := instIDs(rt.pickN(k, 4)), instIDs(wideTable.pickN(k, 4)); !slices.Equal(a, b) {
			t.Fatalf("pickN(%q, 4): %q vs %q", k, a, b)
		}
	}
	for _, k := range playerKeys(20) {
		a, _ := rt.pickFunc(k, only("game-eu-01"))
		b, _ := wideTable.pickFunc(k, only("game-eu-01"))
		if a.ID != "game-eu-01" || b.ID != "game-eu-01" {
			t.Fatalf("only game-eu-01 serves: pickFunc(%q) = %s, %s", k, a.ID, b.ID)
		}
		if _, ok := wideTable.pickFunc(k, only("")); ok {
			t.Fatalf("none serves: pickFunc(%q) finds one", k)
		}
	}
}

// TestProtocolDocPickVectors keeps PROTOCOL.md's table of Pick vectors equal to
// goldenPicks, which TestRouteGoldenVectors checks against the library: a client
// in another language tests itself against the document.
func TestProtocolDocPickVectors(t *testing.T) {
	doc, err := os.ReadFile("PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `\"(.*)\"`(?: \\([^)]*\\))? \\| ([0-9]+) \\| (\\S+) \\| (\\S+) \\| ([^|]+) \\| (\\S+) \\|$")
	doced := map[string][]string{}
	for _, m := range row.FindAllStringSubmatch(string(doc), -1) {
		doced[m[1]] = m[2:]
	}
	for _, g := range goldenPicks {
		d, ok := doced[g.key]
		if !ok {
			t.Errorf("PROTOCOL.md has no vector for %q", g.key)
			continue
		}
		want := []string{strconv.Itoa(int(g.slot)), g.slotOwner, strings.Split(g.pick3, ",")[0],
			strings.ReplaceAll(g.pick3, ",", ", "), g.usDraining}
		if got := []string{d[0], d[1], d[2], strings.TrimSpace(d[3]), d[4]}; !slices.Equal(got, want) {
			t.Errorf("PROTOCOL.md vector for %q: %q, want %q", g.key, got, want)
		}
	}
	if len(doced) != len(goldenPicks) {
		t.Errorf("PROTOCOL.md has %d vectors, the tests %d", len(doced), len(goldenPicks))
	}
}
