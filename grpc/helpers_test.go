package svcwatchgrpc_test

// helpers_test.go: real grpc-go servers registered through svcwatch on a real
// redis-server, and a client's view of which server answered.

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/svcwatch/svcwatch"
	svcwatchgrpc "github.com/svcwatch/svcwatch/grpc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const wait = 15 * time.Second // generous deadline of every poll

// fast are the options of every watcher here: a short TTL and scan, so that
// nothing in a test waits on the defaults.
func fast() []svcwatch.Option {
	return []svcwatch.Option{
		svcwatch.WithTTL(2 * time.Second),
		svcwatch.WithKeepAliveInterval(300 * time.Millisecond),
		svcwatch.WithScanInterval(300 * time.Millisecond),
	}
}

func startWatcher(t *testing.T, client redis.UniversalClient, self svcwatch.Instance, opts ...svcwatch.Option) *svcwatch.RedisServiceWatcher {
	t.Helper()
	w, err := svcwatch.NewRedisServiceWatcher(client, self, append(fast(), opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Stop(context.Background()) })
	return w
}

// server is one game-side process: a grpc-go server on loopback that answers
// with its ID, registered in a table through its own watcher.
type server struct {
	testpb.UnimplementedTestServiceServer
	id    string
	addr  string
	grpc  *grpc.Server
	w     *svcwatch.RedisServiceWatcher
	calls atomic.Int64
}

// startServer listens on addr ("127.0.0.1:0" for a free port), serves and
// registers as id in table. It is stopped at the end of t.
func startServer(t *testing.T, client redis.UniversalClient, table, id, addr string) *server {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{id: id, addr: lis.Addr().String(), grpc: grpc.NewServer()}
	testpb.RegisterTestServiceServer(s.grpc, s)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = s.grpc.Serve(lis)
	}()
	t.Cleanup(func() {
		s.grpc.Stop()
		<-served
	})
	s.w = startWatcher(t, client, svcwatch.Instance{Table: table, ID: id, Name: s.addr})
	return s
}

// stop deregisters the server, then stops serving (its open streams end).
func (s *server) stop(t *testing.T) {
	t.Helper()
	if err := s.w.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.grpc.Stop()
}

func (s *server) UnaryCall(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.calls.Add(1)
	return &testpb.SimpleResponse{ServerId: s.id}, nil
}

// FullDuplexCall answers each message with the server's ID, until the
// client closes its side.
func (s *server) FullDuplexCall(stream testpb.TestService_FullDuplexCallServer) error {
	for {
		if _, err := stream.Recv(); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: []byte(s.id)}}); err != nil {
			return err
		}
	}
}

// dial opens a ClientConn on target through b with the given service config.
func dial(t *testing.T, b *svcwatchgrpc.Builder, target, serviceConfig string) testpb.TestServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(target,
		grpc.WithResolvers(b),
		grpc.WithDefaultServiceConfig(serviceConfig),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return testpb.NewTestServiceClient(cc)
}

// call makes one unary call (waiting for a ready server) and returns the ID
// of the server that answered.
func call(ctx context.Context, c testpb.TestServiceClient, opts ...grpc.CallOption) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}, append(opts, grpc.WaitForReady(true))...)
	if err != nil {
		return "", err
	}
	return resp.GetServerId(), nil
}

// eventually polls f until it returns nil, failing t after wait.
func eventually(t *testing.T, what string, f func() error) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(wait)
	for {
		err := f()
		if err == nil {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not so after %v: %v", what, wait, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// spread makes n calls and counts them by answering server.
func spread(ctx context.Context, c testpb.TestServiceClient, n int) (map[string]int, error) {
	got := map[string]int{}
	for i := 0; i < n; i++ {
		id, err := call(ctx, c)
		if err != nil {
			return got, err
		}
		got[id]++
	}
	return got, nil
}

// exactly returns an error unless the calls reached exactly the servers ids.
func exactly(got map[string]int, ids ...string) error {
	if len(got) != len(ids) {
		return fmt.Errorf("calls reached %v, want exactly %v", got, ids)
	}
	for _, id := range ids {
		if got[id] == 0 {
			return fmt.Errorf("calls reached %v, want exactly %v", got, ids)
		}
	}
	return nil
}
