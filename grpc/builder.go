// Package svcwatchgrpc resolves gRPC targets "svcwatch:///<table>" through a
// svcwatch watcher, so that grpc-go's own load balancing (round_robin,
// ring_hash, ...) spreads calls over the serving instances of a table:
//
//	w, err := svcwatch.NewRedisServiceWatcher(client, self)
//	if err != nil { ... }
//	b := svcwatchgrpc.NewBuilder(w) // attaches to w as one of its handlers
//	defer b.Close(ctx)              // after the ClientConns close
//	conn, err := grpc.NewClient("svcwatch:///mygame/prod/v1/login",
//		grpc.WithResolvers(b),
//		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
//		grpc.WithTransportCredentials(insecure.NewCredentials()))
//
// The Builder is a resolver.Builder over a watcher built elsewhere: it adds a
// handler to the watcher (svcwatch.Watcher.AddHandler), which tells it of
// every change, and it passes the table's new endpoint list to every
// ClientConn on that table at once. Instead of grpc.WithResolvers on each
// ClientConn, resolver.Register(b) makes the scheme global; grpc-go wants
// that done before any ClientConn is created (it is not safe concurrently
// with grpc.NewClient).
//
// What a ClientConn gets: one endpoint per Serving instance with a positive
// weight (Instance.Weight, as Pick), whose address is the instance's Name.
// Draining and Unhealthy instances leave the list, so they get no new calls;
// grpc-go closes their connections gracefully, so calls in flight and open
// streams finish. Each endpoint carries the Instance (ID, Meta, State ...),
// read with InstanceFromEndpoint, and the instance ID as its ring-hash key, so
// that grpc's ring_hash policy places a server on the ring by ID, not address:
// a server that restarts (on any port) gets its keys back, and the others keep
// theirs.
//
// Player affinity: the load-balancing policy "svcwatch_pick" (PickPolicy,
// registered with grpc when this package is imported) sends a call with a key
// (its metadata header DefaultKeyHeader, or the config's keyHeader) to the
// instance that svcwatch's Pick gives for the key, the same in every process;
// while that instance's connection is not ready, to the first ready one of
// PickN's fallbacks. So when a server restarts, its keys move and come back,
// and the others' stay (but for the rare ones that Pick itself moves when an
// instance leaves); grpc's ring_hash rebuilds its ring when a server leaves
// and moves some of the other servers' keys too (about 9% in the tests):
//
//	conn, err := grpc.NewClient("svcwatch:///mygame/prod/v1/game",
//		grpc.WithResolvers(b),
//		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"svcwatch_pick":{}}]}`),
//		grpc.WithTransportCredentials(insecure.NewCredentials()))
//	ctx = metadata.AppendToOutgoingContext(ctx, svcwatchgrpc.DefaultKeyHeader, playerID)
//
// Tables: a ClientConn's resolver watches its table if the watcher does not
// already (by name, by prefix, or as self's table), and the Builder unwatches
// the tables it added once no ClientConn needs them.
package svcwatchgrpc

// builder.go: Builder, its options, its handler on the watcher and the tables
// it watches for its ClientConns.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/resolver"

	"github.com/svcwatch/svcwatch"
)

// Scheme is the default URI scheme of a Builder: targets are
// "svcwatch:///<table>", e.g. "svcwatch:///mygame/prod/20190510/login".
const Scheme = "svcwatch"

// DefaultUnwatchTimeout bounds the Unwatch of a table no ClientConn needs any
// more (see WithUnwatchTimeout).
const DefaultUnwatchTimeout = 10 * time.Second

// ErrClosed is returned by Build after Close.
var ErrClosed = errors.New("svcwatch/grpc: builder closed")

// Builder is a grpc resolver.Builder for the scheme "svcwatch" over one
// watcher. Build it with NewBuilder; Close it after its ClientConns. Its
// methods are safe for concurrent use.
type Builder struct {
	scheme         string
	log            *slog.Logger
	unwatchTimeout time.Duration

	w      svcwatch.Watcher
	remove func() // removes the Builder's handler from w; idempotent

	mu     sync.Mutex
	closed bool
	tables map[string]*tableRef
	// Unwatch calls in flight (each bounded by unwatchTimeout), and a channel
	// closed when the last of them returns (nil while none is in flight).
	unwatching int
	idle       chan struct{}
}

