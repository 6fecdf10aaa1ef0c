package svcwatchkratos_test

// contract_test.go: what a kratos user relies on of a registry: Register,
// GetService, Watch (first Next at once, then after each change),
// Deregister, Stop; and the mapping onto svcwatch tables.

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/go-kratos/kratos/v2/registry"

	"github.com/svcwatch/svcwatch"
	"github.com/svcwatch/svcwatch/internal/redistest"
)

// next calls w.Next and fails t unless it returns within wait.
func next(t *testing.T, w registry.Watcher) ([]*registry.ServiceInstance, error) {
	t.Helper()
	type result struct {
		list []*registry.ServiceInstance
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		l, err := w.Next()
		ch <- result{l, err}
	}()
	select {
	case r := <-ch:
		return r.list, r.err
	case <-time.After(wait):
		t.Fatalf("Next did not return within %v", wait)
		return nil, nil
	}
}

// ids returns the IDs of list, in order.
func ids(list []*registry.ServiceInstance) []string {
	out := []string{}
	for _, si := range list {
		out = append(out, si.ID)
	}
	return out
}

func same(a []string, b ...string) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
}

func TestRegistryContract(t *testing.T) {
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	ctx := context.Background()
	r := newRegistry(t, srv)
	a := &registry.ServiceInstance{
		ID: "chat-a", Name: "chat", Version: "v1",
		Metadata:  map[string]string{"zone": "eu", "weight": "3"},
		Endpoints: []string{"http://127.0.0.1:8001", "grpc://127.0.0.1:9001?isSecure=false"},
	}
	b := &registry.ServiceInstance{
		ID: "chat-b", Name: "chat", Version: "v2",
		Endpoints: []string{"grpc://127.0.0.1:9002?isSecure=false"},
	}

	if err := r.Register(ctx, a); err != nil {
		t.Fatal(err)
	}
	list, err := r.GetService(ctx, "chat")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || !list[0].Equal(a) {
		t.Fatalf("GetService = %v, want [%v] with its version, metadata and endpoints", list, a)
	}
	if list, err := r.GetService(ctx, "nobody"); err != nil || len(list) != 0 {
		t.Fatalf("GetService of an unknown service = %v, %v; want empty", list, err)
	}

	// The mapping: table prefix/name/version, Meta, Name = the grpc endpoint.
	plain, err := svcwatch.NewRedisServiceWatcher(srv.Client(t), svcwatch.Instance{Table: prefix + "/chat/v1"},
		append(fast(), svcwatch.WatchOnly())...)
	if err != nil {
		t.Fatal(err)
	}
	if err := plain.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer plain.Stop(ctx)
	if inst, ok := plain.Lookup(prefix+"/chat/v1", "chat-a"); !ok || inst.Name != "127.0.0.1:9001" ||
		inst.Meta["zone"] != "eu" || inst.Weight() != 3 {
		t.Fatalf("svcwatch sees %+v (%v), want chat-a at 127.0.0.1:9001 with zone eu and weight 3", inst, ok)
	}

	// Watch: the current list at once, then the whole list after each change.
	w, err := r.Watch(ctx, "chat")
	if err != nil {
		t.Fatal(err)
	}
	if list, err := next(t, w); err != nil || !same(ids(list), "chat-a") {
		t.Fatalf("first Next = %v, %v; want [chat-a] at once", ids(list), err)
	}
	if err := r.Register(ctx, b); err != nil {
		t.Fatal(err)
	}
	if list, err := next(t, w); err != nil || !same(ids(list), "chat-a", "chat-b") {
		t.Fatalf("Next after chat-b registered = %v, %v; want both versions", ids(list), err)
	}

	// Registering again updates the metadata.
	a2 := *a
	a2.Metadata = map[string]string{"zone": "us"}
	if err := r.Register(ctx, &a2); err != nil {
		t.Fatal(err)
	}
	eventuallyNext(t, w, func(list []*registry.ServiceInstance) error {
		for _, si := range list {
			if si.ID == "chat-a" && si.Metadata["zone"] == "us" {
				return nil
			}
		}
		return fmt.Errorf("chat-a's metadata not updated in %v", list)
	})

	// A second process claiming chat-a at another address is refused.
	other := newRegistry(t, srv)
	dup := *a
	dup.Endpoints = []string{"grpc://127.0.0.1:9999"}
	if err := other.Register(ctx, &dup); !errors.Is(err, svcwatch.ErrDuplicateID) {
		t.Fatalf("a duplicate ID registered: %v, want ErrDuplicateID", err)
	}

	if err := r.Deregister(ctx, a); err != nil {
		t.Fatal(err)
	}
	eventuallyNext(t, w, func(list []*registry.ServiceInstance) error {
		if !same(ids(list), "chat-b") {
			return fmt.Errorf("list %v, want [chat-b]", ids(list))
		}
		return nil
	})
	if err := r.Deregister(ctx, a); err != nil {
		t.Fatalf("a second Deregister: %v, want a no-op", err)
	}

	if err := w.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := w.Stop(); err != nil {
		t.Fatalf("a second Stop: %v", err)
	}
	if _, err := next(t, w); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next after Stop: %v, want context.Canceled", err)
	}

	// Bad input.
	for _, si := range []*registry.ServiceInstance{
		nil,
		{ID: "x", Name: "a/b", Endpoints: []string{"grpc://127.0.0.1:1"}},
		{ID: "x", Name: "chat", Version: "v/1", Endpoints: []string{"grpc://127.0.0.1:1"}},
		{ID: "x", Name: "chat"},
		{ID: "x", Name: "chat", Endpoints: []string{"127.0.0.1:1"}},
		{ID: "", Name: "chat", Endpoints: []string{"grpc://127.0.0.1:1"}},
	} {
		if err := r.Register(ctx, si); !errors.Is(err, svcwatch.ErrInvalid) {
			t.Errorf("Register(%+v) = %v, want ErrInvalid", si, err)
		}
	}
}

// eventuallyNext calls Next until check accepts the list (each Next returns
// after one change; a change may come in more than one event).
func eventuallyNext(t *testing.T, w registry.Watcher, check func([]*registry.ServiceInstance) error) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		list, err := next(t, w)
		if err != nil {
			t.Fatal(err)
		}
		err = check(list)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
	}
}

func TestWatchEndsWithItsContextAndClose(t *testing.T) {
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	r := newRegistry(t, srv)
	ctx, cancel := context.WithCancel(context.Background())
	w, err := r.Watch(ctx, "empty")
	if err != nil {
		t.Fatal(err)
	}
	if list, err := next(t, w); err != nil || len(list) != 0 {
		t.Fatalf("first Next of a service with no instance = %v, %v; want an empty list at once", list, err)
	}
	cancel()
	if _, err := next(t, w); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next after its context ended: %v", err)
	}
	_ = w.Stop()

	w2, err := r.Watch(context.Background(), "empty")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := next(t, w2); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := next(t, w2); err == nil {
		t.Fatal("Next after Close returned no error")
	}
	_ = w2.Stop()
	if _, err := r.Watch(context.Background(), "empty"); err == nil {
		t.Fatal("Watch after Close succeeded")
	}
}
