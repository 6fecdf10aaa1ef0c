package svcwatchgrpc_test

// pick_balancer_test.go: the svcwatch_pick policy on ClientConns against real
// grpc-go servers registered on a real redis-server.

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/svcwatch/svcwatch"
	svcwatchgrpc "github.com/svcwatch/svcwatch/grpc"
	"github.com/svcwatch/svcwatch/internal/redistest"
)

const svcwatchPick = `{"loadBalancingConfig":[{"svcwatch_pick":{}}]}`

// players are the keys of the svcwatch_pick tests.
func players(n int) []string {
	ps := make([]string, n)
	for i := range ps {
		ps[i] = fmt.Sprintf("player-%d", i)
	}
	return ps
}

// asPlayer returns ctx with p as the call's key in header.
func asPlayer(ctx context.Context, header, p string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, header, p)
}

// pickOwners checks that every player's call is answered by w.Pick's owner
// of the player, and returns the owners.
func pickOwners(ctx context.Context, c testpb.TestServiceClient, w svcwatch.Watcher, table, header string, ps []string) (map[string]string, error) {
	owner := make(map[string]string, len(ps))
	for _, p := range ps {
		// The call first: the ClientConn's first call makes it resolve,
		// and so watch the table.
		got, err := call(asPlayer(ctx, header, p), c)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		want, ok := w.Pick(table, p)
		if !ok {
			return nil, fmt.Errorf("Pick(%s): nobody serves", p)
		}
		if got != want.ID {
			return nil, fmt.Errorf("%s answered by %s, Pick gives %s", p, got, want.ID)
		}
		owner[p] = got
	}
	return owner, nil
}

func count(owner map[string]string) map[string]int {
	n := map[string]int{}
	for _, id := range owner {
		n[id]++
	}
	return n
}

// moves calls every player and records each call of a player of a server
// other than away that another server answered; it returns the players of
// away not yet answered by want(p).
func moves(ctx context.Context, c testpb.TestServiceClient, owner map[string]string, away string, want func(p string) string, moved map[string]string) (pending int, err error) {
	for p, id := range owner {
		got, err := call(asPlayer(ctx, svcwatchgrpc.DefaultKeyHeader, p), c)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", p, err)
		}
		switch {
		case id != away && got != id:
			moved[p] = got
		case id == away && got != want(p):
			pending++
		}
	}
	return pending, nil
}

func TestPickKeepsPlayersAcrossARestart(t *testing.T) {
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	game := svcwatch.Path("grpctest", "prod", "v1", "game")
	startServer(t, srv.Client(t), game, "game-1", "127.0.0.1:0")
	g2 := startServer(t, srv.Client(t), game, "game-2", "127.0.0.1:0")
	startServer(t, srv.Client(t), game, "game-3", "127.0.0.1:0")
	b, w := client(t, srv, svcwatch.Path("grpctest", "prod", "v1", "gate"))
	c := dial(t, b, "svcwatch:///"+game, svcwatchPick)
	ctx := context.Background()
	ps := players(300)

	var owner map[string]string
	eventually(t, "every player on its Pick owner, all three servers owning players", func() (err error) {
		if owner, err = pickOwners(ctx, c, w, game, svcwatchgrpc.DefaultKeyHeader, ps); err != nil {
			return err
		}
		if n := count(owner); len(n) != 3 {
			return fmt.Errorf("owners %v, want all three servers", n)
		}
		return nil
	})
	t.Logf("owners of %d players: %v", len(ps), count(owner))
	// The fallback of each of game-2's players, as every process sees it now.
	fallback := map[string]string{}
	for p, id := range owner {
		if id == "game-2" {
			fallback[p] = w.PickN(game, p, 2)[1].ID
		}
	}

	// game-2 restarts on another port, in three steps; no player of the
	// other servers moves at any step, not even for one call.
	//
	// 1. Its process stops serving, its record still there (as after a
	// crash, until its TTL ends): each of its players goes to its PickN
	// fallback, the first candidate whose connection is ready.
	g2.grpc.Stop()
	moved := map[string]string{}
	took := eventually(t, "game-2's players on their fallbacks", func() error {
		pending, err := moves(ctx, c, owner, "game-2", func(p string) string { return fallback[p] }, moved)
		if err == nil && pending > 0 {
			err = fmt.Errorf("%d of game-2's %d players not on their fallback", pending, len(fallback))
		}
		return err
	})
	t.Logf("game-2's %d players were on their PickN fallbacks %v after it stopped serving: %v", len(fallback), took, count(fallback))

	// 2. It deregisters: every watcher rebuilds the table without it, and its
	// players go to their owners in that table (every process agrees), not
	// always the fallback of step 1.
	if err := g2.w.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	pickNow := func(p string) string {
		in, _ := w.Pick(game, p)
		return in.ID
	}
	took = eventually(t, "game-2's players on their Pick owners without game-2", func() error {
		if _, ok := w.Lookup(game, "game-2"); ok {
			return fmt.Errorf("game-2 still in the table")
		}
		pending, err := moves(ctx, c, owner, "game-2", pickNow, moved)
		if err == nil && pending > 0 {
			err = fmt.Errorf("%d of game-2's %d players not on their Pick owner", pending, len(fallback))
		}
		return err
	})
	again := 0
	for p, f := range fallback {
		if pickNow(p) != f {
			again++
		}
	}
	t.Logf("once game-2 had deregistered (%v later), %d of its %d players moved from their PickN fallback to another server (the table rebuilt without it)", took, again, len(fallback))
	if _, err := pickOwners(ctx, c, w, game, svcwatchgrpc.DefaultKeyHeader, ps); err != nil {
		t.Errorf("while game-2 was away: %v", err)
	}

	// 3. It registers again, on another port: every player is back.
	g2 = startServer(t, srv.Client(t), game, "game-2", "127.0.0.1:0")
	took = eventually(t, "game-2's players back on game-2", func() error {
		pending, err := moves(ctx, c, owner, "game-2", func(string) string { return "game-2" }, moved)
		if err == nil && pending > 0 {
			err = fmt.Errorf("%d of game-2's %d players not back (game-2 now at %s)", pending, len(fallback), g2.addr)
		}
		return err
	})
	t.Logf("game-2's players were back on it %v after it registered again", took)
	if len(moved) > 0 {
		t.Errorf("%d players of game-1 and game-3 moved during game-2's restart: %v", len(moved), moved)
	}
	t.Logf("players of the other servers moved during the restart: %d of %d", len(moved), len(owner)-len(fallback))
	if again, err := pickOwners(ctx, c, w, game, svcwatchgrpc.DefaultKeyHeader, ps); err != nil {
		t.Errorf("after the restart: %v", err)
	} else {
		for p, id := range owner {
			if again[p] != id {
				t.Errorf("%s on %s after the restart, was on %s", p, again[p], id)
			}
		}
	}
}

