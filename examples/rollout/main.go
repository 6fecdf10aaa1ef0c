// Command rollout shows a game version rollout with svcwatch, in one program: a
// gate, version 1's game servers, then version 2's, each process with its own
// Redis client and watcher.
//
//  1. Version 1 runs: two game servers registered in demo/prod/20261119/game,
//     and a gate that registers nothing and watches the prefix demo/prod
//     (WatchPrefix), so it is never told a table's name.
//  2. Players join: the gate places each on the newest version that has a
//     serving game server, with Pick over that version's table.
//  3. Version 2's two servers register in demo/prod/20261126/game. The gate
//     finds the new table through the catalog's announcement, and new players
//     go to version 2 only.
//  4. Version 1's servers Drain: they go Draining (the gate places nobody
//     there), their players finish their matches and leave, then Drain stops
//     them, which deregisters them.
//  5. Their table, now empty, is collected after the table retention: its
//     keys and its catalog entry leave Redis, and the gate stops watching it.
//
// Every process uses short settings (TTL 2s, keepalive 400ms, table retention
// 1s) so that the story ends by itself in a few seconds. Players and the network
// between the gate and the game servers are simulated in-process.
//
//	go run ./examples/rollout                  # in-process miniredis, nothing to install
//	go run ./examples/rollout -redis host:port # a real Redis (keys under "svcwatch:")
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/svcwatch/svcwatch"
)

// The tables: demo/prod/<version>/game, under the prefix the gate watches.
const (
	prefix = "demo/prod"
	v1     = "20261119"
	v2     = "20261126"
)

func gameTable(version string) string { return svcwatch.Path(prefix, version, "game") }

// Discovery settings, short so that the story runs in seconds.
const (
	ttl       = 2 * time.Second
	keepalive = 400 * time.Millisecond
	retention = time.Second // svcwatch.MinRetention; the default is 24h
)

// discoveryOptions are the options every process of the story uses.
func discoveryOptions() []svcwatch.Option {
	return []svcwatch.Option{
		svcwatch.WithTTL(ttl),
		svcwatch.WithKeepAliveInterval(keepalive),
		svcwatch.WithTableRetention(retention),
	}
}

func main() {
	redisAddr := flag.String("redis", "", "Redis address host:port (default: an in-process miniredis)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := run(ctx, *redisAddr, os.Stdout)
	cancel()
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "rollout:", err)
		os.Exit(1)
	}
}

