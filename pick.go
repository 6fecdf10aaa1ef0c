package svcwatch

// pick.go: the routing table behind Pick and PickN, immutable once built. It is
// built on the goroutine of the Pick that needs it (route.go); lookups run on
// any goroutine without a lock.

import (
	"math/bits"
	"slices"
	"strings"
)

// The routing table behind Pick and PickN: weighted Maglev consistent hashing
// (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
// Balancer", NSDI 2016), specified to the bit so that a client in another
// language picks the same instance for the same key (PROTOCOL.md, section 9,
// has the text, a JavaScript reference and test vectors).
//
//   - hash32(s) = fmix32(fnv1a32(UTF-8 bytes of s)), all arithmetic mod 2^32.
//   - In the table: every instance with Weight() > 0, whatever its State,
//     sorted by ID (byte order); w_i = min(Weight(), routeMaxWeight), then all
//     w_i are divided by their GCD.
//   - M: the first of routePrimes (655373, 6553577) with M >= 100*N, N being
//     the number of instances in the table; the last when none is.
//   - offset_i = hash32("offset:"+ID) mod M, skip_i = hash32("skip:"+ID) mod
//     (M-1) + 1; the j-th preference of i is (offset_i + j*skip_i) mod M.
//   - Quota: q_i = floor(M*w_i/W) (W = sum of w_i); the L = M - sum(q_i) < N
//     slots left over go one each to the first L instances in ID order.
//   - Population: rounds over the instances in ID order; in each round
//     instance i claims min(w_i, q_i - claimed_i) slots, each claim taking the
//     next empty slot in its preference order, until the table is full.
//   - Lookup: slot(key) = hash32(key) mod M. Pick: the owner of the first slot
//     from slot(key) on (+1, +2, ... mod M) whose owner is Serving; none when
//     no owner serves. PickN: the distinct Serving owners met on the same
//     walk, in that order, until n are found or every serving instance that
//     owns a slot is.
//
// The State is read at lookup only: a Draining or Unhealthy instance keeps its
// slots, and its keys go to the owners of the slots that follow, so that no
// other key moves; a change of State changes nothing in the table, which is
// rebuilt only when an instance of positive weight comes or goes, or a weight
// changes.

// routePrimes are the table sizes M: the first with M >= 100*N (N instances
// in the table), the last when none is. Each is prime, so that every skip in
// [1, M-1] makes its preferences a permutation of all the slots.
//
// Why these: the keys that move when an instance leaves are its own (1/N) plus
// a cascade that shrinks as M/N grows. With one of 100 equal instances leaving,
// M = 65537 (655 slots each) moves 1.54-1.64% of the keys, over the target;
// 655373 moves 1.12-1.16%, 6553577 1.04%. So the smallest table is 655373:
// every table of up to 6553 instances (all but huge clusters) has this same M,
// and never changes M (a change of M reshuffles nearly every key) as instances
// come and go. The price is the build, about M*ln(M) steps: ~20 ms for 655373,
// ~0.3 s for 6553577 (against ~2 ms for 65537). 100 slots per instance bound
// the rounding of the quotas (below) to 1% of a share.
// 6553577 >= 100*65535: tables of up to 65535 instances keep M >= 100*N, and
// store their slots as uint16; larger ones use uint32 and fewer slots each.
var routePrimes = [...]uint32{655373, 6553577}

// routeMaxWeight caps a weight before the GCD reduction. It keeps every number
// in the quota computation below 2^53 (M*w_i < 6553577*10^6 < 2^43), exact in a
// JavaScript number, and makes an oversized or unparsable-in-JS weight string
// mean the same in every language.
const routeMaxWeight = 1_000_000

// routeSlotsPerInstance is the minimum table size per instance (see
// routePrimes). More slots per instance make shares finer and the movement on
// a change closer to the ideal (only the departed instance's keys move).
const routeSlotsPerInstance = 100

// FNV-1a (32-bit) and MurmurHash3's fmix32.
const (
	fnvOffset32 = 2166136261
	fnvPrime32  = 16777619
)

// fnv1a32 continues a 32-bit FNV-1a hash h over the bytes of s. It indexes the
// string directly: no conversion to []byte, no allocation.
func fnv1a32(h uint32, s string) uint32 {
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= fnvPrime32
	}
	return h
}

func fmix32(h uint32) uint32 {
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}

