package svcwatchgrpc

// state_test.go: what a ClientConn is told for a list of instances, and the
// Build errors; no Redis needed.

import (
	"context"
	"errors"
	"net/url"
	"testing"

	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/ringhash"

	"github.com/svcwatch/svcwatch"
)

func TestResolverState(t *testing.T) {
	insts := []svcwatch.Instance{
		{Table: "g/t", ID: "a", Name: "127.0.0.1:1", Meta: map[string]string{"zone": "eu"}, Incarnation: "i1"},
		{Table: "g/t", ID: "b", Name: "127.0.0.1:2", State: svcwatch.Draining},
		{Table: "g/t", ID: "c", Name: "127.0.0.1:3", State: svcwatch.Unhealthy},
		{Table: "g/t", ID: "d", Name: "127.0.0.1:4", Meta: map[string]string{"weight": "0"}},
		{Table: "g/t", ID: "e", Name: "127.0.0.1:5", Meta: map[string]string{"weight": "3"}},
		{Table: "g/t", ID: "f", Name: "127.0.0.1:1"}, // same address as a
	}
	s := resolverState(insts)
	var addrs, keys []string
	for _, e := range s.Endpoints {
		addrs = append(addrs, e.Addresses[0].Addr)
		keys = append(keys, ringhash.HashKey(e))
	}
	if want := []string{"127.0.0.1:1", "127.0.0.1:5"}; !equal(addrs, want) {
		t.Fatalf("endpoints %v, want %v (serving, weight > 0, one per address)", addrs, want)
	}
	if want := []string{"a", "e"}; !equal(keys, want) {
		t.Fatalf("ring-hash keys %v, want the IDs %v", keys, want)
	}
	if len(s.Addresses) != len(s.Endpoints) || s.Addresses[1].Addr != "127.0.0.1:5" {
		t.Fatalf("addresses %v do not follow the endpoints", s.Addresses)
	}
	inst, ok := InstanceFromEndpoint(s.Endpoints[0])
	if !ok || inst.ID != "a" || inst.Incarnation != "i1" || inst.Meta["zone"] != "eu" {
		t.Fatalf("InstanceFromEndpoint = %+v, %v", inst, ok)
	}
	inst.Meta["zone"] = "changed"
	if again, _ := InstanceFromEndpoint(s.Endpoints[0]); again.Meta["zone"] != "eu" {
		t.Fatal("InstanceFromEndpoint shares its Meta with the endpoint")
	}
	if _, ok := InstanceFromEndpoint(resolver.Endpoint{}); ok {
		t.Fatal("InstanceFromEndpoint found an instance on a bare endpoint")
	}
	// Equal attributes for an equal list: grpc sees no change.
	if !s.Endpoints[0].Attributes.Equal(resolverState(insts).Endpoints[0].Attributes) {
		t.Fatal("the same instance makes unequal attributes")
	}
	insts[0].Meta = map[string]string{"zone": "us"}
	if s.Endpoints[0].Attributes.Equal(resolverState(insts).Endpoints[0].Attributes) {
		t.Fatal("a Meta change left the attributes equal")
	}
	if n := len(resolverState(nil).Endpoints); n != 0 {
		t.Fatalf("%d endpoints for no instance", n)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestBuildErrors(t *testing.T) {
	target := func(s string) resolver.Target {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return resolver.Target{URL: *u}
	}
	w := &stubWatcher{}
	b := NewBuilder(w)
	if b.Scheme() != "svcwatch" || NewBuilder(w, WithScheme("games")).Scheme() != "games" {
		t.Fatal("wrong scheme")
	}
	for _, s := range []string{"svcwatch://host/a/b", "svcwatch:///"} {
		if _, err := b.Build(target(s), nil, resolver.BuildOptions{}); err == nil {
			t.Fatalf("Build(%q) accepted", s)
		}
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("NewBuilder(nil) did not panic")
			}
		}()
		NewBuilder(nil)
	}()
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Build(target("svcwatch:///a/b"), nil, resolver.BuildOptions{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Build after Close: %v, want ErrClosed", err)
	}
}

// TestBuilderHandler checks that NewBuilder adds one handler to the watcher
// and Close removes it.
func TestBuilderHandler(t *testing.T) {
	w := &stubWatcher{}
	b := NewBuilder(w)
	if w.added != 1 {
		t.Fatalf("NewBuilder added %d handlers to the watcher, want 1", w.added)
	}
	// The handler takes any event, for a table with or without resolvers.
	w.h.OnAdd(svcwatch.Instance{Table: "a/b", ID: "x"})
	w.h.OnUpdate(svcwatch.Instance{Table: "a/b", ID: "x"}, svcwatch.Instance{Table: "a/b", ID: "x", State: svcwatch.Draining})
	w.h.OnRemove(svcwatch.Instance{Table: "a/b", ID: "x"})
	if w.removed != 0 {
		t.Fatal("the handler was removed before Close")
	}
	for i := 0; i < 2; i++ { // Close is idempotent
		if err := b.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if w.removed == 0 {
		t.Fatal("Close left the Builder's handler on the watcher")
	}
}

// stubWatcher records the handler added to it; its other methods are not
// called by these tests (the embedded nil interface would panic).
type stubWatcher struct {
	svcwatch.Watcher
	h              svcwatch.Handler
	added, removed int
}

func (s *stubWatcher) AddHandler(h svcwatch.Handler) func() {
	s.h = h
	s.added++
	return func() { s.removed++ }
}