// tableRef is what the Builder knows of one table its resolvers resolve.
// refs, resolvers and owned are guarded by Builder.mu; watchMu serializes the
// Builder's Watch and Unwatch of the table, so that a ClientConn that comes
// as the last one goes finds the table watched.
type tableRef struct {
	refs      int
	resolvers map[*svcResolver]struct{}
	owned     bool // the Builder's Watch added the table; it unwatches it
	watchMu   sync.Mutex
}

// Option configures a Builder.
type Option func(*Builder)

// WithScheme sets the URI scheme the Builder serves, for a process with
// several watchers (one Builder each) registered globally. Default "svcwatch".
func WithScheme(s string) Option { return func(b *Builder) { b.scheme = s } }

// WithLogger sets where the Builder logs what it cannot return (a failed
// Unwatch). Default slog.Default(); nil keeps the default.
func WithLogger(l *slog.Logger) Option {
	return func(b *Builder) {
		if l != nil {
			b.log = l
		}
	}
}

// WithUnwatchTimeout bounds the Unwatch of a table no ClientConn needs any
// more. Default DefaultUnwatchTimeout.
func WithUnwatchTimeout(d time.Duration) Option {
	return func(b *Builder) {
		if d > 0 {
			b.unwatchTimeout = d
		}
	}
}

// NewBuilder returns a Builder that resolves through w, built (and usually
// started) by the caller, and adds the Builder's handler to w
// (w.AddHandler), so that every change of a table reaches its ClientConns;
// Close removes it. Tables the Builder watches for its ClientConns are
// unwatched when no ClientConn needs them; the others are left alone. Use one
// Builder per watcher (two would unwatch each other's tables). A nil w is a
// programming error and panics.
func NewBuilder(w svcwatch.Watcher, opts ...Option) *Builder {
	if w == nil {
		panic("svcwatch/grpc: NewBuilder(nil watcher)")
	}
	b := &Builder{
		scheme:         Scheme,
		log:            slog.Default(),
		unwatchTimeout: DefaultUnwatchTimeout,
		w:              w,
		tables:         make(map[string]*tableRef),
	}
	for _, o := range opts {
		if o != nil {
			o(b)
		}
	}
	// Every event only wakes the resolvers of its table, which read the
	// watcher's current view: so the peers replayed to a late handler and
	// the changes after it need nothing more. Build cannot run before this
	// returns, so no resolver can miss a change.
	b.remove = w.AddHandler(svcwatch.HandlerFuncs{
		Add:    func(inst svcwatch.Instance) { b.changed(inst.Table) },
		Update: func(_, cur svcwatch.Instance) { b.changed(cur.Table) },
		Remove: func(inst svcwatch.Instance) { b.changed(inst.Table) },
	})
	return b
}

// Scheme returns the URI scheme the Builder serves. It implements
// resolver.Builder.
func (b *Builder) Scheme() string { return b.scheme }

// Build starts resolving target ("svcwatch:///<table>") for cc: it returns at
// once, watches the table if needed (retrying with backoff while the watcher
// cannot) and then reports the table's serving endpoints to cc, again after
// every change. grpc calls it; it implements resolver.Builder.
func (b *Builder) Build(target resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	if target.URL.Host != "" {
		return nil, fmt.Errorf("svcwatch/grpc: target %q: an authority is not supported; use %s:///<table>", target.URL.String(), b.scheme)
	}
	table := target.Endpoint()
	if table == "" {
		return nil, fmt.Errorf("svcwatch/grpc: target %q names no table; use %s:///<table>", target.URL.String(), b.scheme)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &svcResolver{
		cc: cc, src: &pickSource{w: b.w, table: table},
		ctx: ctx, cancel: cancel,
		wake: make(chan struct{}, 1), done: make(chan struct{}),
	}

	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		cancel()
		return nil, ErrClosed
	}
	ref := b.tables[table]
	if ref == nil {
		ref = &tableRef{resolvers: make(map[*svcResolver]struct{})}
		b.tables[table] = ref
	}
	ref.refs++
	ref.resolvers[r] = struct{}{}
	b.mu.Unlock()

	r.ensureWatched = func(ctx context.Context) error { return b.ensureWatched(ctx, table, ref) }
	r.release = func() { b.release(table, ref, r) }
	go r.run()
	return r, nil
}

