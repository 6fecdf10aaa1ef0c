package redistest

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterSlots is the number of hash slots of a Redis Cluster.
const clusterSlots = 16384

// ClusterOptions configures StartCluster and NewCluster. Zero fields take the defaults.
type ClusterOptions struct {
	// Masters is the number of masters, default 3; redis-cli cannot create
	// a cluster with fewer than 3.
	Masters int
	// Replicas is the number of replicas per master, default 0.
	Replicas int
	// NodeTimeout is cluster-node-timeout, default 3s.
	NodeTimeout time.Duration
}

// Cluster is a real Redis Cluster of Masters*(1+Replicas) redis-server
// nodes on 127.0.0.1.
type Cluster struct {
	opts  ClusterOptions
	nodes []*Server
}

// StartCluster starts Masters*(1+Replicas) nodes with cluster mode enabled,
// each with an explicit cluster bus port of its own, joins them with
// `redis-cli --cluster create ... --cluster-replicas N --cluster-yes`, and
// waits until every node reports cluster_state:ok and all 16384 slots are
// covered. Cleanup closes the cluster (kills every node and removes their
// dirs). It needs redis-cli on PATH as well (skips or fails t like Require).
// It is NewCluster for a testing.TB.
func StartCluster(t testing.TB, opts ClusterOptions) *Cluster {
	t.Helper()
	c, err := NewCluster(opts)
	SkipOrFatal(t, err)
	t.Cleanup(func() { closeAtCleanup(t, c) })
	return c
}

// NewCluster starts a cluster like StartCluster but with no testing.TB: the
// caller must Close it. The error matches ErrMissing when redis-server or
// redis-cli is not on PATH; on any error nothing is left running.
func NewCluster(opts ClusterOptions) (*Cluster, error) {
	bin, err := lookBinary("redis-server")
	if err != nil {
		return nil, err
	}
	cli, err := lookBinary("redis-cli")
	if err != nil {
		return nil, err
	}
	if opts.Masters == 0 {
		opts.Masters = 3
	}
	if opts.NodeTimeout == 0 {
		opts.NodeTimeout = 3 * time.Second
	}
	if opts.Masters < 3 || opts.Replicas < 0 || opts.NodeTimeout < time.Millisecond {
		return nil, fmt.Errorf("redistest: StartCluster: invalid options %+v (need Masters >= 3, Replicas >= 0, NodeTimeout >= 1ms)", opts)
	}
	c := &Cluster{opts: opts}
	if err := c.start(bin, cli); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// start starts the nodes, joins them and waits until the cluster is healthy.
func (c *Cluster) start(bin, cli string) error {
	n := c.opts.Masters * (1 + c.opts.Replicas)
	for i := 0; i < n; i++ {
		s, err := newServer(bin, fmt.Sprintf("cluster-node-%d", i), modeCluster, ServerOptions{}, nil)
		if err != nil {
			return err
		}
		s.nodeTimeout = c.opts.NodeTimeout
		c.nodes = append(c.nodes, s) // closed by Close from now on
		if err := s.startFirst(); err != nil {
			return err
		}
	}

	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", strconv.Itoa(c.opts.Replicas), "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, cli, args...)
	cmd.SysProcAttr = sysProcAttr()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("redistest: %s %s: %v\n%s\n%s", cli, strings.Join(args, " "), err, out, c.logTails())
	}
	return c.waitHealthy()
}

// Close kills every node (even frozen ones), waits until they have exited
// and removes their directories. It is idempotent.
func (c *Cluster) Close() error {
	var errs []error
	for i := len(c.nodes) - 1; i >= 0; i-- {
		errs = append(errs, c.nodes[i].Close())
	}
	return errors.Join(errs...)
}

// Addrs returns the "127.0.0.1:port" address of every node, live or not,
// in start order.
func (c *Cluster) Addrs() []string {
	a := make([]string, len(c.nodes))
	for i, s := range c.nodes {
		a[i] = s.Addr()
	}
	return a
}

// Nodes returns every node in start order (roles change with failovers).
func (c *Cluster) Nodes() []*Server {
	return append([]*Server(nil), c.nodes...)
}

