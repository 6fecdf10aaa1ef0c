package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch"
)

// The kinds of process, each registered in its own table.
const (
	gate = "gate"
	game = "game"
	chat = "chat"
)

func table(kind string) string { return svcwatch.Path("demo", "dev", "v1", kind) }

func kindOf(table string) string { return table[strings.LastIndex(table, "/")+1:] }

// The mesh. A process watches its own table (a watcher always does) and the kinds
// below; it dials only the peers that dials accepts, so that each pair gets one
// connection:
//
//	gate -> game   the gate dials every game server
//	game -> chat   each game server dials chat; chat watches the games but never
//	               dials them (it accepts their connections)
var watches = map[string][]string{
	gate: {game},
	game: {chat},
	chat: {game},
}

func dials(self, peer string) bool {
	return self == gate && peer == game || self == game && peer == chat
}

// Discovery settings, short so that the story runs in seconds: a killed process is
// dropped by its peers about 2s after its last heartbeat.
const (
	ttl       = 2 * time.Second
	keepalive = 400 * time.Millisecond
)

// process is one server of the cluster: a TCP listener, a watcher (its own Redis
// client, as a separate OS process would have) and a ConnManager that keeps one
// connection to each peer it dials.
type process struct {
	id, kind string
	pr       *printer
	dead     atomic.Bool // killed: it says nothing more

	ln      net.Listener
	client  *redis.Client
	watcher *svcwatch.RedisServiceWatcher
	conns   *svcwatch.ConnManager[*peerConn] // outgoing connections

	mu       sync.Mutex
	stopping bool                      // the listener is closing: no more incoming connections
	incoming map[net.Conn]struct{}     // open incoming connections
	accepted map[string]bool           // peer IDs with an open incoming connection
	dialed   map[string]bool           // peer IDs with an open outgoing connection
	known    map[string]svcwatch.State // peer IDs the watcher reported and did not remove, with the state it reported
	wg       sync.WaitGroup            // the accept loop and one goroutine per incoming connection

	// Players (routing.go), on a game server: the players it hosts, each with
	// the connection of the gate that placed it.
	players  map[string]net.Conn
	changed  chan struct{} // closed and replaced whenever players changes
	quit     chan struct{} // closed by stop and kill: simulated players stop
	quitOnce sync.Once
	sim      sync.WaitGroup // the simulated players' goroutine
}

// startProcess listens on addr ("127.0.0.1:0" for any port), registers the
// process in its kind's table and starts watching. When it returns, the peers
// already registered have been reported and their dials have begun.
func startProcess(ctx context.Context, pr *printer, redisAddr, kind, id, addr string) (*process, error) {
	p := &process{
		id: id, kind: kind, pr: pr,
		incoming: map[net.Conn]struct{}{},
		accepted: map[string]bool{},
		dialed:   map[string]bool{},
		known:    map[string]svcwatch.State{},
		players:  map[string]net.Conn{},
		changed:  make(chan struct{}),
		quit:     make(chan struct{}),
	}
	ln, err := listen(ctx, addr)
	if err != nil {
		return nil, err
	}
	p.ln = ln
	p.wg.Add(1)
	go p.acceptLoop()

	libLog := newLibLogger(func(msg string) { p.say("%s", msg) })
	p.conns = svcwatch.NewConnManager(p.dial,
		svcwatch.WithConnFilter(func(peer svcwatch.Instance) bool { return dials(kind, kindOf(peer.Table)) }),
		svcwatch.WithOnConnect(p.onConnect),
		svcwatch.WithOnDisconnect(p.onDisconnect),
		svcwatch.WithDialTimeout(2*time.Second),
		svcwatch.WithBackoff(250*time.Millisecond, time.Second),
		svcwatch.WithConnLogger(libLog))

	var tables []string
	for _, k := range watches[kind] {
		tables = append(tables, table(k))
	}
	p.client = redis.NewClient(&redis.Options{Addr: redisAddr, ContextTimeoutEnabled: true})
	p.watcher, err = svcwatch.NewRedisServiceWatcher(p.client,
		svcwatch.Instance{Table: table(kind), ID: id, Name: ln.Addr().String(), Desc: fmt.Sprintf(`{"kind":%q}`, kind)},
		svcwatch.WithTTL(ttl),
		svcwatch.WithKeepAliveInterval(keepalive),
		svcwatch.WithTables(tables...),
		svcwatch.WithLogger(libLog),
		svcwatch.WithHandler(svcwatch.HandlerFuncs{Add: p.onAdd, Update: p.onUpdate, Remove: p.onRemove}), // prints first,
		svcwatch.WithHandler(p.conns)) // then the ConnManager dials or hangs up
	if err == nil {
		p.say("listening on %s; registers in %s, watches %s", ln.Addr(), table(kind), p.describeMesh())
		err = p.watcher.Start(ctx)
	}
	if err != nil {
		p.closeListener()
		_ = p.conns.Close()
		_ = p.client.Close()
		return nil, fmt.Errorf("start %s: %w", id, err)
	}
	return p, nil
}

