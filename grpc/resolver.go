package svcwatchgrpc

// resolver.go: the resolver of one ClientConn: its goroutine watches the
// table, then reports the endpoint list to grpc whenever the Builder wakes it.

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/ringhash"

	"github.com/svcwatch/svcwatch"
)

// Backoff of the Watch retries while the watcher cannot load the table.
const (
	minRetry = 100 * time.Millisecond
	maxRetry = 5 * time.Second
)

// svcResolver resolves one table for one ClientConn. Its goroutine (run) is
// owned by the resolver: Close ends it and waits for it.
type svcResolver struct {
	cc  resolver.ClientConn
	src *pickSource // the watcher and the table; for PickPolicy, in every state reported

	ensureWatched func(ctx context.Context) error // Builder.ensureWatched for this table
	release       func()                          // Builder.release of this resolver

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wake   chan struct{} // 1-buffered: "read the table again"
	done   chan struct{} // closed when run returns
}

// signal asks run to report the table again; it never blocks. A signal sent
// while one is pending is merged: run reads the latest view either way.
func (r *svcResolver) signal() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// run watches the table (retrying with backoff), then reports its endpoints
// at each signal until Close.
func (r *svcResolver) run() {
	defer close(r.done)
	for delay := minRetry; ; delay = min(2*delay, maxRetry) {
		err := r.ensureWatched(r.ctx)
		if err == nil {
			break
		}
		if r.ctx.Err() != nil {
			return
		}
		r.cc.ReportError(err)
		if errors.Is(err, svcwatch.ErrInvalid) || errors.Is(err, svcwatch.ErrStopped) {
			// Retrying cannot help; the ClientConn keeps failing with err.
			<-r.ctx.Done()
			return
		}
		select {
		case <-time.After(delay):
		case <-r.wake: // ResolveNow: try again at once
		case <-r.ctx.Done():
			return
		}
	}
	for {
		// An error here (e.g. round_robin refusing an empty list) needs no
		// retry of ours: the list changes only with an event, which wakes us.
		// The state carries the watcher and table too, for PickPolicy.
		_ = r.cc.UpdateState(withPickSource(resolverState(r.src.w.Services(r.src.table)), r.src))
		select {
		case <-r.wake:
		case <-r.ctx.Done():
			return
		}
	}
}

// ResolveNow asks for the table to be reported again (or, while it cannot be
// watched, watched again at once). grpc calls it; it implements
// resolver.Resolver.
func (r *svcResolver) ResolveNow(resolver.ResolveNowOptions) { r.signal() }

// Close stops the resolver and waits for its goroutine; the table is
// unwatched in the background if no other ClientConn needs it. grpc calls it
// once; it implements resolver.Resolver.
func (r *svcResolver) Close() {
	r.cancel()
	<-r.done
	r.release()
}

// resolverState returns the resolver state for the instances of a table: one
// endpoint per Serving instance with a positive weight, in the order given
// (Services sorts by ID), its address the instance's Name, its attributes the
// Instance (see InstanceFromEndpoint) and its ID as the ring-hash key. Two
// instances advertising one address make one endpoint (the first).
func resolverState(insts []svcwatch.Instance) resolver.State {
	s := resolver.State{
		Addresses: make([]resolver.Address, 0, len(insts)),
		Endpoints: make([]resolver.Endpoint, 0, len(insts)),
	}
	seen := make(map[string]bool, len(insts))
	for _, inst := range insts {
		if inst.State != svcwatch.Serving || inst.Weight() <= 0 || inst.Name == "" || seen[inst.Name] {
			continue
		}
		seen[inst.Name] = true
		addr := resolver.Address{Addr: inst.Name}
		e := resolver.Endpoint{Addresses: []resolver.Address{addr}}
		e = setInstance(e, inst)
		e = ringhash.SetHashKey(e, inst.ID)
		s.Addresses = append(s.Addresses, addr)
		s.Endpoints = append(s.Endpoints, e)
	}
	return s
}
