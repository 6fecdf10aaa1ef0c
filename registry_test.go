package svcwatch

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Unit tests of the registry, without Redis: what it emits and what it reports.

// emitted is one call of the registry's emit: the key and a copy of the latest
// state (nil: gone).
type emitted struct {
	key    string
	latest *Instance
}

func (e emitted) String() string {
	if e.latest == nil {
		return "gone " + e.key
	}
	return "put " + e.key + "@" + e.latest.Incarnation + " " + e.latest.Desc
}

// emitLog records what a registry emits, and tells add from update from remove
// by what it was told before, as the dispatcher does.
type emitLog struct {
	calls []emitted
	state map[string]Instance
	ops   []string // "add t/a", "update t/a", "remove t/a"
}

// newTestRegistry returns a registry whose emit goes to the returned log. emit runs
// under the registry lock: the log is read only between registry calls.
func newTestRegistry() (*registry, *emitLog) {
	l := &emitLog{state: map[string]Instance{}}
	r := newRegistry(func(key string, latest *Instance) {
		e := emitted{key: key}
		if latest != nil {
			cp := *latest
			e.latest = &cp
		}
		l.calls = append(l.calls, e)
		old, had := l.state[key]
		switch {
		case latest == nil:
			l.ops = append(l.ops, "remove "+key)
			delete(l.state, key)
		case !had:
			l.ops = append(l.ops, "add "+key)
			l.state[key] = *latest
		case !old.same(*latest):
			l.ops = append(l.ops, "update "+key)
			l.state[key] = *latest
		default:
			l.ops = append(l.ops, "same "+key) // emitted without a change
			l.state[key] = *latest
		}
	})
	return r, l
}

// take returns the ops recorded since the last take, in the order they were
// emitted.
func (l *emitLog) take() []string {
	ops := l.ops
	l.ops = nil
	return ops
}

func regInst(table, id, desc string) Instance {
	return Instance{Table: table, ID: id, Name: "127.0.0.1:" + id, Desc: desc, Incarnation: "inc-" + id}
}

// sameOps compares two lists of ops regardless of order (replace walks a map).
func sameOps(got, want []string) bool {
	if len(got) != len(want) {
		return false
	}
	count := map[string]int{}
	for _, o := range got {
		count[o]++
	}
	for _, o := range want {
		count[o]--
		if count[o] < 0 {
			return false
		}
	}
	return true
}

func TestRegistryReplaceEmitsAddUpdateRemove(t *testing.T) {
	r, l := newTestRegistry()
	const tb = "t"
	r.replace(tb, []Instance{regInst(tb, "a", "1"), regInst(tb, "b", "1")}, time.Time{})
	if got, want := l.take(), []string{"add t/a", "add t/b"}; !sameOps(got, want) {
		t.Fatalf("first replace emitted %v, want %v", got, want)
	}
	if !r.loaded(tb) {
		t.Fatal("table not loaded after replace")
	}

	// a changed, b missing, c new.
	r.replace(tb, []Instance{regInst(tb, "a", "2"), regInst(tb, "c", "1")}, time.Time{})
	if got, want := l.take(), []string{"update t/a", "remove t/b", "add t/c"}; !sameOps(got, want) {
		t.Fatalf("second replace emitted %v, want %v", got, want)
	}
	if got, ok := r.lookup(tb, "a"); !ok || got.Desc != "2" {
		t.Errorf("lookup a = %+v %v, want desc 2", got, ok)
	}
	if _, ok := r.lookup(tb, "b"); ok {
		t.Error("b still reported after it was missing from a replace without a hold")
	}
	if got := ids(r.list(tb)); got != "a,c" {
		t.Errorf("list = %s, want a,c", got)
	}

	// The same view again emits nothing.
	r.replace(tb, []Instance{regInst(tb, "c", "1"), regInst(tb, "a", "2")}, time.Time{})
	if got := l.take(); len(got) != 0 {
		t.Errorf("replace with an unchanged view emitted %v", got)
	}

	// An empty view removes everything, and the table stays loaded.
	r.replace(tb, nil, time.Time{})
	if got, want := l.take(), []string{"remove t/a", "remove t/c"}; !sameOps(got, want) {
		t.Errorf("empty replace emitted %v, want %v", got, want)
	}
	if !r.loaded(tb) || r.size(tb) != 0 {
		t.Errorf("after an empty replace: loaded %v, size %d; want loaded and empty", r.loaded(tb), r.size(tb))
	}
}

