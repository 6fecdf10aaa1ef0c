package etcd_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/svcwatch/svcwatch"
	svcetcd "github.com/svcwatch/svcwatch/etcd"
)

// A gate discovers the game servers of its cluster on etcd and hears when one
// stops. An embedded etcd stands in for the studio's cluster here; a game
// server passes a client of its own etcd.
func Example() {
	endpoint, stop := embeddedEtcd()
	defer stop()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, Logger: zap.NewNop()})
	if err != nil {
		panic(err)
	}
	defer cli.Close()
	ctx := context.Background()
	quiet := svcwatch.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
	games := svcwatch.Path("mygame", "prod", "20190510", "game")

	game1, err := svcetcd.NewEtcdServiceWatcher(cli,
		svcwatch.Instance{Table: games, ID: "game-1", Name: "10.0.0.1:7001", Desc: `{"zone":1}`}, quiet)
	if err != nil {
		panic(err)
	}
	if err := game1.Start(ctx); err != nil {
		panic(err)
	}

	removed := make(chan struct{})
	gate, err := svcetcd.NewEtcdServiceWatcher(cli,
		svcwatch.Instance{Table: svcwatch.Path("mygame", "prod", "20190510", "gate"), ID: "gate-1", Name: "10.0.0.2:7000"},
		quiet,
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
	owner, _ := gate.Pick(games, "player-42")
	fmt.Println("player-42 plays on", owner.ID)

	_ = game1.Stop(ctx) // revokes its lease: the gate hears at once, not after the TTL
	<-removed
	// Output:
	// add mygame/prod/20190510/game/game-1 at 10.0.0.1:7001, zone 1
	// player-42 plays on game-1
	// remove mygame/prod/20190510/game/game-1
}

// embeddedEtcd starts a one-member etcd on free loopback ports in a temporary
// directory; stop closes it and removes the directory.
func embeddedEtcd() (endpoint string, stop func()) {
	dir, err := os.MkdirTemp("", "svcwatch-etcd-example")
	if err != nil {
		panic(err)
	}
	cfg := embed.NewConfig()
	cfg.Dir = dir
	client, peer := freeURL(), freeURL()
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		panic(err)
	}
	<-e.Server.ReadyNotify()
	return client.Host, func() { e.Close(); os.RemoveAll(dir) }
}

func freeURL() url.URL {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return url.URL{Scheme: "http", Host: l.Addr().String()}
}