// ensureWatched watches table unless the watcher already does (then the
// table is its user's and never unwatched by the Builder).
func (b *Builder) ensureWatched(ctx context.Context, table string, ref *tableRef) error {
	ref.watchMu.Lock()
	defer ref.watchMu.Unlock()
	b.mu.Lock()
	owned := ref.owned
	b.mu.Unlock()
	if owned || slices.Contains(b.w.Tables(), table) {
		return nil
	}
	if err := b.w.Watch(ctx, table); err != nil {
		return err
	}
	b.mu.Lock()
	ref.owned = true
	b.mu.Unlock()
	return nil
}

// release drops r's hold on its table. When it was the last and the Builder
// watched the table, it unwatches it on a goroutine of its own: Unwatch waits
// for the watcher's handlers, and a handler may be what closed the ClientConn
// (grpc's Close waits for the resolver's).
func (b *Builder) release(table string, ref *tableRef, r *svcResolver) {
	b.mu.Lock()
	delete(ref.resolvers, r)
	ref.refs--
	last := ref.refs == 0
	if last && !ref.owned && b.tables[table] == ref {
		delete(b.tables, table)
	}
	if last && ref.owned {
		if b.unwatching == 0 {
			b.idle = make(chan struct{})
		}
		b.unwatching++
	}
	b.mu.Unlock()
	if last && ref.owned {
		go b.unwatch(table, ref)
	}
}

// unwatch unwatches a table the Builder watched, unless a ClientConn came for
// it meanwhile.
func (b *Builder) unwatch(table string, ref *tableRef) {
	defer b.unwatchDone()
	ref.watchMu.Lock()
	defer ref.watchMu.Unlock()
	b.mu.Lock()
	if ref.refs > 0 || !ref.owned {
		b.mu.Unlock()
		return
	}
	ref.owned = false
	b.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), b.unwatchTimeout)
	defer cancel()
	err := b.w.Unwatch(ctx, table)
	if err != nil && !errors.Is(err, svcwatch.ErrStopped) {
		b.log.Warn("svcwatch/grpc: unwatch a table no ClientConn needs", "table", table, "err", err)
	}

	b.mu.Lock()
	if ref.refs == 0 && !ref.owned && b.tables[table] == ref {
		delete(b.tables, table)
	}
	b.mu.Unlock()
}

func (b *Builder) unwatchDone() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.unwatching--
	if b.unwatching == 0 {
		close(b.idle)
		b.idle = nil
	}
}

// Close removes the Builder's handler from the watcher, makes later Builds
// fail with ErrClosed and waits until the Unwatch calls of closed ClientConns
// have returned (each is bounded by the unwatch timeout) or ctx ends. Call it
// after closing the ClientConns (a ClientConn still open gets no more
// changes) and before stopping the watcher, e.g. at shutdown or at the end of
// a test; a Builder that lives as long as its watcher needs no Close.
// Idempotent.
func (b *Builder) Close(ctx context.Context) error {
	b.remove()
	b.mu.Lock()
	b.closed = true
	idle := b.idle
	b.mu.Unlock()
	if idle == nil {
		return nil
	}
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("svcwatch/grpc: close: %w", ctx.Err())
	}
}

// changed wakes every resolver of table; it never blocks, so the watcher's
// events are never held up by a ClientConn.
func (b *Builder) changed(table string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if ref := b.tables[table]; ref != nil {
		for r := range ref.resolvers {
			r.signal()
		}
	}
}
