package etcd

// proxy_test.go: a TCP proxy between one client and the etcd server that a
// test can partition: while partitioned, nothing flows in either direction
// and new connections are held silently (a network that drops packets);
// healing closes the held connections (as a middlebox that lost its state
// resets them), so the client dials again at once, and forwards anew.

import (
	"net"
	"sync"
	"testing"
)

type proxy struct {
	ln     net.Listener
	target string

	mu          sync.Mutex
	partitioned bool
	conns       map[net.Conn]bool // every open socket, both sides
	wg          sync.WaitGroup
}

// startProxy listens on a free loopback port and forwards to target; closed
// at cleanup.
func startProxy(t testing.TB, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: make(map[net.Conn]bool)}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

// partition stops every byte, both ways, on every connection, old and new.
func (p *proxy) partition() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.partitioned = true
}

// heal resets every connection (they were stalled) and forwards again.
func (p *proxy) heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.partitioned = false
	for c := range p.conns {
		c.Close()
	}
}

func (p *proxy) close() {
	p.ln.Close()
	p.heal()
	p.wg.Wait()
}

func (p *proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.partitioned {
		// Held open and silent until heal.
		p.conns[c] = true
		return false
	}
	p.conns[c] = true
	return true
}

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil || !p.track(up) {
			c.Close()
			if up != nil {
				up.Close()
			}
			continue
		}
		p.wg.Add(2)
		go p.pipe(up, c)
		go p.pipe(c, up)
	}
}

// pipe copies src to dst until either ends, dropping what arrives while the
// proxy is partitioned.
func (p *proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	defer func() {
		dst.Close()
		src.Close()
		p.mu.Lock()
		delete(p.conns, dst)
		delete(p.conns, src)
		p.mu.Unlock()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			drop := p.partitioned
			p.mu.Unlock()
			if !drop {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}
