package svcwatch_test

import (
	"context"
	"fmt"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch"
)

// A gate discovers the game servers of its cluster and hears when one stops.
// miniredis stands in for Redis here; a game server passes its own client.
func ExampleNewRedisServiceWatcher() {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	client := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer client.Close()
	ctx := context.Background()
	games := svcwatch.Path("mygame", "prod", "20190510", "game")

	game1, err := svcwatch.NewRedisServiceWatcher(client,
		svcwatch.Instance{Table: games, ID: "game-1", Name: "10.0.0.1:7001", Desc: `{"zone":1}`})
	if err != nil {
		panic(err)
	}
	if err := game1.Start(ctx); err != nil {
		panic(err)
	}

	removed := make(chan struct{})
	gate, err := svcwatch.NewRedisServiceWatcher(client,
		svcwatch.Instance{Table: svcwatch.Path("mygame", "prod", "20190510", "gate"), ID: "gate-1", Name: "10.0.0.2:7000"},
		svcwatch.WithTables(games),
		svcwatch.WithHandler(svcwatch.HandlerFuncs{
			Add: func(inst svcwatch.Instance) {
				var desc struct{ Zone int }
				_ = inst.Decode(&desc)
				fmt.Printf("add %s at %s, zone %d\n", inst.Key(), inst.Name, desc.Zone)
			},
			Remove: func(inst svcwatch.Instance) {
				fmt.Printf("remove %s\n", inst.Key())
				close(removed)
			},
		}))
	if err != nil {
		panic(err)
	}
	if err := gate.Start(ctx); err != nil { // game-1 is reported before Start returns
		panic(err)
	}
	defer gate.Stop(ctx)
	fmt.Println("games:", len(gate.Services(games)))

	_ = game1.Stop(ctx) // deregisters: the gate hears at once, not after the TTL
	<-removed
	// Output:
	// add mygame/prod/20190510/game/game-1 at 10.0.0.1:7001, zone 1
	// games: 1
	// remove mygame/prod/20190510/game/game-1
}
