package main

// network.go: the in-process stand-in for the network. A game server is reached
// at the address it registers (Instance.Name), as a real gate would dial it;
// examples/gamecluster shows real TCP connections managed by a ConnManager.

import "sync"

// network maps addresses to the game servers listening there.
type network struct {
	mu      sync.Mutex
	servers map[string]*gameServer
}

func newNetwork() *network { return &network{servers: map[string]*gameServer{}} }

// attach makes g reachable at its address.
func (n *network) attach(g *gameServer) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.servers[g.name] = g
}

// detach makes g unreachable, unless another server took its address since.
func (n *network) detach(g *gameServer) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.servers[g.name] == g {
		delete(n.servers, g.name)
	}
}

// dial returns the game server listening at addr.
func (n *network) dial(addr string) (*gameServer, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	g, ok := n.servers[addr]
	return g, ok
}
