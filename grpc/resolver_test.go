package svcwatchgrpc_test

// resolver_test.go: ClientConns on svcwatch:/// targets against real grpc-go
// servers registered on a real redis-server.

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	_ "google.golang.org/grpc/balancer/ringhash" // registers ring_hash_experimental
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"

	"github.com/svcwatch/svcwatch"
	svcwatchgrpc "github.com/svcwatch/svcwatch/grpc"
	"github.com/svcwatch/svcwatch/internal/redistest"
)

const roundRobin = `{"loadBalancingConfig":[{"round_robin":{}}]}`

// client starts a watch-only watcher (a gateway's), then a Builder over it,
// as a user with a watcher of their own does; the Builder is closed at the
// end of t, before the watcher stops.
func client(t *testing.T, srv *redistest.Server, table string, opts ...svcwatch.Option) (*svcwatchgrpc.Builder, *svcwatch.RedisServiceWatcher) {
	t.Helper()
	w := startWatcher(t, srv.Client(t), svcwatch.Instance{Table: table},
		append([]svcwatch.Option{svcwatch.WatchOnly()}, opts...)...)
	b := svcwatchgrpc.NewBuilder(w)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := b.Close(ctx); err != nil {
			t.Error(err)
		}
	})
	return b, w
}

func TestRoundRobinFollowsTheTable(t *testing.T) {
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	login := svcwatch.Path("grpctest", "prod", "v1", "login")
	s1 := startServer(t, srv.Client(t), login, "login-1", "127.0.0.1:0")
	s2 := startServer(t, srv.Client(t), login, "login-2", "127.0.0.1:0")
	s3 := startServer(t, srv.Client(t), login, "login-3", "127.0.0.1:0")

	b, gate := client(t, srv, svcwatch.Path("grpctest", "prod", "v1", "gate"))
	c := dial(t, b, "svcwatch:///"+login, roundRobin)
	ctx := context.Background()

	eventually(t, "calls reach all three", func() error {
		got, err := spread(ctx, c, 30)
		if err != nil {
			return err
		}
		return exactly(got, "login-1", "login-2", "login-3")
	})
	if !slices.Contains(gate.Tables(), login) {
		t.Fatalf("the builder did not watch %s: the gate watches %v", login, gate.Tables())
	}

	// A stream open on login-2 before it drains.
	var stream testpb.TestService_FullDuplexCallClient
	eventually(t, "a stream on login-2", func() error {
		st, err := c.FullDuplexCall(ctx)
		if err != nil {
			return err
		}
		if id, err := roundTrip(st); err != nil || id != "login-2" {
			_ = st.CloseSend()
			_, _ = st.Recv()
			return fmt.Errorf("stream answered by %q (%v)", id, err)
		}
		stream = st
		return nil
	})

	// Draining: no new calls; the open stream goes on.
	drainedAt := time.Now()
	if err := s2.w.SetState(ctx, svcwatch.Draining); err != nil {
		t.Fatal(err)
	}
	took := eventually(t, "login-2 draining gets no new calls", func() error {
		got, err := spread(ctx, c, 30)
		if err != nil {
			return err
		}
		return exactly(got, "login-1", "login-3")
	})
	t.Logf("draining: new calls avoid login-2 %v after SetState (settled within %v)", took, time.Since(drainedAt))
	if id, err := roundTrip(stream); err != nil || id != "login-2" {
		t.Fatalf("the stream open on login-2 was cut by its draining: answered by %q, %v", id, err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}

	// Stopping: its calls go to the others, none fails.
	s1.stop(t)
	took = eventually(t, "login-1 stopped gets no calls", func() error {
		got, err := spread(ctx, c, 30)
		if err != nil {
			return err
		}
		return exactly(got, "login-3")
	})
	t.Logf("stop: calls avoid login-1 %v after it stopped", took)
	before := s1.calls.Load()
	for i := 0; i < 30; i++ {
		if _, err := call(ctx, c); err != nil {
			t.Fatalf("a call failed after login-1 stopped: %v", err)
		}
	}
	if n := s1.calls.Load(); n != before {
		t.Fatalf("login-1 got %d calls after it stopped", n-before)
	}

	// Starting: a new server gets calls; login-2 serving again gets them back.
	startServer(t, srv.Client(t), login, "login-4", "127.0.0.1:0")
	if err := s2.w.SetState(ctx, svcwatch.Serving); err != nil {
		t.Fatal(err)
	}
	took = eventually(t, "login-4 started gets calls", func() error {
		got, err := spread(ctx, c, 30)
		if err != nil {
			return err
		}
		return exactly(got, "login-2", "login-3", "login-4")
	})
	t.Logf("start: login-4 got calls %v after it registered", took)
	_ = s3
}

// roundTrip sends one message on a stream and returns the ID that answered.
func roundTrip(st testpb.TestService_FullDuplexCallClient) (string, error) {
	if err := st.Send(&testpb.StreamingOutputCallRequest{}); err != nil {
		return "", err
	}
	resp, err := st.Recv()
	if err != nil {
		return "", err
	}
	return string(resp.GetPayload().GetBody()), nil
}

func TestRingHashKeepsPlayersAcrossARestart(t *testing.T) {
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	game := svcwatch.Path("grpctest", "prod", "v1", "game")
	startServer(t, srv.Client(t), game, "game-1", "127.0.0.1:0")
	g2 := startServer(t, srv.Client(t), game, "game-2", "127.0.0.1:0")
	startServer(t, srv.Client(t), game, "game-3", "127.0.0.1:0")

	b, _ := client(t, srv, svcwatch.Path("grpctest", "prod", "v1", "gate"))
	c := dial(t, b, "svcwatch:///"+game,
		`{"loadBalancingConfig":[{"ring_hash_experimental":{"requestHashHeader":"x-player-id"}}]}`)
	ctx := context.Background()
	as := func(player string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "x-player-id", player)
	}

	const players = 300
	owner := map[string]string{}
	counts := map[string]int{}
	eventually(t, "every server ready and owning players", func() error {
		clear(owner)
		clear(counts)
		for i := 0; i < players; i++ {
			p := fmt.Sprintf("player-%d", i)
			id, err := call(as(p), c)
			if err != nil {
				return err
			}
			owner[p] = id
			counts[id]++
		}
		if len(counts) != 3 {
			return fmt.Errorf("owners %v, want all three servers", counts)
		}
		return nil
	})
	t.Logf("owners of %d players: %v", players, counts)
	// The same player keeps its server while nothing changes.
	for p, id := range owner {
		for i := 0; i < 3; i++ {
			if got, err := call(as(p), c); err != nil || got != id {
				t.Fatalf("%s went to %s (%v), then to %s", p, id, err, got)
			}
		}
	}

	// game-2 restarts on another port. While it is away its players go
	// elsewhere, and grpc-go's ring_hash, which rebuilds the ring with
	// ceil(minRingSize/N) entries per endpoint, moves a few players of the
	// others too (counted below, not asserted). Once it is back every player
	// is where it was: the ring key is the ID, not the address.
	g2.stop(t)
	moved := map[string]bool{}
	eventually(t, "game-2 gone", func() error {
		for p, id := range owner {
			if id != "game-2" {
				continue
			}
			if got, err := call(as(p), c); err != nil || got == "game-2" {
				return fmt.Errorf("%s still answered by %q (%v)", p, got, err)
			}
		}
		return nil
	})
	others := 0
	for p, id := range owner {
		if id == "game-2" {
			continue
		}
		others++
		got, err := call(as(p), c)
		if err != nil {
			t.Fatalf("a call of %s failed while game-2 was down: %v", p, err)
		}
		if got != id {
			moved[p] = true
		}
	}
	t.Logf("while game-2 was down, %d of the other servers' %d players moved to a third server (grpc-go ring_hash rebuilds its ring)", len(moved), others)
	g2 = startServer(t, srv.Client(t), game, "game-2", "127.0.0.1:0")
	took := eventually(t, "every player back on its server", func() error {
		for p, id := range owner {
			if got, err := call(as(p), c); err != nil || got != id {
				return fmt.Errorf("%s answered by %q (%v), want %s (game-2 now at %s)", p, got, err, id, g2.addr)
			}
		}
		return nil
	})
	t.Logf("every player was back on its own server %v after game-2 registered again", took)
}

