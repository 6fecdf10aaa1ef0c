// Command quickstart runs three processes of two kinds (a gate and two game
// servers) that discover each other through svcwatch, then stops one game server
// cleanly and shows what the others hear.
//
//	go run ./examples/quickstart                  # in-process miniredis, nothing to install
//	go run ./examples/quickstart -redis host:port # a real Redis
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch"
)

func main() {
	addr := flag.String("redis", "", "Redis address host:port (default: an in-process miniredis)")
	flag.Parse()
	if err := run(*addr, os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// printer serialises the processes' lines.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) say(who, format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "%-7s %s\n", who, fmt.Sprintf(format, args...))
}

func run(addr string, out io.Writer) error {
	if addr == "" {
		mr, err := miniredis.Run()
		if err != nil {
			return err
		}
		defer mr.Close()
		addr = mr.Addr()
		fmt.Fprintln(out, "using an in-process miniredis (pass -redis host:port for a real one)")
	}
	client := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	const game, gate = "quickstart/dev/v1/game", "quickstart/dev/v1/gate"
	p := &printer{w: out}
	removed := make(chan struct{}, 2)
	start := func(table, id, name string, tables ...string) (*svcwatch.RedisServiceWatcher, error) {
		w, err := svcwatch.NewRedisServiceWatcher(client,
			svcwatch.Instance{Table: table, ID: id, Name: name, Desc: fmt.Sprintf(`{"id":%q}`, id)},
			svcwatch.WithTables(tables...),
			svcwatch.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
			svcwatch.WithHandler(svcwatch.HandlerFuncs{
				Add:    func(i svcwatch.Instance) { p.say(id, "sees %s up at %s", i.Key(), i.Name) },
				Update: func(_, i svcwatch.Instance) { p.say(id, "sees %s change: %s", i.Key(), i.Desc) },
				Remove: func(i svcwatch.Instance) {
					p.say(id, "sees %s gone", i.Key())
					select {
					case removed <- struct{}{}:
					default:
					}
				},
			}))
		if err != nil {
			return nil, err
		}
		if err := w.Start(ctx); err != nil {
			return nil, err
		}
		p.say(id, "registered in %s", table)
		return w, nil
	}

	game1, err := start(game, "game1", "127.0.0.1:7101")
	if err != nil {
		return err
	}
	defer game1.Stop(ctx)
	game2, err := start(game, "game2", "127.0.0.1:7102")
	if err != nil {
		return err
	}
	gate1, err := start(gate, "gate1", "127.0.0.1:7001", game) // the gate also watches the games
	if err != nil {
		return err
	}
	defer gate1.Stop(ctx)

	fmt.Fprintf(out, "\ngate1 knows %d game servers; game2 stops cleanly:\n", len(gate1.Services(game)))
	if err := game2.Stop(ctx); err != nil {
		return err
	}
	for i := 0; i < 2; i++ { // game1 and gate1 each hear it
		select {
		case <-removed:
		case <-ctx.Done():
			return fmt.Errorf("waiting for the removal: %w", ctx.Err())
		}
	}
	fmt.Fprintf(out, "\ngate1 knows %d game server(s): %s\n", len(gate1.Services(game)), gate1.Services(game)[0].Key())
	return nil
}
