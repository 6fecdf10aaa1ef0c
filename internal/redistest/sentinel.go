package redistest

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Sentinel is one master, one replica and one redis-sentinel process
// monitoring them, all on 127.0.0.1.
type Sentinel struct {
	name     string
	servers  []*Server // the master and the replica, in start order
	sentinel *Server
}

// failoverTimeout bounds each wait of Failover and StartSentinel (NewSentinel).
const failoverTimeout = 30 * time.Second

// StartSentinel starts a master, a replica of it and a sentinel (redis-server
// --sentinel) with `sentinel monitor <masterName> 127.0.0.1 <port> 1`,
// down-after-milliseconds 1000 and failover-timeout 5000, then waits until the
// sentinel reports the master, the replica is in sync, and the sentinel sees
// the replica as a healthy promotion candidate. Cleanup closes the setup
// (kills all three, the sentinel first). It is NewSentinel for a testing.TB.
func StartSentinel(t testing.TB, masterName string) *Sentinel {
	t.Helper()
	s, err := NewSentinel(masterName)
	SkipOrFatal(t, err)
	t.Cleanup(func() { closeAtCleanup(t, s) })
	return s
}

// NewSentinel starts a master, a replica and a sentinel like StartSentinel
// but with no testing.TB: the caller must Close them. The error matches
// ErrMissing when redis-server is not on PATH; on any error nothing is left
// running.
func NewSentinel(masterName string) (*Sentinel, error) {
	bin, err := lookBinary("redis-server")
	if err != nil {
		return nil, err
	}
	if masterName == "" || strings.ContainsAny(masterName, " \t\r\n\"'") {
		return nil, fmt.Errorf("redistest: StartSentinel: bad master name %q", masterName)
	}
	s := &Sentinel{name: masterName}
	if err := s.start(bin); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

// start starts the three processes and waits until the setup is ready.
func (s *Sentinel) start(bin string) error {
	master, err := newServer(bin, "sentinel-master", modeStandalone, ServerOptions{}, nil)
	if err != nil {
		return err
	}
	s.servers = append(s.servers, master) // closed by Close from now on
	if err := master.startFirst(); err != nil {
		return err
	}
	replica, err := newServer(bin, "sentinel-replica", modeStandalone, ServerOptions{},
		[]string{fmt.Sprintf("replicaof 127.0.0.1 %d", master.Port())})
	if err != nil {
		return err
	}
	s.servers = append(s.servers, replica)
	if err := replica.startFirst(); err != nil {
		return err
	}
	sn, err := newServer(bin, "redis-sentinel", modeSentinel, ServerOptions{}, []string{
		fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d 1", s.name, master.Port()),
		fmt.Sprintf("sentinel down-after-milliseconds %s 1000", s.name),
		fmt.Sprintf("sentinel failover-timeout %s 5000", s.name),
	})
	if err != nil {
		return err
	}
	s.sentinel = sn
	if err := sn.startFirst(); err != nil {
		return err
	}

	err = poll(failoverTimeout, func() error {
		addr, err := s.masterAddr()
		if err != nil {
			return err
		}
		if addr != master.Addr() {
			return fmt.Errorf("sentinel reports master %s, want %s", addr, master.Addr())
		}
		info, err := replica.info("replication")
		if err != nil {
			return fmt.Errorf("%s: %v", replica, err)
		}
		if info["role"] != "slave" || info["master_link_status"] != "up" {
			return fmt.Errorf("%s: role:%s master_link_status:%s", replica, info["role"], info["master_link_status"])
		}
		return s.goodReplica(master.Addr())
	})
	if err != nil {
		return fmt.Errorf("redistest: StartSentinel: %v\n%s", err, s.logTails())
	}
	return nil
}

// Close kills the sentinel, then the two data servers (even frozen ones),
// waits until they have exited and removes their directories. It is
// idempotent.
func (s *Sentinel) Close() error {
	var errs []error
	if s.sentinel != nil {
		errs = append(errs, s.sentinel.Close())
	}
	for i := len(s.servers) - 1; i >= 0; i-- {
		errs = append(errs, s.servers[i].Close())
	}
	return errors.Join(errs...)
}

// SentinelAddr returns the sentinel's "127.0.0.1:port".
func (s *Sentinel) SentinelAddr() string { return s.sentinel.Addr() }

// MasterName returns the monitored master's name.
func (s *Sentinel) MasterName() string { return s.name }

// Servers returns the two data servers in start order (initially master,
// then replica; roles change with failovers).
func (s *Sentinel) Servers() []*Server { return append([]*Server(nil), s.servers...) }

// SentinelServer returns the sentinel process itself.
func (s *Sentinel) SentinelServer() *Server { return s.sentinel }

// Master returns the current master as the sentinel reports it
// (SENTINEL get-master-addr-by-name); it fails t if the sentinel cannot
// answer or names an unknown node.
func (s *Sentinel) Master(t testing.TB) *Server {
	t.Helper()
	addr, err := s.masterAddr()
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	m := s.byAddr(addr)
	if m == nil {
		t.Fatalf("redistest: sentinel reports unknown master %s", addr)
	}
	return m
}

// Failover waits until the sentinel has a healthy replica to promote, runs
// SENTINEL FAILOVER <name> (retrying while the sentinel refuses), then polls
// until the sentinel reports the other node as master and that node answers
// ROLE as master. The old master, if still running, is then told
// REPLICAOF the new one (what the sentinel itself would do some seconds
// later), so repeated failovers work.
func (s *Sentinel) Failover(t testing.TB) {
	t.Helper()
	old, err := s.masterAddr()
	if err != nil {
		t.Fatalf("redistest: Failover: %v", err)
	}
	sc := redis.NewSentinelClient(adminOptions(s.SentinelAddr()))
	defer sc.Close()
	err = poll(failoverTimeout, func() error {
		if err := s.goodReplica(old); err != nil {
			return err
		}
		ctx, cancel := ctxTimeout(5 * time.Second)
		defer cancel()
		if err := sc.Failover(ctx, s.name).Err(); err != nil {
			return fmt.Errorf("SENTINEL FAILOVER %s: %v", s.name, err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("redistest: Failover: %v\n%s", err, s.logTails())
	}
	var newMaster *Server
	err = poll(failoverTimeout, func() error {
		addr, err := s.masterAddr()
		if err != nil {
			return err
		}
		if addr == old {
			return fmt.Errorf("sentinel still reports master %s", old)
		}
		m := s.byAddr(addr)
		if m == nil {
			return fmt.Errorf("sentinel reports unknown master %s", addr)
		}
		role, err := m.role()
		if err != nil {
			return fmt.Errorf("%s: ROLE: %v", m, err)
		}
		if role != "master" {
			return fmt.Errorf("%s: ROLE %s", m, role)
		}
		newMaster = m
		return nil
	})
	if err != nil {
		t.Fatalf("redistest: Failover: %v\n%s", err, s.logTails())
	}
	if oldSrv := s.byAddr(old); oldSrv != nil && oldSrv.live() {
		ctx, cancel := ctxTimeout(5 * time.Second)
		defer cancel()
		// Best effort: the sentinel converts it later in any case.
		_, _ = oldSrv.adminDo(ctx, "REPLICAOF", "127.0.0.1", strconv.Itoa(newMaster.Port()))
	}
}

// Client returns a go-redis failover client (redis.NewFailoverClient) for
// the master, with go-redis defaults modified by opts, closed at t's
// cleanup.
func (s *Sentinel) Client(t testing.TB, opts ...func(*redis.FailoverOptions)) *redis.Client {
	t.Helper()
	o := &redis.FailoverOptions{MasterName: s.name, SentinelAddrs: []string{s.SentinelAddr()}}
	for _, f := range opts {
		f(o)
	}
	c := redis.NewFailoverClient(o)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func (s *Sentinel) masterAddr() (string, error) {
	sc := redis.NewSentinelClient(adminOptions(s.SentinelAddr()))
	defer sc.Close()
	ctx, cancel := ctxTimeout(2 * time.Second)
	defer cancel()
	a, err := sc.GetMasterAddrByName(ctx, s.name).Result()
	if err != nil {
		return "", fmt.Errorf("SENTINEL get-master-addr-by-name %s: %v", s.name, err)
	}
	if len(a) != 2 {
		return "", fmt.Errorf("SENTINEL get-master-addr-by-name %s: %v", s.name, a)
	}
	return net.JoinHostPort(a[0], a[1]), nil
}

// goodReplica returns nil when the sentinel lists a replica other than
// master that is connected, not down and linked to its master.
func (s *Sentinel) goodReplica(master string) error {
	sc := redis.NewSentinelClient(adminOptions(s.SentinelAddr()))
	defer sc.Close()
	ctx, cancel := ctxTimeout(2 * time.Second)
	defer cancel()
	reps, err := sc.Replicas(ctx, s.name).Result()
	if err != nil {
		return fmt.Errorf("SENTINEL REPLICAS %s: %v", s.name, err)
	}
	for _, r := range reps {
		addr := net.JoinHostPort(r["ip"], r["port"])
		if addr != master && r["flags"] == "slave" && r["master-link-status"] == "ok" {
			return nil
		}
	}
	return fmt.Errorf("sentinel knows no healthy replica yet: %v", reps)
}

func (s *Sentinel) byAddr(addr string) *Server {
	for _, srv := range s.servers {
		if srv.Addr() == addr {
			return srv
		}
	}
	return nil
}

func (s *Sentinel) logTails() string {
	var b strings.Builder
	for _, srv := range append(s.Servers(), s.sentinel) {
		fmt.Fprintf(&b, "--- %s (%s) ---\n%s\n", srv, srv.log, tail(srv.log, 0, 20))
	}
	return b.String()
}
