package svcwatch

// registry.go: the local dictionary of discovered instances, its diff against a
// full read, held removals, and when each table's routing changed. Called by
// the backend's goroutines through Backend (writes) and by users through
// ServiceWatcher (reads, Pick); its lock is never held while user code runs.
// The routing tables themselves are built by Pick (route.go).

import (
	"sort"
	"sync"
	"time"
)

// registry is the local dictionary of what the watcher has discovered:
// table -> id -> instance. Every change is handed to emit under the registry lock,
// so events leave in the order the changes were applied.
//
// Instances stored here are never modified in place (an update replaces the
// entry's Instance), so their Meta maps are never written after decoding; every
// Instance handed out beyond the package is a clone.
type registry struct {
	mu     sync.RWMutex
	tables map[string]map[string]*entry // a table is present once it is loaded
	emit   func(key string, latest *Instance)
	held   int // entries with heldUntil set, so that releaseHolds is free when none are
	// routeGen counts the changes of each table's routing table (an instance
	// of positive weight came or went, or a weight changed; not a change of
	// State); routes holds the routing table built last, with the count it was
	// built at. See route.go.
	routeGen map[string]uint64
	routes   map[string]builtRoute
	buildMu  sync.Mutex // one routing table build at a time
}

// builtRoute is a routing table and the routeGen it was built at.
type builtRoute struct {
	rt  *routeTable
	gen uint64
}

type entry struct {
	inst Instance
	// heldUntil is set on an instance that the backend can no longer see but whose
	// removal is held back (its data may have been lost, not the process): it is
	// still reported until then, and removed then unless it came back.
	heldUntil time.Time
}

func newRegistry(emit func(string, *Instance)) *registry {
	return &registry{tables: make(map[string]map[string]*entry), emit: emit,
		routeGen: make(map[string]uint64), routes: make(map[string]builtRoute)}
}

// replace makes insts the whole view of table. An instance that is missing from
// insts is removed, or, when holdUntil is set, held until then.
func (r *registry) replace(table string, insts []Instance, holdUntil time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	view := r.tables[table]
	if view == nil {
		view = make(map[string]*entry, len(insts))
		r.tables[table] = view
	}
	seen := make(map[string]struct{}, len(insts))
	for _, inst := range insts {
		seen[inst.ID] = struct{}{}
		r.putLocked(view, inst)
	}
	for id, e := range view {
		if _, ok := seen[id]; ok {
			continue
		}
		if !e.heldUntil.IsZero() && holdUntil.IsZero() {
			continue // already held: the hold runs out, or the instance comes back
		}
		r.removeLocked(view, id, e, holdUntil)
	}
}

// put adds or updates one instance of a loaded table.
func (r *registry) put(inst Instance) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if view := r.tables[inst.Table]; view != nil {
		r.putLocked(view, inst)
	}
}

// remove removes one instance, or holds it until holdUntil when that is set.
func (r *registry) remove(table, id string, holdUntil time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	view := r.tables[table]
	if e := view[id]; e != nil {
		r.removeLocked(view, id, e, holdUntil)
	}
}

// releaseHolds removes every held instance whose hold ended by now.
func (r *registry) releaseHolds(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, view := range r.tables {
		if r.held == 0 {
			return
		}
		for id, e := range view {
			if !e.heldUntil.IsZero() && !now.Before(e.heldUntil) {
				r.held--
				delete(view, id)
				r.routingChanged(e.inst, Instance{})
				r.emit(e.inst.Key(), nil)
			}
		}
	}
}

func (r *registry) putLocked(view map[string]*entry, inst Instance) {
	e := view[inst.ID]
	if e == nil {
		view[inst.ID] = &entry{inst: inst}
		r.routingChanged(Instance{}, inst)
		r.emit(inst.Key(), &inst)
		return
	}
	if !e.heldUntil.IsZero() {
		e.heldUntil = time.Time{}
		r.held--
	}
	if e.inst.same(inst) {
		return
	}
	r.routingChanged(e.inst, inst)
	e.inst = inst
	r.emit(inst.Key(), &inst)
}

// routingChanged counts a change of the table's routing table if going from
// old to cur (a zero Instance: absent) changes who is in it or with what
// weight.
func (r *registry) routingChanged(old, cur Instance) {
	if routeWeight(old) == routeWeight(cur) {
		return
	}
	if old.Table != "" {
		r.routeGen[old.Table]++
	} else {
		r.routeGen[cur.Table]++
	}
}

// routeWeight is an instance's weight in its table's routing table: 0 when
// absent. The State does not count: a draining instance keeps its slots and is
// passed over at Pick, so that only its own keys move (route.go).
func routeWeight(i Instance) int {
	if i.ID == "" {
		return 0
	}
	return i.Weight()
}

func (r *registry) removeLocked(view map[string]*entry, id string, e *entry, holdUntil time.Time) {
	if !holdUntil.IsZero() {
		if e.heldUntil.IsZero() {
			e.heldUntil = holdUntil
			r.held++
		}
		return
	}
	if !e.heldUntil.IsZero() {
		r.held--
	}
	delete(view, id)
	r.routingChanged(e.inst, Instance{})
	r.emit(e.inst.Key(), nil)
}

// drop removes a table's view: each instance is removed (its removal emitted),
// then the table is no longer loaded.
func (r *registry) drop(table string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	view, ok := r.tables[table]
	if !ok {
		return
	}
	ids := make([]string, 0, len(view))
	for id := range view {
		ids = append(ids, id)
	}
	sort.Strings(ids) // events in a stable order
	for _, id := range ids {
		r.removeLocked(view, id, view[id], time.Time{})
	}
	delete(r.tables, table)
	delete(r.routeGen, table)
	delete(r.routes, table)
}

func (r *registry) loaded(table string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, ok := r.tables[table]
	return ok
}

// list returns a copy of table's instances sorted by ID.
func (r *registry) list(table string) []Instance {
	r.mu.RLock()
	view := r.tables[table]
	out := make([]Instance, 0, len(view))
	for _, e := range view {
		out = append(out, e.inst.clone())
	}
	r.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (r *registry) lookup(table, id string) (Instance, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if e := r.tables[table][id]; e != nil {
		return e.inst.clone(), true
	}
	return Instance{}, false
}

func (r *registry) size(table string) int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.tables[table])
}
