package svcwatchgrpc_test

import (
	"context"
	"fmt"
	"net"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/svcwatch/svcwatch"
	svcwatchgrpc "github.com/svcwatch/svcwatch/grpc"
)

// A gate sends each player's calls to the game server that owns the player,
// as svcwatch's Pick gives it in every process. miniredis stands in for Redis
// here.
func ExamplePickPolicy() {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	client := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer client.Close()
	ctx := context.Background()
	games := svcwatch.Path("mygame", "prod", "v1", "game")

	// Three game servers, each a gRPC server registered in the games table.
	for _, id := range []string{"game-1", "game-2", "game-3"} {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		gs := grpc.NewServer()
		healthpb.RegisterHealthServer(gs, health.NewServer())
		go gs.Serve(lis)
		defer gs.Stop()
		w, err := svcwatch.NewRedisServiceWatcher(client, svcwatch.Instance{Table: games, ID: id, Name: lis.Addr().String()})
		if err != nil {
			panic(err)
		}
		if err := w.Start(ctx); err != nil {
			panic(err)
		}
		defer w.Stop(ctx)
	}

	// The gate watches the games table and routes by the svcwatch-key header.
	gate, err := svcwatch.NewRedisServiceWatcher(client,
		svcwatch.Instance{Table: svcwatch.Path("mygame", "prod", "v1", "gate"), ID: "gate-1", Name: "10.0.0.2:7000"},
		svcwatch.WithTables(games))
	if err != nil {
		panic(err)
	}
	if err := gate.Start(ctx); err != nil {
		panic(err)
	}
	defer gate.Stop(ctx)
	b := svcwatchgrpc.NewBuilder(gate)
	defer b.Close(ctx)
	conn, err := grpc.NewClient("svcwatch:///"+games,
		grpc.WithResolvers(b),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"svcwatch_pick":{}}]}`),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		panic(err)
	}
	defer conn.Close()

	// player-42's call goes to the server that owns player-42 (once its
	// connection is ready; until then, to the next server in PickN's order).
	health := healthpb.NewHealthClient(conn)
	callCtx := metadata.AppendToOutgoingContext(ctx, svcwatchgrpc.DefaultKeyHeader, "player-42")
	owner, _ := gate.Pick(games, "player-42")
	for {
		var p peer.Peer
		if _, err := health.Check(callCtx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true), grpc.Peer(&p)); err != nil {
			panic(err)
		}
		if p.Addr.String() == owner.Name {
			break
		}
	}
	fmt.Println("player-42 is on", owner.ID)
	// Output:
	// player-42 is on game-1
}
