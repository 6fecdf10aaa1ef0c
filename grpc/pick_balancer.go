package svcwatchgrpc

// pick_balancer.go: the "svcwatch_pick" load-balancing policy: its
// registration, its config, and the balancer that keeps one pick_first child
// per endpoint (grpc's endpointsharding, as round_robin) and hands the
// children's states to a picker that routes by svcwatch's PickN.

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/base"
	"google.golang.org/grpc/balancer/endpointsharding"
	"google.golang.org/grpc/balancer/pickfirst"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"
	"google.golang.org/grpc/status"

	"github.com/svcwatch/svcwatch"
)

// PickPolicy is the name of the load-balancing policy that routes each call
// to the owner of its key, as svcwatch's Pick gives it; registered with grpc
// when this package is imported. Select it in the service config of a
// ClientConn on a svcwatch:/// target:
//
//	{"loadBalancingConfig":[{"svcwatch_pick":{}}]}
//	{"loadBalancingConfig":[{"svcwatch_pick":{"keyHeader":"player-id"}}]}
//
// A call's key is the value of its outgoing metadata header keyHeader
// (default DefaultKeyHeader; several values are joined with ","). The call
// goes to the first instance of w.PickN(table, key, ...) whose connection is
// ready, w being the Builder's watcher, read at each call: the owner (as
// w.Pick gives it) while its connection is ready, else the next of its
// fallbacks, in PickN's order, which is the same in every process. So while
// a server cannot be reached, or drains, only its keys move, each to its
// fallback, and they come back when it is ready again. When it deregisters,
// the watcher rebuilds its routing table without it: its keys go to their
// owners in that table (some to another server than their fallback) and, in
// rare cases, a few other keys move with them (svcwatch's Pick, README
// "Routing players"). When no candidate is ready the call waits while one is
// connecting and fails with Unavailable otherwise (a WaitForReady call
// waits). A call without the header (or with an empty one) goes round robin
// over the ready servers.
//
// The policy reads the owners from the watcher of the Builder that resolves
// the target (the resolver passes it along); on a target of another resolver
// every call fails with Unavailable.
const PickPolicy = "svcwatch_pick"

// DefaultKeyHeader is the metadata header that carries a call's key for
// PickPolicy when its config sets no keyHeader.
const DefaultKeyHeader = "svcwatch-key"

func init() { balancer.Register(pickBuilder{}) }

// pickConfig is PickPolicy's config in the service config.
type pickConfig struct {
	serviceconfig.LoadBalancingConfig `json:"-"`

	// KeyHeader is the metadata header with the call's key; lowercased.
	KeyHeader string `json:"keyHeader,omitempty"`
}

// pickBuilder builds PickPolicy balancers; grpc calls it.
type pickBuilder struct{}

func (pickBuilder) Name() string { return PickPolicy }

// ParseConfig checks the policy's JSON config: keyHeader must be a valid
// metadata key (lowercased: [0-9a-z-_.]), not reserved ("grpc-" prefix) and
// not binary ("-bin" suffix), as ring_hash's requestHashHeader.
func (pickBuilder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	cfg := &pickConfig{}
	if len(js) > 0 {
		if err := json.Unmarshal(js, cfg); err != nil {
			return nil, fmt.Errorf("svcwatch/grpc: %s config %s: %w", PickPolicy, js, err)
		}
	}
	if cfg.KeyHeader == "" {
		cfg.KeyHeader = DefaultKeyHeader
	}
	cfg.KeyHeader = strings.ToLower(cfg.KeyHeader)
	if err := checkKeyHeader(cfg.KeyHeader); err != nil {
		return nil, fmt.Errorf("svcwatch/grpc: %s config: keyHeader %q: %w", PickPolicy, cfg.KeyHeader, err)
	}
	return cfg, nil
}

