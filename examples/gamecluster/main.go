// Command gamecluster runs a small game cluster in one program: a gate, three game
// servers and a chat server, each with its own TCP listener, its own svcwatch
// watcher and its own svcwatch.ConnManager. They find each other through Redis
// and connect as their kinds require (the gate dials every game server, each game
// server dials chat), exchanging a one-line hello on every connection. Then one
// game server is killed without deregistering, the gate drops it after its TTL,
// and it comes back with the same ID and address and is reconnected.
//
// Then players join: the gate places each on the game server that
// Pick(game table, player ID) names. One game server drains (Drain): Pick stops
// giving it players while the gate keeps its connection, its players finish and
// leave, and Drain's Stop deregisters it.
//
//	go run ./examples/gamecluster                  # in-process miniredis, nothing to install
//	go run ./examples/gamecluster -redis host:port # a real Redis
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/svcwatch/svcwatch"
)

func main() {
	redisAddr := flag.String("redis", "", "Redis address host:port (default: an in-process miniredis)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	ctx, cancel := context.WithTimeout(ctx, 25*time.Second)
	err := run(ctx, *redisAddr, os.Stdout)
	cancel()
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gamecluster:", err)
		os.Exit(1)
	}
}

// run tells the story on out and returns once every process has stopped.
func run(ctx context.Context, redisAddr string, out io.Writer) (err error) {
	pr := newPrinter(out)
	if redisAddr == "" {
		// miniredis's TIME follows the real clock (nobody calls SetTime here), so
		// registrations expire in real time, as on a real Redis.
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
	pr.story("TTL %v, keepalive %v; mesh: gate -> game, game -> chat (one connection per pair)", ttl, keepalive)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends a drain still waiting (see 5)

	// Whatever happens, every process still running is stopped before run returns.
	running := map[string]*process{}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, p := range running {
			err = errors.Join(err, p.stop(sctx))
		}
	}()
	start := func(kind, id, addr string) (*process, error) {
		p, err := startProcess(ctx, pr, redisAddr, kind, id, addr)
		if err == nil {
			running[id] = p
		}
		return p, err
	}

	// 1. Start the cluster. Each process registers, reports the peers it watches,
	//    and its ConnManager dials those its mesh rule selects.
	chat1, err := start(chat, "chat-1", "127.0.0.1:0")
	if err != nil {
		return err
	}
	game1, err := start(game, "game-1", "127.0.0.1:0")
	if err != nil {
		return err
	}
	game2, err := start(game, "game-2", "127.0.0.1:0")
	if err != nil {
		return err
	}
	game3, err := start(game, "game-3", "127.0.0.1:0")
	if err != nil {
		return err
	}
	gate1, err := start(gate, "gate-1", "127.0.0.1:0")
	if err != nil {
		return err
	}
	if err := waitFor(ctx, "the mesh", func() bool {
		return linked(gate1, game1) && linked(gate1, game2) && linked(gate1, game3) &&
			linked(game1, chat1) && linked(game2, chat1) && linked(game3, chat1)
	}); err != nil {
		return err
	}
	pr.story("mesh complete: gate-1 -> game-1, game-2, game-3; game-1, game-2, game-3 -> chat-1")

	// 2. Kill game-2: its sockets close, and it neither heartbeats nor deregisters.
	//    Its connections break at once, but its record stays in Redis until the TTL
	//    runs out, so its peers keep it (and the gate keeps redialing it) until then.
	pr.story("killing game-2 (simulated SIGKILL: sockets closed, no heartbeat, no deregistration)")
	killedAt := time.Now()
	game2Addr := game2.addr()
	if err := game2.kill(ctx); err != nil {
		return err
	}
	pr.story("game-2 is down; its watcher stopped without deregistering (its Redis client is closed)")
	delete(running, "game-2")
	if err := waitFor(ctx, "the removal of game-2", func() bool {
		return !gate1.knows("game-2") && !game1.knows("game-2") && !chat1.knows("game-2")
	}); err != nil {
		return err
	}
	pr.story("game-2 expired: its peers dropped it %.1fs after the kill (TTL %v)", time.Since(killedAt).Seconds(), ttl)

	// 3. Restart game-2 with the same ID at the same address. It is a new
	//    incarnation: the gate and chat see it added and reconnect.
	pr.story("restarting game-2 with the same ID at the same address %s", game2Addr)
	game2, err = start(game, "game-2", game2Addr)
	if err != nil {
		return err
	}
	if err := waitFor(ctx, "the reconnection of game-2", func() bool {
		return linked(gate1, game2) && linked(game2, chat1)
	}); err != nil {
		return err
	}
	pr.story("game-2 is back: gate-1 -> game-2 and game-2 -> chat-1 reconnected")

	// 4. Players join. The gate places each on the game server that
	//    Pick(game table, player ID) names (consistent hashing over the Serving
	//    game servers: every gate would choose the same) and tells it over its
	//    connection.
	games := map[string]*process{"game-1": game1, "game-2": game2, "game-3": game3}
	join := func(first, last int) error {
		for i := first; i <= last; i++ {
			player := fmt.Sprintf("player-%d", i)
			id, err := gate1.place(player)
			if err != nil {
				return err
			}
			if err := waitFor(ctx, player+" on "+id, func() bool { return games[id].hosts(player) }); err != nil {
				return err
			}
		}
		return nil
	}
	pr.story("6 players join; gate-1 places each with Pick(%q, player ID)", table(game))
	if err := join(1, 6); err != nil {
		return err
	}
	pr.story("players: game-1 %v, game-2 %v, game-3 %v", game1.playerIDs(), game2.playerIDs(), game3.playerIDs())

	// 5. Drain game-3: Drain sets it Draining, so that its peers see it and Pick
	//    skips it, while the gate keeps its connection to it (its players are
	//    still playing). New players go to the serving servers. Drain's wait
	//    returns once game-3's players have left, then Drain stops its watcher,
	//    which deregisters it: its peers drop it at once.
	pr.story("draining game-3: Drain sets it draining, waits for its players to leave, then stops its watcher")
	drained := make(chan error, 1)
	go func() {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second) // players that never leave fail the story
		defer cancel()
		drained <- game3.drain(dctx)
	}()
	err = waitFor(ctx, "gate-1 to see game-3 draining", func() bool { return gate1.sees("game-3", svcwatch.Draining) })
	if err == nil {
		pr.story("3 more players join during the drain")
		err = join(7, 9)
	}
	if err != nil {
		cancel() // the drain's wait gives up; game-3 is stopped with the others
		<-drained
		return err
	}
	if err = <-drained; err != nil { // the drain's wait ends with its own deadline at the latest
		return fmt.Errorf("drain game-3: %w", err)
	}
	pr.story("game-3 drained: its players left, and Drain's Stop deregistered it")
	if err := waitFor(ctx, "the removal of game-3", func() bool {
		return !gate1.knows("game-3") && !game1.knows("game-3") && !game2.knows("game-3") && !chat1.knows("game-3")
	}); err != nil {
		return err
	}
	pr.story("game-3 is gone from every peer; closing its connections and listener")
	delete(running, "game-3")
	if err := game3.stop(ctx); err != nil {
		return fmt.Errorf("stop game-3: %w", err)
	}
	pr.line("game-3", "stopped: drained and deregistered, connections and listener closed")

	// 6. Stop everyone cleanly: each deregisters, closes its connections and its
	//    listener. (The peers' events during the shutdown are not printed.)
	pr.story("shutting down")
	pr.mute()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, p := range []*process{gate1, game2, game1, chat1} {
		delete(running, p.id)
		if err := p.stop(sctx); err != nil {
			return fmt.Errorf("stop %s: %w", p.id, err)
		}
		pr.line(p.id, "stopped: deregistered, connections and listener closed")
	}
	pr.story("done")
	return nil
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(ctx context.Context, what string, cond func() bool) error {
	t := time.NewTicker(10 * time.Millisecond)
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
