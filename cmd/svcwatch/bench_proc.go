package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch"
	"github.com/svcwatch/svcwatch/protocol"
)

// proc is one svcwatch watcher of the bench (a process or a watch-only
// watcher) on a client of its own.
type proc struct {
	w    *svcwatch.RedisServiceWatcher
	c    redis.UniversalClient
	sent *sendHook
	cut  *cutDialer // crash candidates only
	once sync.Once
}

// stop stops the watcher and closes its client, once.
func (p *proc) stop(timeout time.Duration) error {
	var err error
	p.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		err = p.w.Stop(ctx)
		_ = p.c.Close()
	})
	return err
}

type procSpec struct {
	table, id string
	ttl       time.Duration // 0: library defaults
	watchOnly bool
	handler   svcwatch.Handler
	crashable bool
	quiet     bool // drop the library's logs (a crashed process complains)
}

// startProc builds and starts one watcher on a new client.
func (b *bench) startProc(ctx context.Context, s procSpec) (*proc, error) {
	p := &proc{sent: &sendHook{}}
	co := clientOpts{}
	if s.crashable {
		p.cut = &cutDialer{tls: b.g.tlsConfig()}
		co.dialer = p.cut.dial
	}
	p.c = b.g.newClient(co)
	p.c.AddHook(p.sent)
	logger := b.log
	if s.quiet {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	opts := []svcwatch.Option{svcwatch.WithKeyPrefix(b.g.prefix), svcwatch.WithLogger(logger)}
	if s.ttl > 0 {
		opts = append(opts, svcwatch.WithTTL(s.ttl))
	}
	if s.watchOnly {
		opts = append(opts, svcwatch.WatchOnly())
	}
	if s.handler != nil {
		opts = append(opts, svcwatch.WithHandler(s.handler))
	}
	self := svcwatch.Instance{Table: s.table, ID: s.id, Name: benchName(s.id), Desc: `{"bench":true,"zone":1,"load":0}`}
	w, err := svcwatch.NewRedisServiceWatcher(p.c, self, opts...)
	if err != nil {
		_ = p.c.Close()
		return nil, err
	}
	p.w = w
	b.mu.Lock()
	b.started = append(b.started, p)
	b.mu.Unlock()
	sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	// Connect first: propagation is timed from the register call, which
	// should not carry the client's TCP and HELLO handshake (Start's own
	// duration, reported apart, does).
	if err := p.c.Ping(sctx).Err(); err != nil {
		return nil, fmt.Errorf("start %s/%s: %w", s.table, s.id, err)
	}
	if err := w.Start(sctx); err != nil {
		return nil, fmt.Errorf("start %s/%s: %w", s.table, s.id, err)
	}
	return p, nil
}

// benchName is a plausible, unique advertised address.
func benchName(id string) string {
	n := 0
	for _, r := range id {
		n = n*31 + int(r)
	}
	return "127.0.0.1:" + strconv.Itoa(20000+(n&0x7fff))
}

// benchHandler notes the watcher's adds and removes in the tracker.
type benchHandler struct {
	i  int
	tr *tracker
}

func (h *benchHandler) OnAdd(inst svcwatch.Instance) {
	now := time.Now()
	h.tr.note(h.i, "add "+inst.Key(), now)
}
func (h *benchHandler) OnUpdate(_, _ svcwatch.Instance) {}
func (h *benchHandler) OnRemove(inst svcwatch.Instance) {
	now := time.Now()
	h.tr.note(h.i, "remove "+inst.Key(), now)
}

// sendHook notes when a process's client first sends its register and
// deregister script calls, the moments from which propagation is timed.
type sendHook struct {
	mu     sync.Mutex
	times  map[string]time.Time
	counts map[string]int
}

var (
	registerSHA     = redis.NewScript(protocol.Register).Hash()
	deregisterSHA   = redis.NewScript(protocol.Deregister).Hash()
	catalogTouchSHA = redis.NewScript(protocol.CatalogTouch).Hash()
)

func (h *sendHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *sendHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *sendHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if name := cmd.Name(); name == "evalsha" || name == "eval" {
			if args := cmd.Args(); len(args) > 1 {
				switch args[1] {
				case registerSHA, protocol.Register:
					h.mark("register")
				case deregisterSHA, protocol.Deregister:
					h.mark("deregister")
				case catalogTouchSHA, protocol.CatalogTouch:
					h.count("catalog")
				}
			}
		}
		return next(ctx, cmd)
	}
}

func (h *sendHook) mark(what string) {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.times == nil {
		h.times = map[string]time.Time{}
	}
	if _, ok := h.times[what]; !ok { // the first attempt: a NOSCRIPT retry is part of the latency
		h.times[what] = now
	}
}

// count counts the calls of what (every attempt).
func (h *sendHook) count(what string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.counts == nil {
		h.counts = map[string]int{}
	}
	h.counts[what]++
}

func (h *sendHook) calls(what string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.counts[what]
}

func (h *sendHook) get(what string) time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.times[what]
}

// cutDialer dials like go-redis does, and can crash: close every connection it
// made and refuse to dial again.
type cutDialer struct {
	tls   *tls.Config
	mu    sync.Mutex
	cut   bool
	conns []net.Conn
}

var errCrashed = errors.New("bench: this process has crashed")

func (d *cutDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	cut := d.cut
	d.mu.Unlock()
	if cut {
		return nil, errCrashed
	}
	nd := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 5 * time.Minute}
	conn, err := nd.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if d.tls != nil {
		cfg := d.tls.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(addr)
		}
		conn = tls.Client(conn, cfg)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cut {
		_ = conn.Close()
		return nil, errCrashed
	}
	d.conns = append(d.conns, conn)
	return conn, nil
}

func (d *cutDialer) crash() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cut = true
	for _, c := range d.conns {
		_ = c.Close()
	}
	d.conns = nil
}