func TestBuilderUnwatchesWhatItWatched(t *testing.T) {
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	login := svcwatch.Path("grpctest", "prod", "v1", "login")
	chat := svcwatch.Path("grpctest", "prod", "v1", "chat")
	startServer(t, srv.Client(t), login, "login-1", "127.0.0.1:0")
	startServer(t, srv.Client(t), chat, "chat-1", "127.0.0.1:0")

	// The gate watches chat itself; login is the builder's to watch.
	b, gate := client(t, srv, svcwatch.Path("grpctest", "prod", "v1", "gate"), svcwatch.WithTables(chat))
	ctx := context.Background()
	open := func(table string) *grpc.ClientConn {
		cc, err := grpc.NewClient("svcwatch:///"+table, grpc.WithResolvers(b),
			grpc.WithDefaultServiceConfig(roundRobin), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := call(ctx, testpb.NewTestServiceClient(cc)); err != nil {
			t.Fatal(err)
		}
		return cc
	}
	watched := func(table string) bool { return slices.Contains(gate.Tables(), table) }

	a, bb, ch := open(login), open(login), open(chat)
	if !watched(login) || !watched(chat) {
		t.Fatalf("tables watched %v, want %s and %s", gate.Tables(), login, chat)
	}
	_ = a.Close()
	if err := b.Close(context.Background()); err != nil { // waits for any unwatch in flight
		t.Fatal(err)
	}
	if !watched(login) {
		t.Fatalf("%s unwatched while a ClientConn still uses it", login)
	}
	_ = ch.Close()
	_ = bb.Close()
	eventually(t, "login unwatched after its last ClientConn closed", func() error {
		if watched(login) {
			return fmt.Errorf("still watching %v", gate.Tables())
		}
		return nil
	})
	if !watched(chat) {
		t.Fatalf("the builder unwatched %s, which the gate watched itself: %v", chat, gate.Tables())
	}
	if got := gate.Services(login); len(got) != 0 {
		t.Fatalf("Services(%s) after unwatch = %v", login, got)
	}
}

// TestGlobalRegistration resolves through a Builder registered with
// resolver.Register under a scheme of its own, with no WithResolvers, on a
// watcher that already watches the table (and knows its peer when the
// Builder attaches); a server that joins later gets calls too.
func TestGlobalRegistration(t *testing.T) {
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	login := svcwatch.Path("grpctest", "prod", "v1", "login")
	startServer(t, srv.Client(t), login, "login-1", "127.0.0.1:0")
	gate := startWatcher(t, srv.Client(t), svcwatch.Instance{Table: svcwatch.Path("grpctest", "prod", "v1", "gate")},
		svcwatch.WatchOnly(), svcwatch.WithTables(login))
	b := svcwatchgrpc.NewBuilder(gate, svcwatchgrpc.WithScheme("svcwatch-global-test"))
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	resolver.Register(b) // before any ClientConn on the scheme, as grpc-go asks

	cc, err := grpc.NewClient("svcwatch-global-test:///"+login,
		grpc.WithDefaultServiceConfig(roundRobin), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	c := testpb.NewTestServiceClient(cc)
	ctx := context.Background()
	if id, err := call(ctx, c); err != nil || id != "login-1" {
		t.Fatalf("call through the registered scheme: answered by %q, %v", id, err)
	}
	startServer(t, srv.Client(t), login, "login-2", "127.0.0.1:0")
	took := eventually(t, "login-2 gets calls", func() error {
		got, err := spread(ctx, c, 20)
		if err != nil {
			return err
		}
		return exactly(got, "login-1", "login-2")
	})
	t.Logf("a server that joined got calls %v after it registered", took)
}