// hash32 is fmix32(fnv1a32(s)).
func hash32(s string) uint32 { return fmix32(fnv1a32(fnvOffset32, s)) }

// hash32Prefixed is hash32(prefix + s) without building the string.
func hash32Prefixed(prefix, s string) uint32 {
	return fmix32(fnv1a32(fnv1a32(fnvOffset32, prefix), s))
}

// routeTableSize returns M for n instances in the table.
func routeTableSize(n int) uint32 {
	for _, p := range routePrimes {
		if uint64(p) >= uint64(n)*routeSlotsPerInstance {
			return p
		}
	}
	return routePrimes[len(routePrimes)-1]
}

// routeTable maps keys to instances. It is immutable once built: any number
// of goroutines may look keys up in it without locking.
type routeTable struct {
	insts   []Instance // the instances of positive weight, any State, sorted by ID
	m       uint32     // table size, 0 when there is no instance
	slots16 []uint16   // slot -> index in insts, when len(insts) <= 65535
	slots32 []uint32   // slot -> index in insts, otherwise
	holds   []bool     // by index in insts: owns at least one slot
	holders int        // instances that own at least one slot
}

// newRouteTable builds the table of the instances among insts (any order)
// with Weight() > 0, whatever their State: the State counts at lookup only
// (pickFunc), so that a change of State needs no new table. The stored
// instances have their own copies of Meta; pick and pickN read their State.
// Of several instances with the same ID, one is kept: the latest registered
// (then the greatest Incarnation), so that the result does not depend on the
// order of insts.
func newRouteTable(insts []Instance) *routeTable {
	el := make([]Instance, 0, len(insts))
	for _, in := range insts {
		if in.Weight() > 0 {
			el = append(el, in)
		}
	}
	slices.SortFunc(el, func(a, b Instance) int {
		if c := strings.Compare(a.ID, b.ID); c != 0 {
			return c
		}
		if c := a.RegisteredAt.Compare(b.RegisteredAt); c != 0 {
			return -c // latest first
		}
		return -strings.Compare(a.Incarnation, b.Incarnation)
	})
	el = slices.CompactFunc(el, func(a, b Instance) bool { return a.ID == b.ID })
	for i := range el {
		el[i] = el[i].clone()
	}
	rt := &routeTable{insts: el}
	n := len(el)
	if n == 0 {
		return rt
	}
	m := routeTableSize(n)
	rt.m = m

	// Weights: capped, then divided by their GCD.
	w := make([]uint64, n)
	var g uint64
	for i, in := range el {
		w[i] = uint64(min(in.Weight(), routeMaxWeight))
		g = gcd(g, w[i])
	}
	var total uint64
	for i := range w {
		w[i] /= g
		total += w[i]
	}

	// Quotas: floor(M*w_i/W), the leftover slots one each in ID order.
	quota := make([]uint32, n)
	var assigned uint64
	for i := range w {
		quota[i] = uint32(uint64(m) * w[i] / total)
		assigned += uint64(quota[i])
	}
	for i := 0; assigned < uint64(m); i++ { // leftover < n
		quota[i]++
		assigned++
	}

	// Preferences: offset_i + j*skip_i (mod M), j = 0, 1, ...
	next := make([]uint32, n) // the next preference to try
	skip := make([]uint32, n)
	for i, in := range el {
		next[i] = hash32Prefixed("offset:", in.ID) % m
		skip[i] = hash32Prefixed("skip:", in.ID)%(m-1) + 1
	}

	// Population.
	if n <= 1<<16-1 {
		rt.slots16 = populate[uint16](m, w, quota, next, skip)
	} else {
		rt.slots32 = populate[uint32](m, w, quota, next, skip)
	}
	rt.holds = make([]bool, n)
	for i, q := range quota {
		if q > 0 {
			rt.holds[i] = true
			rt.holders++
		}
	}
	return rt
}

