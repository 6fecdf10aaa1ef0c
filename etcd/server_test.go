package etcd

// server_test.go: the embedded etcd server the tests run against (loopback,
// free ports, a temporary directory), clients for it, and the check that no
// goroutine of a watcher outlives a test.

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// waitTimeout bounds every wait of these tests: generous, because CI machines
// are shared; nothing asserts how fast things are.
const waitTimeout = 15 * time.Second

// server is one embedded etcd member that a test can stop and start again on
// the same ports and data directory.
type server struct {
	t                  testing.TB
	dir                string
	clientURL, peerURL url.URL
	e                  *embed.Etcd
}

// startServer starts an embedded etcd on free loopback ports, closed at
// cleanup. Its ticks are short (10ms heartbeat, 100ms election) so that a
// 1s lease is accepted and expiries are noticed quickly.
func startServer(t testing.TB) *server {
	t.Helper()
	s := &server{t: t, dir: t.TempDir()}
	var err error
	for try := 0; try < 5; try++ {
		s.clientURL, s.peerURL = freeURL(t), freeURL(t)
		if err = s.start(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("start embedded etcd: %v", err)
	}
	t.Cleanup(s.stop)
	return s
}

func freeURL(t testing.TB) url.URL {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return url.URL{Scheme: "http", Host: l.Addr().String()}
}

func (s *server) start() error {
	cfg := embed.NewConfig()
	cfg.Name = "svcwatch-test"
	cfg.Dir = s.dir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{s.clientURL}, []url.URL{s.clientURL}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{s.peerURL}, []url.URL{s.peerURL}
	cfg.InitialCluster = cfg.Name + "=" + s.peerURL.String()
	cfg.TickMs, cfg.ElectionMs = 10, 100
	cfg.GRPCKeepAliveMinTime = 100 * time.Millisecond
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return err
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(waitTimeout):
		e.Close()
		return fmt.Errorf("embedded etcd not ready within %v", waitTimeout)
	}
	s.e = e
	return nil
}

// stop stops the member (its data stays). Idempotent.
func (s *server) stop() {
	if s.e != nil {
		s.e.Close()
		s.e = nil
	}
}

// restart starts the member again on its ports and data.
func (s *server) restart() {
	s.t.Helper()
	var err error
	deadline := time.Now().Add(waitTimeout)
	for {
		if err = s.start(); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // the old listener may linger for a moment
	}
	if err != nil {
		s.t.Fatalf("restart embedded etcd: %v", err)
	}
}

// addr is the client address, host:port.
func (s *server) addr() string { return s.clientURL.Host }

// newClient returns a client of endpoint with settings for tests: quick
// reconnects, quiet logs. Closed at cleanup.
func newClient(t testing.TB, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 2 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 500 * time.Millisecond},
			MinConnectTimeout: time.Second,
		})},
	})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// checkGoroutines fails t if a goroutine of a watcher (this package's or the
// core's event goroutine) outlives the test. Call it first, so that its
// cleanup runs after every other. The embedded server's and the clients'
// own goroutines are not this package's to judge.
func checkGoroutines(t *testing.T) {
	t.Cleanup(func() {
		deadline := time.Now().Add(waitTimeout)
		for {
			left := ourGoroutines()
			if left == "" {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("goroutines of a watcher outlived the test:\n%s", left)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

func ourGoroutines() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var left []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "checkGoroutines") || strings.Contains(g, "ourGoroutines") {
			continue
		}
		if strings.Contains(g, "svcwatch/etcd.(*EtcdServiceWatcher)") ||
			strings.Contains(g, "svcwatch/etcd.(*keepalive)") ||
			strings.Contains(g, "svcwatch.(*dispatcher).run") {
			left = append(left, g)
		}
	}
	return strings.Join(left, "\n\n")
}

// ctxT returns a context bounded by waitTimeout, canceled at cleanup.
func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}
