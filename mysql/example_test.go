package mysql_test

import (
	"context"
	"database/sql"
	"log"
	"os"
	"os/signal"
	"time"

	_ "github.com/go-sql-driver/mysql" // the driver the watcher runs on

	"github.com/svcwatch/svcwatch"
	svcmysql "github.com/svcwatch/svcwatch/mysql"
)

// A game server registers itself in its table and watches its gates. It
// needs a database to run, so the example is compiled, not run; see the
// README for the whole program.
func ExampleNewMySQLServiceWatcher() {
	// interpolateParams: one round trip per statement.
	db, err := sql.Open("mysql", "svc:secret@tcp(127.0.0.1:3306)/game?interpolateParams=true")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	gates := svcwatch.Path("mygame", "prod", "20190510", "gate")
	w, err := svcmysql.NewMySQLServiceWatcher(db,
		svcwatch.Instance{
			Table: svcwatch.Path("mygame", "prod", "20190510", "game"),
			ID:    "game-1",
			Name:  "10.0.0.5:7000",
			Desc:  `{"maxPlayers":500}`,
		},
		svcwatch.WithTables(gates),
		svcwatch.WithHandler(svcwatch.HandlerFuncs{
			Add:    func(i svcwatch.Instance) { log.Printf("gate %s up at %s", i.ID, i.Name) },
			Remove: func(i svcwatch.Instance) { log.Printf("gate %s gone", i.ID) },
		}),
	)
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.Start(ctx); err != nil { // creates the tables if missing
		log.Fatal(err)
	}
	log.Printf("gates now: %d", len(w.Services(gates)))

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt)
	<-stop
	if err := w.Stop(context.Background()); err != nil { // peers see it gone at their next scan
		log.Print(err)
	}
}