// populate fills the table: rounds over the instances in ID order, instance i
// claiming min(w[i], quota left) slots per round, each claim taking the next
// empty slot in its preference order next[i], next[i]+skip[i], ... (mod m).
// The quotas add up to m. T must hold len(w)-1.
//
// Walking the preferences costs about (m-walked)/empty probes per claim, where
// walked is how far the instance has gone in its preferences and empty the
// number of empty slots: near the end of the population the walks take most
// of the time. So once few slots are empty (routeTail), a claim that would
// walk far is computed directly instead: instance i at slot p takes the empty
// slot that comes first in its preferences, the one with the least number of
// steps from p, ((s-p) mod m) * skip^-1 mod m. Same table, fewer probes.
func populate[T uint16 | uint32](m uint32, w []uint64, quota, next, skip []uint32) []T {
	slots := make([]T, m)
	// Which slots are taken, 1 bit each: the walks read this rather than
	// slots, 16 or 32 times smaller and so more often in a near cache (a
	// third faster for M = 6553577).
	full := make([]uint64, (m+63)/64)
	left := slices.Clone(quota)
	active := make([]int, 0, len(w)) // instances with quota left, in ID order
	for i, q := range quota {
		if q > 0 {
			active = append(active, i)
		}
	}
	walked := make([]uint32, len(w)) // steps taken in its preferences, by instance
	free, tail := m, routeTail(m)
	var (
		empties []uint32 // the empty slots in increasing order, once free <= tail
		inv     []uint32 // skip^-1 mod m, by instance, 0 until needed
		red     = newBarrett(m)
	)
	for len(active) > 0 {
		k := 0
		for _, i := range active {
			c := uint32(min(w[i], uint64(left[i])))
			left[i] -= c
			p, sk, wk := next[i], skip[i], walked[i]
			for ; c > 0; c-- {
				if free > tail || uint64(free)*uint64(free) > 3*uint64(m-wk) {
					// Walk: about (m-walked)/free probes.
					for full[p/64]&(1<<(p%64)) != 0 {
						p = addMod(p, sk, m)
						wk++
					}
					if empties != nil {
						at, _ := slices.BinarySearch(empties, p)
						empties = slices.Delete(empties, at, at+1)
					}
				} else {
					// Compute: free steps of a scan.
					if empties == nil {
						empties = make([]uint32, 0, free)
						for x, word := range full {
							for z := ^word; z != 0; z &= z - 1 {
								if s := uint32(x*64 + bits.TrailingZeros64(z)); s < m {
									empties = append(empties, s)
								}
							}
						}
						inv = make([]uint32, len(w))
					}
					if inv[i] == 0 {
						inv[i] = invMod(sk, m)
					}
					best, at := uint64(m), 0
					for x, s := range empties {
						if d := red.mod(uint64(addMod(s, m-p, m)) * uint64(inv[i])); d < best {
							best, at = d, x
						}
					}
					p = empties[at]
					wk += uint32(best)
					empties = slices.Delete(empties, at, at+1)
				}
				slots[p] = T(i)
				full[p/64] |= 1 << (p % 64)
				free--
				p = addMod(p, sk, m)
				wk++
			}
			next[i], walked[i] = p, wk
			if left[i] > 0 {
				active[k] = i
				k++
			}
		}
		active = active[:k]
	}
	return slots
}

// routeTail is the number of empty slots below which populate considers
// computing a claim instead of walking: where scanning the empty slots (~1 ns
// each) can get cheaper than walking up to m/empty probes (~3 ns each).
func routeTail(m uint32) uint32 {
	t := uint32(1)
	for uint64(t)*uint64(t) < 3*uint64(m) {
		t++
	}
	return t
}

// addMod returns (a + b) mod m for a, b < m < 2^31, without a branch.
func addMod(a, b, m uint32) uint32 {
	s := a + b - m
	return s + m&uint32(int32(s)>>31)
}

// invMod returns the inverse of a mod the prime m (0 < a < m).
func invMod(a, m uint32) uint32 {
	// Extended Euclid: t*a == r (mod m) along the way.
	t, newT := int64(0), int64(1)
	r, newR := int64(m), int64(a)
	for newR != 0 {
		q := r / newR
		t, newT = newT, t-q*newT
		r, newR = newR, r-q*newR
	}
	if t < 0 {
		t += int64(m)
	}
	return uint32(t)
}

// barrett reduces numbers below 2^64 mod m by a multiplication.
type barrett struct {
	m uint64
	r uint64 // floor(2^64 / m)
}

func newBarrett(m uint32) barrett {
	r, _ := bits.Div64(1, 0, uint64(m))
	return barrett{m: uint64(m), r: r}
}