// Client returns a go-redis ClusterClient seeded with every node address,
// with go-redis defaults modified by opts, closed at t's cleanup.
func (c *Cluster) Client(t testing.TB, opts ...func(*redis.ClusterOptions)) *redis.ClusterClient {
	t.Helper()
	o := &redis.ClusterOptions{Addrs: c.Addrs()}
	for _, f := range opts {
		f(o)
	}
	cc := redis.NewClusterClient(o)
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// WaitHealthy polls until every live (running, not frozen) node reports
// cluster_state:ok with 16384 slots ok, and all of them agree on a slot map
// in which every slot is served by a live master. It fails t after a
// deadline of 30s plus 5 node timeouts.
func (c *Cluster) WaitHealthy(t testing.TB) {
	t.Helper()
	if err := c.waitHealthy(); err != nil {
		t.Fatal(err)
	}
}

func (c *Cluster) waitHealthy() error {
	timeout := 30*time.Second + 5*c.opts.NodeTimeout
	if err := poll(timeout, c.healthy); err != nil {
		return fmt.Errorf("redistest: cluster not healthy: %v\n%s", err, c.logTails())
	}
	return nil
}

// MasterForKey returns the node serving key's slot now: CLUSTER KEYSLOT,
// then the slot owner in CLUSTER SLOTS of the live nodes, confirmed by the
// owner's own view. It polls while the cluster is changing and fails t
// after a deadline.
func (c *Cluster) MasterForKey(t testing.TB, key string) *Server {
	t.Helper()
	var found *Server
	err := poll(waitTimeout+2*c.opts.NodeTimeout, func() error {
		live := c.liveNodes()
		if len(live) == 0 {
			return errors.New("no live node")
		}
		ctx, cancel := ctxTimeout(2 * time.Second)
		defer cancel()
		var slot int64 = -1
		var lastErr error
		for _, s := range live {
			cl := s.admin()
			v, err := cl.ClusterKeySlot(ctx, key).Result()
			cl.Close()
			if err == nil {
				slot = v
				break
			}
			lastErr = err
		}
		if slot < 0 {
			return fmt.Errorf("CLUSTER KEYSLOT: %v", lastErr)
		}
		for _, s := range live {
			owner, err := slotOwner(ctx, s, int(slot))
			if err != nil {
				lastErr = err
				continue
			}
			cand := c.byAddr(owner)
			if cand == nil || !cand.live() {
				lastErr = fmt.Errorf("%s: slot %d served by %s, which is not a live node", s, slot, owner)
				continue
			}
			self, err := slotOwner(ctx, cand, int(slot))
			if err != nil {
				lastErr = err
				continue
			}
			if self != owner {
				lastErr = fmt.Errorf("slot %d: %s says %s, %s says %s", slot, s, owner, cand, self)
				continue
			}
			found = cand
			return nil
		}
		return lastErr
	})
	if err != nil {
		t.Fatalf("redistest: MasterForKey(%q): %v", key, err)
	}
	return found
}

func (c *Cluster) liveNodes() []*Server {
	var live []*Server
	for _, s := range c.nodes {
		if s.live() {
			live = append(live, s)
		}
	}
	return live
}

func (c *Cluster) byAddr(addr string) *Server {
	for _, s := range c.nodes {
		if s.Addr() == addr {
			return s
		}
	}
	return nil
}

// slotMap returns the master address for every slot as s sees it ("" for
// an uncovered slot).
func slotMap(ctx context.Context, s *Server) ([]string, error) {
	cl := s.admin()
	defer cl.Close()
	ranges, err := cl.ClusterSlots(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("%s: CLUSTER SLOTS: %v", s, err)
	}
	m := make([]string, clusterSlots)
	for _, r := range ranges {
		if len(r.Nodes) == 0 || r.Start < 0 || r.End >= clusterSlots || r.Start > r.End {
			return nil, fmt.Errorf("%s: bad CLUSTER SLOTS range %+v", s, r)
		}
		for i := r.Start; i <= r.End; i++ {
			m[i] = r.Nodes[0].Addr
		}
	}
	return m, nil
}

func slotOwner(ctx context.Context, s *Server, slot int) (string, error) {
	m, err := slotMap(ctx, s)
	if err != nil {
		return "", err
	}
	if m[slot] == "" {
		return "", fmt.Errorf("%s: slot %d not covered", s, slot)
	}
	return m[slot], nil
}

// healthy returns nil when the cluster is healthy as WaitHealthy defines it.
func (c *Cluster) healthy() error {
	live := c.liveNodes()
	if len(live) == 0 {
		return errors.New("no live node")
	}
	liveAddr := map[string]bool{}
	for _, s := range live {
		liveAddr[s.Addr()] = true
	}
	ctx, cancel := ctxTimeout(5 * time.Second)
	defer cancel()
	var ref []string
	var refNode *Server
	for _, s := range live {
		cl := s.admin()
		txt, err := cl.ClusterInfo(ctx).Result()
		cl.Close()
		if err != nil {
			return fmt.Errorf("%s: CLUSTER INFO: %v", s, err)
		}
		info := parseInfo(txt)
		if info["cluster_state"] != "ok" {
			return fmt.Errorf("%s: cluster_state:%s", s, info["cluster_state"])
		}
		want := strconv.Itoa(clusterSlots)
		if info["cluster_slots_assigned"] != want || info["cluster_slots_ok"] != want {
			return fmt.Errorf("%s: cluster_slots_assigned:%s cluster_slots_ok:%s", s, info["cluster_slots_assigned"], info["cluster_slots_ok"])
		}
		m, err := slotMap(ctx, s)
		if err != nil {
			return err
		}
		for slot, owner := range m {
			if owner == "" {
				return fmt.Errorf("%s: slot %d not covered", s, slot)
			}
			if !liveAddr[owner] {
				return fmt.Errorf("%s: slot %d served by %s, which is not a live node", s, slot, owner)
			}
		}
		if ref == nil {
			ref, refNode = m, s
			continue
		}
		for slot := range m {
			if m[slot] != ref[slot] {
				return fmt.Errorf("slot %d: %s says %s, %s says %s", slot, refNode, ref[slot], s, m[slot])
			}
		}
	}
	return nil
}

// logTails returns the log tail of every node, for failure messages.
func (c *Cluster) logTails() string {
	var b strings.Builder
	for _, s := range c.nodes {
		fmt.Fprintf(&b, "--- %s (%s) ---\n%s\n", s, s.log, tail(s.log, 0, 15))
	}
	return b.String()
}