func (p *process) describeMesh() string {
	var w, d []string
	for _, k := range append([]string{p.kind}, watches[p.kind]...) {
		w = append(w, k)
		if dials(p.kind, k) {
			d = append(d, k)
		}
	}
	if len(d) == 0 {
		d = []string{"nobody"}
	}
	return strings.Join(w, "+") + ", dials " + strings.Join(d, "+")
}

// addr is the address the process listens on and advertises.
func (p *process) addr() string { return p.ln.Addr().String() }

func (p *process) say(format string, args ...any) {
	if !p.dead.Load() {
		p.pr.event(p.id, fmt.Sprintf(format, args...))
	}
}

// --- discovery events (one goroutine per watcher calls these, in order) ---

func (p *process) onAdd(peer svcwatch.Instance) {
	state := "" // the usual case, Serving, goes without saying
	if peer.State != svcwatch.Serving {
		state = ", " + peer.State.String()
	}
	p.say("sees %s up at %s (incarnation %.6s%s)", peer.ID, peer.Name, peer.Incarnation, state)
	p.setKnown(peer.ID, peer.State, true)
}

func (p *process) onUpdate(old, cur svcwatch.Instance) {
	if old.State == cur.State {
		p.say("sees %s updated: %s", cur.ID, cur.Desc)
		return
	}
	p.say("sees %s %s (was %s)", cur.ID, cur.State, old.State)
	p.setKnown(cur.ID, cur.State, true)
	// The ConnManager (the next handler) keeps the connection: only a new Name
	// or incarnation makes it redial. Pick no longer gives the peer new keys.
	if _, ok := p.conns.Get(cur.Key()); ok && cur.State != svcwatch.Serving {
		p.say("keeps its connection to %s open; Pick gives it no new players", cur.ID)
	}
}

func (p *process) onRemove(peer svcwatch.Instance) {
	p.say("sees %s gone (removed; incarnation %.6s)", peer.ID, peer.Incarnation)
	p.setKnown(peer.ID, 0, false)
}

// --- outgoing connections, managed by the ConnManager ---

// dial connects to a peer and exchanges hellos; the ConnManager calls it from the
// peer's own goroutine and redials with backoff when it fails. ctx ends at the dial
// timeout, or when the peer goes away or the manager closes.
func (p *process) dial(ctx context.Context, peer svcwatch.Instance) (*peerConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", peer.Name)
	if err == nil {
		r := bufio.NewReader(c)
		var hello string
		if hello, err = dialerHello(ctx, c, r, p.id, peer.ID); err == nil {
			return p.newPeerConn(c, r, peer, hello), nil
		}
		c.Close()
	}
	if !errors.Is(ctx.Err(), context.Canceled) { // not given up (peer removed, manager closed): a real failure
		p.say("dial %s at %s failed: %v", peer.ID, peer.Name, shortErr(err))
	}
	return nil, err
}

