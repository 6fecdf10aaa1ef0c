package svcwatch

// route.go: Pick and PickN over a table's routing table (pick.go). A table's
// routing table is built when a Pick needs it and the table's routing changed
// since the last build (registry.routeGen): at most once per batch of changes,
// and never by a process that does not Pick. Builds run on the calling
// goroutine, one at a time, outside the registry lock; event delivery takes no
// lock that Pick holds. An owner that left or stopped serving since the build
// is passed over for the next slot's owner, so a route a change made stale is
// never wrong, only briefly less even.

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
	r.mu.RUnlock()
	rt := newRouteTable(insts)
	r.mu.Lock()
	if cur := r.routes[table]; cur.rt == nil || cur.gen < gen {
		r.routes[table] = builtRoute{rt: rt, gen: gen}
	}
	r.mu.Unlock()
	return rt
}

// pick returns the instance that owns key in table, fresh from the view, with
// a Meta of the caller's own.
func (r *registry) pick(table, key string) (Instance, bool) {
	rt := r.route(table)
	if rt == nil {
		return Instance{}, false
	}
	owner, ok := rt.pick(key)
	if !ok {
		return Instance{}, false
	}
	r.mu.RLock()
	e := r.tables[table][owner.ID]
	if e != nil && routeWeight(e.inst) > 0 {
		inst := e.inst.clone()
		r.mu.RUnlock()
		return inst, true
	}
	r.mu.RUnlock()
	// The owner changed since the build: the next serving owner in slot order.
	if next := r.pickN(table, key, 1); len(next) == 1 {
		return next[0], true
	}
	return Instance{}, false
}

// pickN returns up to n distinct serving instances for key, the owner first.
func (r *registry) pickN(table, key string, n int) []Instance {
	rt := r.route(table)
	if rt == nil || n <= 0 {
		return nil
	}
	candidates := rt.pickN(key, len(rt.insts))
	out := make([]Instance, 0, min(n, len(candidates)))
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, c := range candidates {
		if e := r.tables[table][c.ID]; e != nil && routeWeight(e.inst) > 0 {
			out = append(out, e.inst.clone())
			if len(out) == n {
				break
			}
		}
	}
	return out
}