// run tells the story on out and returns once every process has stopped.
func run(ctx context.Context, redisAddr string, out io.Writer) (err error) {
	pr := newPrinter(out)
	if redisAddr == "" {
		// miniredis's TIME follows the real clock (nobody calls SetTime here), so
		// registrations expire and tables are collected in real time.
		mr, err := miniredis.Run()
		if err != nil {
			return err
		}
		defer mr.Close()
		redisAddr = mr.Addr()
		pr.story("in-process miniredis at %s (pass -redis host:port for a real Redis)", redisAddr)
	} else {
		pr.story("Redis at %s", redisAddr)
	}
	pr.story("TTL %v, keepalive %v, table retention %v on every process", ttl, keepalive, retention)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends a drain still waiting

	lan := newNetwork()
	redisView := newInspector(redisAddr)
	defer func() { err = errors.Join(err, redisView.close()) }()

	// Whatever happens, every process still running is stopped before run returns.
	var gate1 *gate
	running := map[string]*gameServer{}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, g := range running {
			err = errors.Join(err, g.stop(sctx))
		}
		if gate1 != nil {
			err = errors.Join(err, gate1.stop(sctx))
		}
	}()
	start := func(version, id string) (*gameServer, error) {
		g, err := startGame(ctx, pr, redisAddr, lan, version, id)
		if err == nil {
			running[id] = g
		}
		return g, err
	}
	placed := map[string][]string{} // server ID -> players placed there
	join := func(first, last int) error {
		for i := first; i <= last; i++ {
			player := fmt.Sprintf("player-%d", i)
			srv, err := gate1.place(player)
			if err != nil {
				return err
			}
			placed[srv.id] = append(placed[srv.id], player)
		}
		return nil
	}

	// 1. Version 1 runs. Its game servers register first; the gate then watches
	//    the prefix, and WatchPrefix returns with their table loaded.
	pr.story("version 1 starts: two game servers in %s", gameTable(v1))
	v1a, err := start(v1, "game-v1-1")
	if err != nil {
		return err
	}
	v1b, err := start(v1, "game-v1-2")
	if err != nil {
		return err
	}
	pr.story("the gate starts; it registers nothing and watches the prefix %s", prefix)
	if gate1, err = startGate(ctx, pr, redisAddr, lan, "gate-1", prefix); err != nil {
		return err
	}
	if err := showCatalog(ctx, pr, redisView); err != nil {
		return err
	}

	// 2. Players join; the gate places each on the newest serving version.
	pr.story("6 players join; gate-1 places each with Pick over the newest serving version's table")
	if err := join(1, 6); err != nil {
		return err
	}
	pr.story("players: game-v1-1 %v, game-v1-2 %v", v1a.playerIDs(), v1b.playerIDs())

	// 3. Version 2 starts under a new table. Nobody tells the gate: the catalog
	//    announces the table and the gate's prefix covers it.
	pr.story("version 2 starts: two game servers in %s; nobody tells the gate", gameTable(v2))
	v2a, err := start(v2, "game-v2-1")
	if err != nil {
		return err
	}
	v2b, err := start(v2, "game-v2-2")
	if err != nil {
		return err
	}
	if err := waitFor(ctx, "gate-1 to see version 2", func() bool {
		return gate1.sees(key(v2a), svcwatch.Serving) && gate1.sees(key(v2b), svcwatch.Serving)
	}); err != nil {
		return err
	}
	pr.story("gate-1 now watches %s", strings.Join(gate1.w.Tables(), ", "))
	if err := showCatalog(ctx, pr, redisView); err != nil {
		return err
	}
	pr.story("4 players join; version 2 is the newest serving version")
	if err := join(7, 10); err != nil {
		return err
	}

	// 4. Version 1 drains. Its players stay until their matches end; the gate
	//    places nobody there. Drain stops each server once its players left.
	pr.story("version 1 drains: its servers take no new players and stop once theirs have left")
	drained := make(chan error, 2)
	for _, g := range []*gameServer{v1a, v1b} {
		go func(g *gameServer) { // go 1.21: the loop variable is shared
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second) // players that never leave fail the story
			defer cancel()
			drained <- g.drain(dctx)
		}(g)
	}
	err = waitFor(ctx, "gate-1 to see version 1 draining", func() bool {
		return gate1.sees(key(v1a), svcwatch.Draining) && gate1.sees(key(v1b), svcwatch.Draining)
	})
	if err == nil {
		pr.story("2 players join during the drain")
		err = join(11, 12)
	}
	if err != nil {
		cancel() // the drains' waits give up; the servers are stopped with the others
		<-drained
		<-drained
		return err
	}
	for i := 0; i < 2; i++ { // each drain's wait ends with its own deadline at the latest
		if derr := <-drained; derr != nil {
			err = errors.Join(err, derr)
		}
	}
	if err != nil {
		return err
	}
	v1Gone := time.Now()
	if err := waitFor(ctx, "gate-1 to drop version 1", func() bool {
		return !gate1.knows(key(v1a)) && !gate1.knows(key(v1b))
	}); err != nil {
		return err
	}
	for _, g := range []*gameServer{v1a, v1b} {
		delete(running, g.id)
		if err := g.stop(ctx); err != nil {
			return err
		}
		pr.line(g.id, "stopped: drained, deregistered, Redis client closed")
	}
	if len(placed["game-v1-1"])+len(placed["game-v1-2"]) > 6 {
		return fmt.Errorf("players placed on version 1 after version 2 came: %v, %v", placed["game-v1-1"], placed["game-v1-2"])
	}

	// 5. Version 1's table has no instance left. After the retention, whichever
	//    watcher's collection pass comes first deletes its keys and its catalog
	//    entry, and announces it; the gate then stops watching it.
	old := gameTable(v1)
	n, err := redisView.keys(ctx, old)
	if err != nil {
		return err
	}
	pr.story("%s is empty; its %d keys and its catalog entry stay until it has been empty for %v", old, n, retention)
	var lastErr error
	if err := waitFor(ctx, "the collection of "+old, func() bool {
		n, err := redisView.keys(ctx, old)
		if err == nil && n == 0 {
			var listed bool
			listed, err = redisView.listed(ctx, old)
			if err == nil && !listed {
				return !slices.Contains(gate1.w.Tables(), old)
			}
		}
		lastErr = err
		return false
	}); err != nil {
		return errors.Join(err, lastErr)
	}
	pr.story("table %s collected: no keys, no catalog entry, and gate-1 no longer watches it (%.1fs after version 1 left)",
		old, time.Since(v1Gone).Seconds())
	pr.story("gate-1 now watches %s", strings.Join(gate1.w.Tables(), ", "))
	if err := showCatalog(ctx, pr, redisView); err != nil {
		return err
	}

	// 6. Stop everyone cleanly (the gate's events during the shutdown are not
	//    printed). Version 2's table stays in Redis until it has been empty for
	//    the retention of whichever process next collects.
	pr.story("shutting down")
	pr.mute()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	g, gerr := gate1, gate1.stop(sctx)
	gate1 = nil
	if gerr != nil {
		return gerr
	}
	pr.line(g.id, "stopped: Redis client closed")
	for _, srv := range []*gameServer{v2a, v2b} {
		delete(running, srv.id)
		if err := srv.stop(sctx); err != nil {
			return err
		}
		pr.line(srv.id, "stopped: deregistered, Redis client closed")
	}
	pr.story("done")
	return nil
}

// key is the key the gate's view uses for a server: Instance.Key.
func key(g *gameServer) string { return svcwatch.Instance{Table: gameTable(g.version), ID: g.id}.Key() }

// showCatalog prints the tables the catalog lists.
func showCatalog(ctx context.Context, pr *printer, in *inspector) error {
	tables, err := in.catalog(ctx)
	if err != nil {
		return err
	}
	pr.story("the catalog lists %s", strings.Join(tables, ", "))
	return nil
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(ctx context.Context, what string, cond func() bool) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}