func TestPickMovesOnlyADrainingServersPlayers(t *testing.T) {
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	game := svcwatch.Path("grpctest", "prod", "v1", "game")
	startServer(t, srv.Client(t), game, "game-1", "127.0.0.1:0")
	startServer(t, srv.Client(t), game, "game-2", "127.0.0.1:0")
	g3 := startServer(t, srv.Client(t), game, "game-3", "127.0.0.1:0")
	b, w := client(t, srv, svcwatch.Path("grpctest", "prod", "v1", "gate"))
	c := dial(t, b, "svcwatch:///"+game, svcwatchPick)
	ctx := context.Background()
	ps := players(300)

	var owner map[string]string
	eventually(t, "every player on its Pick owner", func() (err error) {
		owner, err = pickOwners(ctx, c, w, game, svcwatchgrpc.DefaultKeyHeader, ps)
		return err
	})
	fallback := map[string]string{}
	for p, id := range owner {
		if id == "game-3" {
			fallback[p] = w.PickN(game, p, 2)[1].ID
		}
	}
	if err := g3.w.SetState(ctx, svcwatch.Draining); err != nil {
		t.Fatal(err)
	}
	moved := map[string]string{}
	eventually(t, "game-3's players on their fallbacks", func() error {
		pending, err := moves(ctx, c, owner, "game-3", func(p string) string { return fallback[p] }, moved)
		if err == nil && pending > 0 {
			err = fmt.Errorf("%d of game-3's %d players not on their fallback", pending, len(fallback))
		}
		return err
	})
	if err := g3.w.SetState(ctx, svcwatch.Serving); err != nil {
		t.Fatal(err)
	}
	eventually(t, "game-3's players back", func() error {
		pending, err := moves(ctx, c, owner, "game-3", func(string) string { return "game-3" }, moved)
		if err == nil && pending > 0 {
			err = fmt.Errorf("%d of game-3's %d players not back", pending, len(fallback))
		}
		return err
	})
	if len(moved) > 0 {
		t.Errorf("%d players of game-1 and game-2 moved while game-3 drained: %v", len(moved), moved)
	}
}

func TestPickKeyHeaderAndRoundRobin(t *testing.T) {
	srv := redistest.StartServer(t, redistest.ServerOptions{})
	game := svcwatch.Path("grpctest", "prod", "v1", "game")
	for _, id := range []string{"game-1", "game-2", "game-3"} {
		startServer(t, srv.Client(t), game, id, "127.0.0.1:0")
	}
	b, w := client(t, srv, svcwatch.Path("grpctest", "prod", "v1", "gate"))
	c := dial(t, b, "svcwatch:///"+game, `{"loadBalancingConfig":[{"svcwatch_pick":{"keyHeader":"Player-ID"}}]}`)
	ctx := context.Background()

	// Keyed by the configured header (sent in any case: metadata keys are
	// lowercased).
	eventually(t, "every player on its Pick owner", func() error {
		_, err := pickOwners(ctx, c, w, game, "player-id", players(30))
		return err
	})
	// Without that header (the default one is not it), round robin: one
	// player's calls reach every server.
	eventually(t, "unkeyed calls on all three servers", func() error {
		got := map[string]int{}
		for i := 0; i < 30; i++ {
			id, err := call(asPlayer(ctx, svcwatchgrpc.DefaultKeyHeader, "player-1"), c)
			if err != nil {
				return err
			}
			got[id]++
		}
		return exactly(got, "game-1", "game-2", "game-3")
	})
}

func TestPickNeedsASvcwatchTarget(t *testing.T) {
	cc, err := grpc.NewClient("passthrough:///127.0.0.1:1",
		grpc.WithDefaultServiceConfig(svcwatchPick),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_, err = testpb.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "svcwatch_pick needs a svcwatch:/// target") {
		t.Errorf("call on a passthrough target: %v, want Unavailable naming the cause", err)
	}
}