func (b barrett) mod(x uint64) uint64 {
	q, _ := bits.Mul64(x, b.r)
	x -= q * b.m
	if x >= b.m {
		x -= b.m
	}
	return x
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// owner returns the index in insts of the instance owning slot s.
func (rt *routeTable) owner(s uint32) uint32 {
	if rt.slots16 != nil {
		return uint32(rt.slots16[s])
	}
	return rt.slots32[s]
}

// pickFunc returns the instance that owns key among those that serve now: the
// owner of the first slot, from slot(key) on (+1, +2, ... mod M), for which
// serving(owner's ID) is true; false when none is. The table is not rebuilt
// when a State changes: serving tells the current one (it must answer the
// same for one ID throughout a call). It does not allocate: serving does not
// escape. When the owner of slot(key) serves, serving is asked once; a
// Draining or Unhealthy owner's keys go to the owners of the following slots,
// and no other key moves. The Instance returned shares its Meta with the table
// and carries the State it had at the build: the caller takes the instance
// from its own view.
func (rt *routeTable) pickFunc(key string, serving func(id string) bool) (Instance, bool) {
	if rt == nil || rt.m == 0 {
		return Instance{}, false
	}
	s := hash32(key) % rt.m
	o := rt.owner(s)
	if !serving(rt.insts[o].ID) {
		var ok bool
		if o, ok = rt.passOver(s, o, func(o uint32) bool { return serving(rt.insts[o].ID) }); !ok {
			return Instance{}, false
		}
	}
	return rt.insts[o], true
}

// pick is pickFunc with the State the instances had when the table was built.
func (rt *routeTable) pick(key string) (Instance, bool) {
	if rt == nil || rt.m == 0 {
		return Instance{}, false
	}
	s := hash32(key) % rt.m
	o := rt.owner(s)
	if rt.insts[o].State != Serving {
		var ok bool
		if o, ok = rt.passOver(s, o, func(o uint32) bool { return rt.insts[o].State == Serving }); !ok {
			return Instance{}, false
		}
	}
	return rt.insts[o], true
}

// pickNFunc returns up to n distinct instances for key that serve now
// (serving, as for pickFunc): going forward from slot(key) (mod M), the owners
// for which serving is true, in the order met, until n are found or every
// serving instance that owns a slot is. The first is pickFunc's. len ==
// min(n, serving instances that own a slot). serving is asked at most once
// per instance. The instances share their Meta with the table. It reads about
// as many slots as it takes to meet n distinct serving owners: a few for small
// n, but up to the whole table when n asks for an instance of a tiny share, or
// for more than serve.
func (rt *routeTable) pickNFunc(key string, n int, serving func(id string) bool) []Instance {
	return rt.pickNBy(key, n, func(o uint32) bool { return serving(rt.insts[o].ID) })
}

// pickN is pickNFunc with the State the instances had when the table was
// built.
func (rt *routeTable) pickN(key string, n int) []Instance {
	return rt.pickNBy(key, n, func(o uint32) bool { return rt.insts[o].State == Serving })
}

// routeShortWalk is how many slots passOver reads, in a table of over 64
// instances, before it remembers whom it asked. With a share f of the slots
// owned by instances that do not serve, a walk reads 1/(1-f) slots on
// average: it gets this far only when nearly nothing serves.
const routeShortWalk = 64

// routeMemoOwners is how many instances passOverLarge can remember (8 KB of
// stack): every table whose slots are uint16.
const routeMemoOwners = 1 << 16

// passOver returns the index in insts of the owner of the first slot after s
// (mod M) for which serves(owner) is true, s being slot(key) and o its owner,
// which does not serve.
func (rt *routeTable) passOver(s, o uint32, serves func(o uint32) bool) (uint32, bool) {
	if len(rt.insts) <= 64 {
		no := [1]uint64{1 << o}
		return rt.walkMemo(no[:], 1, s, 1, serves)
	}
	// Ask each owner met, but not again the previous slot's.
	c := uint32(1) // slots read
	for ; c < rt.m && c < routeShortWalk; c++ {
		if s++; s == rt.m {
			s = 0
		}
		if p := rt.owner(s); p != o {
			if serves(p) {
				return p, true
			}
			o = p
		}
	}
	if c < rt.m && len(rt.insts) <= routeMemoOwners {
		return rt.passOverLarge(s, c, serves)
	}
	// A table too large to remember its instances on the stack: up to M slots.
	for ; c < rt.m; c++ {
		if s++; s == rt.m {
			s = 0
		}
		if p := rt.owner(s); p != o {
			if serves(p) {
				return p, true
			}
			o = p
		}
	}
	return 0, false
}

// passOverLarge is walkMemo with room for routeMemoOwners instances. Not
// inlined: its 8 KB frame only on this rare path.
//
//go:noinline
func (rt *routeTable) passOverLarge(s, c uint32, serves func(o uint32) bool) (uint32, bool) {
	var no [routeMemoOwners / 64]uint64
	return rt.walkMemo(no[:], 0, s, c, serves)
}

// walkMemo goes on with passOver past slot s, c slots read, when nearly
// nothing serves. no has a bit for each instance in insts, set for those that
// said they do not serve (asked of them). It asks each owner met at most once;
// after N more slots (N instances in the table) it asks the instances it has
// not met yet (a census), and then needs to ask nobody. So at most N
// questions, and an answer of none as soon as every instance owning a slot has
// said no, rather than after a walk of up to M slots (an instance's slots are
// not spread evenly: meeting every instance can take most of the table).
func (rt *routeTable) walkMemo(no []uint64, asked int, s, c uint32, serves func(o uint32) bool) (uint32, bool) {
	census := uint64(c) + uint64(len(rt.insts))
	counted := false // after the census, every owner not in no serves
	for ; c < rt.m && asked < rt.holders; c++ {
		if s++; s == rt.m {
			s = 0
		}
		o := rt.owner(s)
		if no[o/64]&(1<<(o%64)) == 0 {
			if counted || serves(o) {
				return o, true
			}
			no[o/64] |= 1 << (o % 64)
			asked++
		}
		if uint64(c) == census {
			for x := range rt.insts {
				if rt.holds[x] && no[x/64]&(1<<(x%64)) == 0 && !serves(uint32(x)) {
					no[x/64] |= 1 << (x % 64)
					asked++
				}
			}
			counted = true
		}
	}
	return 0, false
}

// pickNBy is pickNFunc with serves asked about an owner's index in insts. An
// owner is asked when first met; when the walk gets long (N slots past the
// short walk) without n found, the instances not met yet are asked at once (a
// census), so that it stops as soon as every serving instance is listed rather
// than when every instance is met: each instance is asked at most once.
func (rt *routeTable) pickNBy(key string, n int, serves func(o uint32) bool) []Instance {
	if rt == nil || rt.m == 0 || n <= 0 {
		return nil
	}
	want := min(n, rt.holders)
	out := make([]Instance, 0, want)
	var (
		met    ownerSet // the owners met, serving or not
		yes    []uint64 // after the census: the instances not met then that serve
		census = uint64(routeShortWalk) + uint64(len(rt.insts))
	)
	s := hash32(key) % rt.m
	for c := uint64(0); c < uint64(rt.m) && len(out) < want && met.n < rt.holders; c++ {
		if o := rt.owner(s); met.add(o, len(rt.insts)) {
			if yes != nil && yes[o/64]&(1<<(o%64)) != 0 || yes == nil && serves(o) {
				out = append(out, rt.insts[o])
			}
		}
		if s++; s == rt.m {
			s = 0
		}
		if c == census && len(out) < want {
			yes = make([]uint64, (len(rt.insts)+63)/64)
			more := 0
			for x := range rt.insts {
				if rt.holds[x] && !met.has(uint32(x)) && serves(uint32(x)) {
					yes[x/64] |= 1 << (x % 64)
					more++
				}
			}
			want = min(want, len(out)+more)
		}
	}
	return out
}

// ownerSet is a set of indices in insts: a list while it holds a few (a linear
// check against up to 8 is cheaper than a set), a bitset beyond.
type ownerSet struct {
	n     int // members
	small [8]uint32
	big   []uint64
}

// has reports whether o is in the set.
func (m *ownerSet) has(o uint32) bool {
	if m.big == nil {
		return slices.Contains(m.small[:m.n], o)
	}
	return m.big[o/64]&(1<<(o%64)) != 0
}

// add adds o (< size) and reports whether it was new.
func (m *ownerSet) add(o uint32, size int) bool {
	if m.has(o) {
		return false
	}
	if m.big == nil {
		if m.n < len(m.small) {
			m.small[m.n] = o
			m.n++
			return true
		}
		m.big = make([]uint64, (size+63)/64)
		for _, x := range m.small {
			m.big[x/64] |= 1 << (x % 64)
		}
	}
	m.big[o/64] |= 1 << (o % 64)
	m.n++
	return true
}