// onConnect and onDisconnect are the ConnManager's hooks, called from the peer's
// dial goroutine; for one peer they never overlap.
func (p *process) onConnect(peer svcwatch.Instance, c io.Closer) {
	p.say("connected to %s (%s), it said %q", peer.ID, peer.Name, c.(*peerConn).hello)
	p.set(p.dialed, peer.ID, true)
}

func (p *process) onDisconnect(peer svcwatch.Instance, err error) {
	if errors.Is(err, svcwatch.ErrConnInvalidated) {
		p.say("connection to %s closed (broken); redialing while %s is registered", peer.ID, peer.ID)
	} else {
		p.say("connection to %s closed", peer.ID)
	}
	p.set(p.dialed, peer.ID, false)
}

// peerConn is an outgoing connection, the ConnManager's C. Its reader goroutine
// reads the peer's messages (a game server's "done player-N", routing.go),
// notices when the peer hangs up and tells the manager (Invalidate), which closes
// the connection and redials while the peer is registered. Close closes the socket
// and waits for the reader.
type peerConn struct {
	net.Conn
	hello   string // the peer's hello line
	closing atomic.Bool
	done    chan struct{} // closed when the reader has returned
}

func (p *process) newPeerConn(c net.Conn, r *bufio.Reader, peer svcwatch.Instance, hello string) *peerConn {
	pc := &peerConn{Conn: c, hello: hello, done: make(chan struct{})}
	go func() {
		defer close(pc.done)
		err := p.readFromGame(c, r, peer.ID) // until the peer hangs up or we close
		if pc.closing.Load() {
			return // closed by the manager: removal, shutdown or Invalidate
		}
		if err == nil {
			err = io.EOF
		}
		p.say("lost connection to %s: %v", peer.ID, shortErr(err))
		p.invalidate(peer.Key(), pc)
	}()
	return pc
}

func (c *peerConn) Close() error {
	c.closing.Store(true)
	err := c.Conn.Close()
	<-c.done
	return err
}

// invalidate tells the manager that pc broke. Invalidate acts on the key's current
// connection, and a connection is published (Get) only after OnConnect returns, so
// wait for pc to be published and invalidate it only if it is still the current one.
func (p *process) invalidate(key string, pc *peerConn) {
	for !pc.closing.Load() {
		if cur, ok := p.conns.Get(key); ok {
			if cur == pc {
				p.conns.Invalidate(key)
			}
			return
		}
		time.Sleep(10 * time.Millisecond) // not published yet, or being closed
	}
}

// --- incoming connections ---

func (p *process) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // the listener was closed
		}
		p.mu.Lock()
		if p.stopping {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.incoming[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serveIncoming(c)
	}
}

func (p *process) serveIncoming(c net.Conn) {
	defer p.wg.Done()
	defer func() {
		c.Close()
		p.mu.Lock()
		delete(p.incoming, c)
		p.mu.Unlock()
	}()
	r := bufio.NewReader(c)
	peerID, err := acceptorHello(c, r, p.id)
	if err != nil {
		if !p.isStopping() {
			p.say("rejected a connection from %s: %v", c.RemoteAddr(), shortErr(err))
		}
		return
	}
	p.say("accepted %s, it said %q", peerID, "hello from "+peerID)
	p.set(p.accepted, peerID, true)
	err = p.readFromGate(c, r) // until the peer hangs up or we close
	p.set(p.accepted, peerID, false)
	if !p.isStopping() {
		if err == nil {
			err = io.EOF
		}
		p.say("%s hung up: %v", peerID, shortErr(err))
	}
}

// closeListener stops accepting, closes every incoming connection and waits for
// their goroutines.
func (p *process) closeListener() {
	p.mu.Lock()
	p.stopping = true
	for c := range p.incoming {
		c.Close()
	}
	p.mu.Unlock()
	p.ln.Close()
	p.wg.Wait()
}

