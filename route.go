package svcwatch

// route.go: Pick and PickN over a table's routing table (pick.go). A table's
// routing table holds every instance of positive weight, whatever its State;
// Pick passes over the owners that do not serve now, so a drain moves only the
// drained instance's keys and a change of State rebuilds nothing. The table is
// built when a Pick needs it and the table's membership or weights changed
// since the last build (registry.routeGen): at most once per batch of changes,
// and never by a process that does not Pick. Builds run on the calling
// goroutine, one at a time, outside the registry lock; event delivery takes no
// lock that Pick holds.

// route returns the routing table of a loaded table, built for its current
// routing, or nil when the table is not loaded.
func (r *registry) route(table string) *routeTable {
	r.mu.RLock()
	_, loaded := r.tables[table]
	gen, built := r.routeGen[table], r.routes[table]
	r.mu.RUnlock()
	if !loaded {
		return nil
	}
	if built.rt != nil && built.gen == gen {
		return built.rt
	}
	r.buildMu.Lock()
	defer r.buildMu.Unlock()
	r.mu.RLock()
	gen, built = r.routeGen[table], r.routes[table]
	if built.rt != nil && built.gen == gen {
		r.mu.RUnlock()
		return built.rt // another Pick built it meanwhile
	}
	view := r.tables[table]
	insts := make([]Instance, 0, len(view))
	for _, e := range view {
		if routeWeight(e.inst) > 0 {
			insts = append(insts, e.inst)
		}
	}
	// (The table is built over these whatever their State; see pick.go.)
	r.mu.RUnlock()
	rt := newRouteTable(insts)
	r.mu.Lock()
	if cur := r.routes[table]; cur.rt == nil || cur.gen < gen {
		r.routes[table] = builtRoute{rt: rt, gen: gen}
	}
	r.mu.Unlock()
	return rt
}

// serves reports whether id serves now in view: present, Serving, of
// positive weight. The routing table may be older than the view.
func serves(view map[string]*entry, id string) bool {
	e := view[id]
	return e != nil && e.inst.State == Serving && e.inst.Weight() > 0
}

// pick returns the serving instance that owns key in table, fresh from the
// view, with a Meta of the caller's own.
func (r *registry) pick(table, key string) (Instance, bool) {
	rt := r.route(table)
	if rt == nil {
		return Instance{}, false
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	view := r.tables[table]
	owner, ok := rt.pickFunc(key, func(id string) bool { return serves(view, id) })
	if !ok {
		return Instance{}, false
	}
	return view[owner.ID].inst.clone(), true
}

// pickN returns up to n distinct serving instances for key, the owner first.
func (r *registry) pickN(table, key string, n int) []Instance {
	rt := r.route(table)
	if rt == nil || n <= 0 {
		return nil
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	view := r.tables[table]
	picked := rt.pickNFunc(key, n, func(id string) bool { return serves(view, id) })
	out := make([]Instance, len(picked))
	for i, p := range picked {
		out[i] = view[p.ID].inst.clone()
	}
	return out
}
