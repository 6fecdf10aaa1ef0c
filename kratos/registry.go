// Package svcwatchkratos is a go-kratos (v2) registry on svcwatch: a
// registry.Registrar and a registry.Discovery on Redis, so that kratos apps
// register with kratos.Registrar and call each other by "discovery:///name"
// endpoints without etcd or Consul:
//
//	r := svcwatchkratos.New(client, svcwatchkratos.WithPrefix("mygame/prod"))
//	defer r.Close(context.Background())
//	app := kratos.New(kratos.Name("login"), kratos.Version("v1"), kratos.Server(srv), kratos.Registrar(r))
//	conn, err := kgrpc.DialInsecure(ctx, kgrpc.WithEndpoint("discovery:///login"), kgrpc.WithDiscovery(r))
//
// The mapping: a ServiceInstance registers in the table
// prefix/Name/Version (prefix/Name when Version is empty) with its ID; its
// Metadata becomes the instance's Meta ("weight" too, which svcwatch and
// kratos's wrr both read as an integer); the host:port of its first grpc
// endpoint (else of its first endpoint) is the instance's Name, what peers
// dial; its whole endpoint list, name and version are the instance's Desc, as
// JSON, so that GetService returns them. Discovery of a service name watches
// every version of it (the prefix prefix/Name) and lists its Serving
// instances: one that drains (svcwatch's SetState, or the sidecar) leaves the
// list at once.
package svcwatchkratos

// registry.go: Registry, its options and its lifetime; the watchers it holds.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/go-kratos/kratos/v2/registry"
	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch"
)

// DefaultPrefix is the cluster prefix of the tables when WithPrefix is not given.
const DefaultPrefix = "kratos"

// ErrClosed is returned by the Registry's methods after Close.
var ErrClosed = errors.New("svcwatch/kratos: registry closed")

// Compile-time checks: the kratos interfaces the Registry implements.
var (
	_ registry.Registrar = (*Registry)(nil)
	_ registry.Discovery = (*Registry)(nil)
	_ registry.Watcher   = (*watcher)(nil)
)

// Registry is a kratos registry.Registrar and registry.Discovery on svcwatch.
// Each Register starts a watcher of its own (registration and heartbeat of
// that instance); discovery shares one watch-only watcher, started at the
// first GetService or Watch. Its methods are safe for concurrent use; Close
// stops every watcher.
type Registry struct {
	client redis.UniversalClient
	prefix string
	wopts  []svcwatch.Option

	regMu sync.Mutex // serializes Register and Deregister
	regs  map[string]*svcwatch.RedisServiceWatcher

	discMu sync.Mutex // serializes the start of disc and the prefix watches
	disc   *svcwatch.RedisServiceWatcher
	refs   map[string]int // service name -> GetService and Watch holding its prefix

	mu       sync.Mutex
	closed   bool
	watchers map[*watcher]struct{}
}

// Option configures a Registry.
type Option func(*Registry)

// WithPrefix sets the cluster prefix under which services register, e.g.
// "mygame/prod": a ServiceInstance named "login" at version "v1" registers
// in the table "mygame/prod/login/v1". Default DefaultPrefix (also for an
// empty prefix).
func WithPrefix(prefix string) Option {
	return func(r *Registry) {
		if p := strings.Trim(prefix, "/"); p != "" {
			r.prefix = p
		}
	}
}

// WithWatcherOptions adds options to every watcher the Registry builds
// (WithTTL, WithKeyPrefix, WithLogger ...). Default none.
func WithWatcherOptions(opts ...svcwatch.Option) Option {
	return func(r *Registry) { r.wopts = append(r.wopts, opts...) }
}

// New returns a Registry on client. It starts nothing: Register and the first
// GetService or Watch do.
func New(client redis.UniversalClient, opts ...Option) *Registry {
	r := &Registry{
		client:   client,
		prefix:   DefaultPrefix,
		regs:     make(map[string]*svcwatch.RedisServiceWatcher),
		refs:     make(map[string]int),
		watchers: make(map[*watcher]struct{}),
	}
	for _, o := range opts {
		if o != nil {
			o(r)
		}
	}
	return r
}