func (p *process) isStopping() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopping
}

// --- the hello protocol: one line each way, the dialer first ---

// dialerHello sends our hello and reads the peer's, which must name the peer we
// meant to reach. It gives up when ctx ends.
func dialerHello(ctx context.Context, c net.Conn, r *bufio.Reader, self, want string) (string, error) {
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) }) // unblock reads and writes
	defer stop()
	if _, err := fmt.Fprintf(c, "hello from %s\n", self); err != nil {
		return "", err
	}
	got, err := readHello(r)
	if err == nil && got != want {
		err = fmt.Errorf("%s answered, not %s", got, want)
	}
	if err == nil && !stop() {
		err = ctx.Err() // canceled during the exchange
	}
	if err != nil {
		return "", err
	}
	return "hello from " + got, nil
}

// acceptorHello reads the dialer's hello and answers with ours.
func acceptorHello(c net.Conn, r *bufio.Reader, self string) (string, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	peer, err := readHello(r)
	if err != nil {
		return "", err
	}
	_, err = fmt.Fprintf(c, "hello from %s\n", self)
	return peer, err
}

func readHello(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	id, ok := strings.CutPrefix(strings.TrimSpace(line), "hello from ")
	if !ok || id == "" {
		return "", fmt.Errorf("not a hello: %q", line)
	}
	return id, nil
}

// --- stopping ---

// stop shuts the process down cleanly: it deregisters (peers hear at once), closes
// its outgoing connections, then its listener and incoming connections.
func (p *process) stop(ctx context.Context) error {
	p.stopPlayers()
	err := p.watcher.Stop(ctx)
	err = errors.Join(err, p.conns.Close())
	p.closeListener()
	return errors.Join(err, p.client.Close())
}

// kill simulates a SIGKILL inside this program: the process's sockets close and it
// neither heartbeats nor deregisters. Its Redis client is closed first, so the
// deregistration that Stop attempts cannot reach Redis; Stop is still called, to
// end the watcher's goroutines (heartbeat, subscription, events). It returns the
// error Stop met, which must be the closed client.
func (p *process) kill(ctx context.Context) error {
	p.dead.Store(true)
	p.stopPlayers()
	p.closeListener()
	_ = p.conns.Close()
	_ = p.client.Close() // no heartbeat, no deregistration from now on
	// A live ctx, not a canceled one: Stop then waits for the watcher's goroutines
	// (with the client closed, every call fails at once, so it returns in
	// microseconds); a DeadlineExceeded below would mean one of them hangs.
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := p.watcher.Stop(ctx)
	if err == nil || !errors.Is(err, redis.ErrClosed) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("kill %s: Stop on a closed client returned %v, want only redis.ErrClosed", p.id, err)
	}
	return nil
}

// --- small helpers ---

func (p *process) set(m map[string]bool, id string, v bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if v {
		m[id] = true
	} else {
		delete(m, id)
	}
}

func (p *process) has(m map[string]bool, id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return m[id]
}

// linked reports whether a has a connection open to b, and b has accepted it.
func linked(a, b *process) bool { return a.has(a.dialed, b.id) && b.has(b.accepted, a.id) }

func (p *process) setKnown(id string, s svcwatch.State, v bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if v {
		p.known[id] = s
	} else {
		delete(p.known, id)
	}
}

// knows reports whether p's watcher reported peer id and did not remove it.
func (p *process) knows(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.known[id]
	return ok
}

// sees reports whether p's watcher reported peer id in state s.
func (p *process) sees(id string, s svcwatch.State) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	got, ok := p.known[id]
	return ok && got == s
}

// listen listens on addr; a fixed port just released may take a moment to free.
func listen(ctx context.Context, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	for {
		ln, err := lc.Listen(ctx, "tcp", addr)
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) {
			return ln, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// shortErr drops the "dial tcp 127.0.0.1:1234:" part of network errors.
func shortErr(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}