func checkKeyHeader(h string) error {
	for _, c := range []byte(h) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("character %q not allowed in a metadata key", c)
		}
	}
	switch {
	case strings.HasPrefix(h, "grpc-"):
		return fmt.Errorf("the grpc- prefix is reserved")
	case strings.HasSuffix(h, "-bin"):
		return fmt.Errorf("a binary (-bin) header cannot be a key")
	}
	return nil
}

// Build returns a balancer for one ClientConn; grpc calls it.
func (pickBuilder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	b := &pickBalancer{cc: cc, header: DefaultKeyHeader}
	b.Balancer = endpointsharding.NewBalancer(pickCC{ClientConn: cc, b: b}, opts,
		balancer.Get(pickfirst.Name).Build, endpointsharding.Options{})
	return b
}

// pickBalancer is endpointsharding (one pick_first child per endpoint, each
// reconnecting on its own when idle) with its pickers replaced: grpc calls
// its methods one at a time, while the children report their states from
// other goroutines (pickCC.UpdateState). mu guards what both read.
type pickBalancer struct {
	balancer.Balancer // endpointsharding
	cc                balancer.ClientConn

	mu     sync.Mutex
	header string      // the metadata header with the key
	src    *pickSource // the resolver's watcher and table; nil when none came
}

// UpdateClientConnState takes the config and the resolver's watcher, then
// passes the endpoints to endpointsharding. mu is not held across it: it
// reports the children's states back (pickCC.UpdateState) on this goroutine.
func (b *pickBalancer) UpdateClientConnState(s balancer.ClientConnState) error {
	src := pickSourceFrom(s.ResolverState)
	b.mu.Lock()
	if cfg, ok := s.BalancerConfig.(*pickConfig); ok {
		b.header = cfg.KeyHeader
	}
	b.src = src
	b.mu.Unlock()
	if src == nil {
		err := status.Errorf(codes.Unavailable, "svcwatch/grpc: %s needs a %s:/// target resolved by a svcwatchgrpc.Builder", PickPolicy, Scheme)
		b.cc.UpdateState(balancer.State{ConnectivityState: connectivity.TransientFailure, Picker: base.NewErrPicker(err)})
		return balancer.ErrBadResolverState
	}
	// The children are pick_first with their default config, as round_robin's.
	return b.Balancer.UpdateClientConnState(balancer.ClientConnState{
		ResolverState: pickfirst.EnableHealthListener(s.ResolverState),
	})
}

// pickCC is the ClientConn endpointsharding reports to: it swaps
// endpointsharding's round-robin picker for a pickPicker over the same
// children.
type pickCC struct {
	balancer.ClientConn
	b *pickBalancer
}

// UpdateState is called by endpointsharding after each change of a child or
// of the endpoints, one call at a time.
func (c pickCC) UpdateState(s balancer.State) {
	c.b.mu.Lock()
	header, src := c.b.header, c.b.src
	c.b.mu.Unlock()
	if src != nil {
		s.Picker = newPickPicker(header, src.pickN, endpointsharding.ChildStatesFromPicker(s.Picker), s.Picker)
	}
	c.ClientConn.UpdateState(s)
}

// pickSource is what a Builder's resolver passes to PickPolicy in the
// resolver state's attributes: the watcher and the table it resolves. One per
// resolver, compared by pointer.
type pickSource struct {
	w     svcwatch.Watcher
	table string
}

func (s *pickSource) pickN(key string, n int) []svcwatch.Instance { return s.w.PickN(s.table, key, n) }

// String shows the source in grpc's logs.
func (s *pickSource) String() string { return "svcwatch:" + s.table }

// pickSourceKey is the attribute key of the pickSource in a resolver.State.
type pickSourceKey struct{}

func withPickSource(s resolver.State, src *pickSource) resolver.State {
	s.Attributes = s.Attributes.WithValue(pickSourceKey{}, src)
	return s
}

func pickSourceFrom(s resolver.State) *pickSource {
	src, _ := s.Attributes.Value(pickSourceKey{}).(*pickSource)
	return src
}
