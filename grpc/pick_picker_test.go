package svcwatchgrpc

// pick_picker_test.go: PickPolicy's config and its per-call choice over
// children in given states; no Redis, no servers.

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/endpointsharding"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/status"

	"github.com/svcwatch/svcwatch"
)

func TestPickConfig(t *testing.T) {
	bb := balancer.Get(PickPolicy)
	if bb == nil {
		t.Fatalf("%s is not registered", PickPolicy)
	}
	parser := bb.(balancer.ConfigParser)
	for js, want := range map[string]string{
		`{}`:                        DefaultKeyHeader,
		`{"keyHeader":""}`:          DefaultKeyHeader,
		`{"keyHeader":"Player-ID"}`: "player-id",
		`{"keyHeader":"x.room_id"}`: "x.room_id",
	} {
		cfg, err := parser.ParseConfig([]byte(js))
		if err != nil {
			t.Errorf("%s: %v", js, err)
			continue
		}
		if got := cfg.(*pickConfig).KeyHeader; got != want {
			t.Errorf("%s: keyHeader %q, want %q", js, got, want)
		}
	}
	for _, js := range []string{`{"keyHeader":"player id"}`, `{"keyHeader":"key-bin"}`, `{"keyHeader":"grpc-timeout"}`, `{"keyHeader":7}`, `[`} {
		if _, err := parser.ParseConfig([]byte(js)); err == nil || !strings.HasPrefix(err.Error(), "svcwatch/grpc: ") {
			t.Errorf("%s: err %v, want a svcwatch/grpc error", js, err)
		}
	}
}

// namedPicker stands for a child's pick_first picker: it tells its name.
type namedPicker string

func (p namedPicker) Pick(balancer.PickInfo) (balancer.PickResult, error) {
	return balancer.PickResult{Metadata: metadata.Pairs("picked", string(p))}, nil
}

func child(id string, s connectivity.State) endpointsharding.ChildState {
	e := setInstance(resolver.Endpoint{Addresses: []resolver.Address{{Addr: id + ":1"}}}, svcwatch.Instance{ID: id})
	return endpointsharding.ChildState{Endpoint: e, State: balancer.State{ConnectivityState: s, Picker: namedPicker(id)}}
}

func TestPickPickerWalksPickN(t *testing.T) {
	// The key's candidates in PickN order: x (known to the watcher, not yet
	// to the ClientConn), a, b, c.
	order := []string{"x", "a", "b", "c"}
	var asked []int
	pickN := func(key string, n int) []svcwatch.Instance {
		if key != "player-1" {
			t.Errorf("PickN of %q, want player-1", key)
		}
		asked = append(asked, n)
		var out []svcwatch.Instance
		for _, id := range order[:min(n, len(order))] {
			out = append(out, svcwatch.Instance{ID: id})
		}
		return out
	}
	const (
		R  = connectivity.Ready
		C  = connectivity.Connecting
		I  = connectivity.Idle
		TF = connectivity.TransientFailure
	)
	withKey := balancer.PickInfo{Ctx: metadata.AppendToOutgoingContext(context.Background(), "player-id", "player-1")}
	for _, tc := range []struct {
		name    string
		a, b, c connectivity.State
		want    string // the child picked, or "wait", or "unavailable"
		asked   []int
	}{
		{"the owner ready", R, R, R, "a", []int{1, 2}},
		{"the owner connecting", C, R, R, "b", []int{1, 2, 4}},
		{"the first two failing", TF, TF, R, "c", []int{1, 2, 4}},
		{"none ready, one connecting", TF, C, TF, "wait", []int{1, 2, 4, 8}},
		{"none ready, one idle", I, TF, TF, "wait", []int{1, 2, 4, 8}},
		{"all failing", TF, TF, TF, "unavailable", []int{1, 2, 4, 8}},
	} {
		asked = nil
		p := newPickPicker("player-id", pickN, []endpointsharding.ChildState{child("a", tc.a), child("b", tc.b), child("c", tc.c)}, namedPicker("rr"))
		res, err := p.Pick(withKey)
		var got string
		switch {
		case errors.Is(err, balancer.ErrNoSubConnAvailable):
			got = "wait"
		case status.Code(err) == codes.Unavailable:
			got = "unavailable"
		case err != nil:
			t.Fatalf("%s: %v", tc.name, err)
		default:
			got = res.Metadata.Get("picked")[0]
		}
		if got != tc.want {
			t.Errorf("%s: picked %s, want %s", tc.name, got, tc.want)
		}
		if !slices.Equal(asked, tc.asked) {
			t.Errorf("%s: PickN asked for %v, want %v", tc.name, asked, tc.asked)
		}
	}

	p := newPickPicker("player-id", pickN, []endpointsharding.ChildState{child("a", R)}, namedPicker("rr"))
	for name, ctx := range map[string]context.Context{
		"no metadata":  context.Background(),
		"other header": metadata.AppendToOutgoingContext(context.Background(), DefaultKeyHeader, "player-1"),
		"empty key":    metadata.AppendToOutgoingContext(context.Background(), "player-id", ""),
	} {
		asked = nil
		res, err := p.Pick(balancer.PickInfo{Ctx: ctx})
		if err != nil || res.Metadata.Get("picked")[0] != "rr" || asked != nil {
			t.Errorf("%s: picked %v (%v), PickN asked %v; want round robin, no PickN", name, res.Metadata, err, asked)
		}
	}
}

func TestPickPickerJoinsHeaderValues(t *testing.T) {
	var key string
	p := newPickPicker("k", func(k string, _ int) []svcwatch.Instance { key = k; return nil }, nil, namedPicker("rr"))
	ctx := metadata.AppendToOutgoingContext(context.Background(), "k", "a", "K", "b")
	if _, err := p.Pick(balancer.PickInfo{Ctx: ctx}); status.Code(err) != codes.Unavailable {
		t.Errorf("no instance: err %v, want Unavailable", err)
	}
	if key != "a,b" {
		t.Errorf("key %q, want %q", key, "a,b")
	}
}