func TestRegistryReplaceHoldsMissingInstance(t *testing.T) {
	r, l := newTestRegistry()
	const tb = "t"
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	hold := t0.Add(5 * time.Second)
	r.replace(tb, []Instance{regInst(tb, "a", "1"), regInst(tb, "b", "1")}, time.Time{})
	l.take()

	r.replace(tb, []Instance{regInst(tb, "a", "1")}, hold)
	if got := l.take(); len(got) != 0 {
		t.Fatalf("replace with a hold emitted %v; the missing b must be held, not removed", got)
	}
	if got := ids(r.list(tb)); got != "a,b" {
		t.Errorf("list while b is held = %s, want a,b", got)
	}
	if _, ok := r.lookup(tb, "b"); !ok {
		t.Error("lookup of the held b failed")
	}

	// A later replace without a hold does not cut the hold short.
	r.replace(tb, []Instance{regInst(tb, "a", "1")}, time.Time{})
	if got := l.take(); len(got) != 0 {
		t.Errorf("replace without a hold while b is held emitted %v", got)
	}

	r.releaseHolds(hold.Add(-time.Nanosecond))
	if got := l.take(); len(got) != 0 {
		t.Errorf("releaseHolds before the hold ended emitted %v", got)
	}
	if _, ok := r.lookup(tb, "b"); !ok {
		t.Error("b gone before its hold ended")
	}

	r.releaseHolds(hold) // at the hold: released
	if got, want := l.take(), []string{"remove t/b"}; !sameOps(got, want) {
		t.Errorf("releaseHolds at the hold emitted %v, want %v", got, want)
	}
	if _, ok := r.lookup(tb, "b"); ok {
		t.Error("b still reported after its hold ended")
	}
	if got := ids(r.list(tb)); got != "a" {
		t.Errorf("list after release = %s, want a", got)
	}
	r.releaseHolds(hold.Add(time.Hour))
	if got := l.take(); len(got) != 0 {
		t.Errorf("a second releaseHolds emitted %v", got)
	}
}

func TestRegistryReleaseHoldsAfterHold(t *testing.T) {
	r, l := newTestRegistry()
	const tb = "t"
	hold := time.Date(2024, 1, 1, 0, 0, 5, 0, time.UTC)
	r.replace(tb, []Instance{regInst(tb, "a", "1"), regInst(tb, "b", "1")}, time.Time{})
	l.take()
	r.replace(tb, nil, hold)
	r.releaseHolds(hold.Add(time.Minute)) // well after the hold
	if got, want := l.take(), []string{"remove t/a", "remove t/b"}; !sameOps(got, want) {
		t.Errorf("releaseHolds after the hold emitted %v, want %v", got, want)
	}
	if n := r.size(tb); n != 0 {
		t.Errorf("size after release = %d, want 0", n)
	}
}