// Close deregisters every instance still registered, stops the discovery
// watcher and every registry.Watcher (their Next returns an error). It is
// idempotent; the Registry cannot be used after it.
func (r *Registry) Close(ctx context.Context) error {
	r.mu.Lock()
	r.closed = true
	ws := make([]*watcher, 0, len(r.watchers))
	for w := range r.watchers {
		ws = append(ws, w)
	}
	r.mu.Unlock()
	for _, w := range ws {
		w.cancel()
	}

	var errs []error
	r.regMu.Lock()
	for key, w := range r.regs {
		if err := w.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("svcwatch/kratos: deregister %s: %w", key, err))
		}
		delete(r.regs, key)
	}
	r.regMu.Unlock()

	r.discMu.Lock()
	if r.disc != nil {
		if err := r.disc.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("svcwatch/kratos: stop discovery: %w", err))
		}
		r.disc = nil
	}
	r.discMu.Unlock()
	return errors.Join(errs...)
}

func (r *Registry) isClosed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed
}

// discovery returns the started discovery watcher, starting it if needed.
// Caller holds discMu.
func (r *Registry) discoveryLocked(ctx context.Context) (*svcwatch.RedisServiceWatcher, error) {
	if r.isClosed() {
		return nil, ErrClosed
	}
	if r.disc != nil {
		return r.disc, nil
	}
	h := svcwatch.HandlerFuncs{
		Add:    func(inst svcwatch.Instance) { r.changed(inst.Table) },
		Update: func(_, cur svcwatch.Instance) { r.changed(cur.Table) },
		Remove: func(inst svcwatch.Instance) { r.changed(inst.Table) },
	}
	opts := append(append([]svcwatch.Option(nil), r.wopts...), svcwatch.WatchOnly(), svcwatch.WithHandler(h))
	// No table of its own: it watches only the services' prefixes.
	w, err := svcwatch.NewRedisServiceWatcher(r.client, svcwatch.Instance{}, opts...)
	if err != nil {
		return nil, fmt.Errorf("svcwatch/kratos: discovery watcher: %w", err)
	}
	if err := w.Start(ctx); err != nil {
		return nil, fmt.Errorf("svcwatch/kratos: start discovery: %w", err)
	}
	r.disc = w
	return w, nil
}

// acquire holds the prefix of service name watched (every version of it)
// until release, and returns the discovery watcher.
func (r *Registry) acquire(ctx context.Context, name string) (*svcwatch.RedisServiceWatcher, error) {
	p, err := r.servicePrefix(name)
	if err != nil {
		return nil, err
	}
	r.discMu.Lock()
	defer r.discMu.Unlock()
	d, err := r.discoveryLocked(ctx)
	if err != nil {
		return nil, err
	}
	if r.refs[name] == 0 {
		if err := d.WatchPrefix(ctx, p); err != nil {
			return nil, fmt.Errorf("svcwatch/kratos: watch %s: %w", p, err)
		}
	}
	r.refs[name]++
	return d, nil
}

// release undoes acquire; the last release unwatches the service's prefix.
func (r *Registry) release(ctx context.Context, name string) error {
	r.discMu.Lock()
	defer r.discMu.Unlock()
	r.refs[name]--
	if r.refs[name] > 0 {
		return nil
	}
	delete(r.refs, name)
	if r.disc == nil { // closed meanwhile
		return nil
	}
	p, _ := r.servicePrefix(name)
	if err := r.disc.UnwatchPrefix(ctx, p); err != nil && !errors.Is(err, svcwatch.ErrStopped) {
		return fmt.Errorf("svcwatch/kratos: unwatch %s: %w", p, err)
	}
	return nil
}

// changed wakes the registry.Watchers whose service table changed. It runs
// on the discovery watcher's event goroutine and never blocks.
func (r *Registry) changed(table string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for w := range r.watchers {
		if svcwatch.UnderPrefix(table, w.prefix) {
			w.signal()
		}
	}
}
