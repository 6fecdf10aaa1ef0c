package svcwatchgrpc

// state_test.go: what a ClientConn is told for a list of instances, and the
// Build errors; no Redis needed.

import (
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
	b := NewBuilder()
	if b.Scheme() != "svcwatch" || NewBuilder(WithScheme("games")).Scheme() != "games" {
		t.Fatal("wrong scheme")
	}
	if _, err := b.Build(target("svcwatch:///a/b"), nil, resolver.BuildOptions{}); !errors.Is(err, ErrNotAttached) {
		t.Fatalf("Build before Attach: %v, want ErrNotAttached", err)
	}
	b.Attach(nopWatcher{})
	for _, s := range []string{"svcwatch://host/a/b", "svcwatch:///"} {
		if _, err := b.Build(target(s), nil, resolver.BuildOptions{}); err == nil {
			t.Fatalf("Build(%q) accepted", s)
		}
	}
	for name, f := range map[string]func(){
		"a second Attach": func() { b.Attach(nopWatcher{}) },
		"Attach(nil)":     func() { NewBuilder().Attach(nil) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s did not panic", name)
				}
			}()
			f()
		}()
	}
}

type nopWatcher struct{ Watcher }