func TestRegistryHeldInstanceComesBack(t *testing.T) {
	const tb = "t"
	hold := time.Date(2024, 1, 1, 0, 0, 5, 0, time.UTC)
	for _, tc := range []struct {
		name    string
		desc    string // the desc it comes back with
		back    func(r *registry, b Instance)
		wantOps []string
	}{
		{"put unchanged", "1", func(r *registry, b Instance) { r.put(b) }, nil},
		{"put changed", "2", func(r *registry, b Instance) { r.put(b) }, []string{"update t/b"}},
		{"replace unchanged", "1", func(r *registry, b Instance) {
			r.replace(tb, []Instance{regInst(tb, "a", "1"), b}, time.Time{})
		}, nil},
		{"replace changed", "2", func(r *registry, b Instance) {
			r.replace(tb, []Instance{regInst(tb, "a", "1"), b}, time.Time{})
		}, []string{"update t/b"}},
		{"replace with a hold", "1", func(r *registry, b Instance) {
			r.replace(tb, []Instance{regInst(tb, "a", "1"), b}, hold.Add(time.Hour))
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, l := newTestRegistry()
			r.replace(tb, []Instance{regInst(tb, "a", "1"), regInst(tb, "b", "1")}, time.Time{})
			l.take()
			r.replace(tb, []Instance{regInst(tb, "a", "1")}, hold)
			if got := l.take(); len(got) != 0 {
				t.Fatalf("hold emitted %v", got)
			}
			tc.back(r, regInst(tb, "b", tc.desc))
			if got := l.take(); !sameOps(got, tc.wantOps) {
				t.Errorf("coming back emitted %v, want %v", got, tc.wantOps)
			}
			r.releaseHolds(hold.Add(time.Minute))
			if got := l.take(); len(got) != 0 {
				t.Errorf("releaseHolds after b came back emitted %v; b is no longer held", got)
			}
			if got, ok := r.lookup(tb, "b"); !ok || got.Desc != tc.desc {
				t.Errorf("lookup b = %+v %v, want it with desc %s", got, ok, tc.desc)
			}
			// Un-held for good: a later hold starts afresh and is honoured.
			later := hold.Add(time.Hour)
			r.replace(tb, []Instance{regInst(tb, "a", "1")}, later)
			r.releaseHolds(later.Add(-time.Second))
			if got := l.take(); len(got) != 0 {
				t.Errorf("a second hold was released early: %v", got)
			}
			r.releaseHolds(later)
			if got, want := l.take(), []string{"remove t/b"}; !sameOps(got, want) {
				t.Errorf("the second hold's release emitted %v, want %v", got, want)
			}
		})
	}
}

func TestRegistryPutOnTableNotLoadedIsIgnored(t *testing.T) {
	r, l := newTestRegistry()
	r.put(regInst("other", "x", "1"))
	if got := l.take(); len(got) != 0 {
		t.Errorf("put on a table not loaded emitted %v", got)
	}
	if r.loaded("other") {
		t.Error("put loaded the table")
	}
	if _, ok := r.lookup("other", "x"); ok {
		t.Error("put on a table not loaded is reported by lookup")
	}
	if n := len(r.list("other")); n != 0 {
		t.Errorf("list of a table not loaded has %d instances", n)
	}

	// Loading another table changes nothing for it.
	r.replace("t", []Instance{regInst("t", "a", "1")}, time.Time{})
	l.take()
	r.put(regInst("other", "x", "1"))
	if got := l.take(); len(got) != 0 {
		t.Errorf("put on a table not loaded (another one is) emitted %v", got)
	}
	// On the loaded table, put adds and updates.
	r.put(regInst("t", "b", "1"))
	r.put(regInst("t", "b", "2"))
	r.put(regInst("t", "b", "2"))
	if got, want := l.take(), []string{"add t/b", "update t/b"}; strings.Join(got, ";") != strings.Join(want, ";") {
		t.Errorf("put on a loaded table emitted %v, want %v", got, want)
	}
}

func TestRegistryListSortedCopy(t *testing.T) {
	r, _ := newTestRegistry()
	const tb = "t"
	var insts []Instance
	for _, i := range []int{7, 3, 11, 0, 5, 9, 1} {
		insts = append(insts, regInst(tb, fmt.Sprintf("id%02d", i), "d"))
	}
	r.replace(tb, insts, time.Time{})
	const want = "id00,id01,id03,id05,id07,id09,id11"
	for i := 0; i < 5; i++ { // map order differs between calls
		if got := ids(r.list(tb)); got != want {
			t.Fatalf("list = %s, want %s", got, want)
		}
	}

	l := r.list(tb)
	l[0].Desc = "mutated"
	l[1], l[2] = l[2], l[1]
	l[3] = regInst(tb, "zz", "x")
	if got := ids(r.list(tb)); got != want {
		t.Errorf("list after mutating a returned list = %s, want %s", got, want)
	}
	if got, _ := r.lookup(tb, "id00"); got.Desc != "d" {
		t.Errorf("mutating a returned list changed the registry: desc %q", got.Desc)
	}
	if got := r.list(tb)[0].Desc; got != "d" {
		t.Errorf("list after mutation reports desc %q", got)
	}
}
