package svcwatchkratos_test

// kratos_test.go: kratos gRPC servers registering through the Registry and a
// kratos client calling them by a discovery:/// endpoint.

import (
	"context"
	"fmt"
	"testing"
	"time"

	kgrpc "github.com/go-kratos/kratos/v2/transport/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/svcwatch/svcwatch/internal/redistest"
)

// spread makes n calls and counts them by answering server.
func spread(ctx context.Context, c testpb.TestServiceClient, n int) (map[string]int, error) {
	got := map[string]int{}
	for i := 0; i < n; i++ {
		resp, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
		if err != nil {
			return got, err
		}
		got[resp.GetServerId()]++
	}
	return got, nil
}

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

func TestKratosClientFollowsServers(t *testing.T) {
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	ctx := context.Background()
	a1 := startApp(t, srv, "login", "v1", "login-1")

	// The client is another process: a Registry of its own.
	conn, err := kgrpc.DialInsecure(ctx,
		kgrpc.WithEndpoint("discovery:///login"),
		kgrpc.WithDiscovery(newRegistry(t, srv)),
		kgrpc.WithPrintDiscoveryDebugLog(false),
		kgrpc.WithTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	c := testpb.NewTestServiceClient(conn)

	eventually(t, "calls reach login-1", func() error {
		got, err := spread(ctx, c, 10)
		if err != nil {
			return err
		}
		return exactly(got, "login-1")
	})

	// A second server (another version: the client watches them all) joins.
	startApp(t, srv, "login", "v2", "login-2")
	took := eventually(t, "calls reach login-2 too", func() error {
		got, err := spread(ctx, c, 40)
		if err != nil {
			return err
		}
		return exactly(got, "login-1", "login-2")
	})
	t.Logf("join: login-2 got calls %v after it registered", took)

	// The first one stops: deregistered, then its server stops gracefully.
	a1.stop(t)
	took = eventually(t, "login-1 gets no calls", func() error {
		got, err := spread(ctx, c, 20)
		if err != nil {
			return err
		}
		return exactly(got, "login-2")
	})
	t.Logf("stop: calls avoid login-1 %v after it stopped", took)
	for i := 0; i < 20; i++ {
		if _, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
			t.Fatalf("a call failed after login-1 stopped: %v", err)
		}
	}
}
