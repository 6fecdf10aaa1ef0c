package svcwatchgrpc

// pick_picker.go: PickPolicy's per-call choice: the first of the key's PickN
// candidates whose connection is ready.

import (
	"strings"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/endpointsharding"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/svcwatch/svcwatch"
)

// pickPicker routes a call with a key to the first of pickN(key, ...) whose
// child (one endpoint's pick_first) is ready. It is immutable; grpc calls Pick
// from any number of goroutines. The owners come from the watcher at each
// call, the readiness from the children's states when the picker was built: a
// new picker comes with every change of a child, and with every resolver
// update, after which grpc retries the calls that waited.
type pickPicker struct {
	header   string
	pickN    func(key string, n int) []svcwatch.Instance
	children map[string]endpointsharding.ChildState // by instance ID
	rr       balancer.Picker                        // endpointsharding's: round robin over the ready children
}

func newPickPicker(header string, pickN func(string, int) []svcwatch.Instance, states []endpointsharding.ChildState, rr balancer.Picker) *pickPicker {
	p := &pickPicker{header: header, pickN: pickN, rr: rr, children: make(map[string]endpointsharding.ChildState, len(states))}
	for _, cs := range states {
		if a, ok := cs.Endpoint.Attributes.Value(instanceKey{}).(instanceAttr); ok {
			p.children[a.inst.ID] = cs
		}
	}
	return p
}

// Pick implements balancer.Picker. The candidates are asked for 1, 2, 4 ...
// at a time (PickN gives the same order for any n), so that the usual call,
// whose owner is ready, costs one Pick; the candidates of the watcher that
// have no child yet (a server this ClientConn has not been told of) are
// passed over.
func (p *pickPicker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	key := p.key(info)
	if key == "" {
		return p.rr.Pick(info)
	}
	waiting := false
	for n := 1; ; n *= 2 {
		cands := p.pickN(key, n)
		for _, inst := range cands {
			cs, ok := p.children[inst.ID]
			if !ok {
				continue
			}
			switch cs.State.ConnectivityState {
			case connectivity.Ready:
				return cs.State.Picker.Pick(info)
			case connectivity.Connecting, connectivity.Idle:
				waiting = true
			}
		}
		if len(cands) < n { // every serving instance was a candidate
			break
		}
	}
	if waiting {
		return balancer.PickResult{}, balancer.ErrNoSubConnAvailable
	}
	return balancer.PickResult{}, status.Errorf(codes.Unavailable, "svcwatch/grpc: no ready server for key %q", key)
}

// key returns the call's key: the header's values joined with ",", "" when
// it has none.
func (p *pickPicker) key(info balancer.PickInfo) string {
	md, _ := metadata.FromOutgoingContext(info.Ctx)
	vs := md.Get(p.header)
	switch len(vs) {
	case 0:
		return ""
	case 1:
		return vs[0]
	}
	return strings.Join(vs, ",")
}
