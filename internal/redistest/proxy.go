package redistest

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// proxyDialTimeout bounds the proxy's dial to its target; Close cancels it
// sooner.
const proxyDialTimeout = 10 * time.Second

// Proxy is a TCP proxy on 127.0.0.1 for fault tests. Each accepted
// connection is forwarded to the target over a connection of its own, until
// one of the two faults is injected:
//
//   - Stall: a middlebox that silently stops the flow of the connections that
//     exist, while new ones work (e.g. a stalled pub/sub subscription: the
//     client's writes still succeed into socket buffers, nothing comes back,
//     no FIN or RST ever arrives);
//   - Blackhole: a peer that accepts connections and then says nothing (a
//     stalled connect or handshake).
//
// A connection that ends normally (either side closes or fails) is closed on
// both sides and stops counting in Conns; a half close (EOF) is passed on as
// a half close. Stalled and blackholed connections stay open until Close.
//
// Close closes the listener and every connection and waits for every
// goroutine of the proxy, so a leak check may run right after it. The
// methods are safe for concurrent use.
type Proxy struct {
	target string
	ln     net.Listener
	ctx    context.Context // cancelled by Close; bounds dials to target
	cancel context.CancelFunc
	wg     sync.WaitGroup // accept loop and every connection goroutine

	mu        sync.Mutex
	closed    bool
	blackhole bool
	conns     map[*proxyConn]struct{}
}

// proxyConn is one accepted connection and, once dialed, its upstream.
// Its fields are guarded by Proxy.mu.
type proxyConn struct {
	client  net.Conn
	server  net.Conn // nil until dialed; stays nil when blackholed
	stalled bool
	open    int // forwarding directions still running
}

// NewProxy listens on 127.0.0.1:0 and forwards every accepted connection to
// target (host:port), which it dials only when a connection arrives. The
// caller must Close the proxy.
func NewProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		target: target,
		ln:     ln,
		ctx:    ctx,
		cancel: cancel,
		conns:  map[*proxyConn]struct{}{},
	}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// StartProxy is NewProxy for a testing.TB: it fails t when the proxy cannot
// listen and registers t.Cleanup to close it.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := NewProxy(target)
	if err != nil {
		t.Fatalf("redistest: proxy to %s: %v", target, err)
	}
	t.Cleanup(func() { closeAtCleanup(t, p) })
	return p
}

// Addr returns the proxy's listening address, "127.0.0.1:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target returns the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// Stall makes every connection the proxy has accepted so far stop forwarding
// in both directions, silently: both of its sockets stay open, nothing is
// closed or reset, and the proxy no longer reads from them, so what the peers
// write afterwards is neither delivered nor refused, it only fills socket
// buffers (and a peer's close goes unnoticed). Once Stall returns, nothing a
// peer writes is delivered any more; bytes written before may or may not
// have been, as with a real middlebox. A stalled connection stays open,
// and counted in Conns, until Close. Connections accepted later forward
// normally (unless blackholed).
//
// "Accepted so far" covers every connection on which a round trip through
// the proxy has completed; one still queued in the listener's backlog is not
// covered.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	past := time.Unix(1, 0)
	for c := range p.conns {
		if c.stalled {
			continue
		}
		c.stalled = true
		// A deadline in the past makes every pending and later Read and
		// Write of the forwarding goroutines fail at once; they see the
		// stall and end without closing anything. A blackholed connection
		// has no goroutine and no server: stalling it changes nothing.
		_ = c.client.SetDeadline(past)
		if c.server != nil {
			_ = c.server.SetDeadline(past)
		}
	}
}

// Blackhole turns the blackhole on or off for connections accepted from now
// on. While it is on, a new connection is accepted and held open, but the
// proxy reads nothing from it, writes nothing to it and does not dial the
// target. Connections accepted before are unaffected, and turning it off
// does not release the ones it held: they stay silent, and counted in Conns,
// until Close.
func (p *Proxy) Blackhole(on bool) {
	p.mu.Lock()
	p.blackhole = on
	p.mu.Unlock()
}

// Conns reports how many connections the proxy holds open: forwarding,
// stalled and blackholed ones (including a connection whose target is still
// being dialed). A connection that ended normally may be counted a little
// longer than its peers take to notice, so poll for a decrease.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Close closes the listener and every connection (both sides), cancels
// dials in progress and waits until every goroutine of the proxy has ended.
// It is idempotent; calls after the first return nil.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.cancel()
	err := p.ln.Close()
	for c := range p.conns {
		c.closeBoth()
		delete(p.conns, c)
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		conn, err := p.ln.Accept()
		if err != nil {
			if p.isClosed() {
				return
			}
			// A transient failure (e.g. out of file descriptors): retry
			// shortly, unless Close comes first.
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(pollInterval):
			}
			continue
		}
		c := &proxyConn{client: conn}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = conn.Close()
			return
		}
		p.conns[c] = struct{}{}
		if p.blackhole {
			p.mu.Unlock()
			continue // held by p.conns, closed by Close
		}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(c)
	}
}

func (p *Proxy) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// serve dials the target for c and starts forwarding both ways.
func (p *Proxy) serve(c *proxyConn) {
	defer p.wg.Done()
	ctx, cancel := context.WithTimeout(p.ctx, proxyDialTimeout)
	var d net.Dialer
	server, err := d.DialContext(ctx, "tcp", p.target)
	cancel()

	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.conns[c]; !ok { // Close came first and closed the client
		if server != nil {
			_ = server.Close()
		}
		return
	}
	if c.stalled {
		// Stalled while dialing: hold both sockets open, forward nothing.
		if server != nil {
			c.server = server
			_ = server.SetDeadline(time.Unix(1, 0))
		}
		return
	}
	if err != nil {
		// The target refused: refuse the client too, as a proxy that is
		// not a fault would.
		_ = c.client.Close()
		delete(p.conns, c)
		return
	}
	c.server = server
	c.open = 2
	p.wg.Add(2)
	go p.forward(c, c.server, c.client)
	go p.forward(c, c.client, c.server)
}

// forward copies src to dst until src ends, an error occurs or c stalls.
func (p *Proxy) forward(c *proxyConn, dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	var err error
	for {
		var n int
		n, err = src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				err = werr
				break
			}
		}
		if err != nil {
			break
		}
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.conns[c]; !ok || c.stalled {
		// Closed by Close, or stalled: the error is the stall's deadline
		// (or came with it); leave the sockets open.
		return
	}
	c.open--
	if errors.Is(err, io.EOF) && c.open > 0 {
		// Pass the half close on and let the other direction finish.
		if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			return
		}
	}
	// Done both ways, or broken: end the connection on both sides, which
	// also ends the other direction.
	c.closeBoth()
	delete(p.conns, c)
}

// closeBoth closes both sockets of c; the caller holds Proxy.mu.
func (c *proxyConn) closeBoth() {
	_ = c.client.Close()
	if c.server != nil {
		_ = c.server.Close()
	}
}
