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

	"github.com/svcwatch/svcwatch"
	svcwatchgrpc "github.com/svcwatch/svcwatch/grpc"
)

// A gate calls the login servers of its cluster by table. miniredis stands in
// for Redis here.
func Example() {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	client := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer client.Close()
	ctx := context.Background()
	logins := svcwatch.Path("mygame", "prod", "v1", "login")

	// A login server: a gRPC server, registered in its table.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(lis)
	defer gs.Stop()
	login, err := svcwatch.NewRedisServiceWatcher(client,
		svcwatch.Instance{Table: logins, ID: "login-1", Name: lis.Addr().String()})
	if err != nil {
		panic(err)
	}
	if err := login.Start(ctx); err != nil {
		panic(err)
	}
	defer login.Stop(ctx)

	// The gate: its own watcher, built and started as usual; the builder
	// attaches to it and hears of every change from then on.
	gate, err := svcwatch.NewRedisServiceWatcher(client,
		svcwatch.Instance{Table: svcwatch.Path("mygame", "prod", "v1", "gate"), ID: "gate-1", Name: "10.0.0.2:7000"})
	if err != nil {
		panic(err)
	}
	if err := gate.Start(ctx); err != nil {
		panic(err)
	}
	defer gate.Stop(ctx)
	b := svcwatchgrpc.NewBuilder(gate)
	defer b.Close(ctx) // after the ClientConn closes: detaches, waits for the unwatch of its table

	conn, err := grpc.NewClient("svcwatch:///"+logins,
		grpc.WithResolvers(b),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
	if err != nil {
		panic(err)
	}
	fmt.Println("login:", resp.GetStatus())
	// Output:
	// login: SERVING
}
