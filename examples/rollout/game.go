package main

// game.go: a game server of one version. It registers in its version's table,
// hosts the players the gate places on it, and at the end of its version drains:
// svcwatch's Drain makes it Draining (the gate places nobody there), waits for
// its players to finish their matches, then stops its watcher, which
// deregisters it.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch"
)

// matchesEnd is how long a draining server's players take, all together, to
// finish their matches (simulated): they leave one by one over this time.
const matchesEnd = time.Second

// gameServer is one game server process: its own Redis client and watcher, as a
// separate OS process would have.
type gameServer struct {
	id, version, name string
	pr                *printer
	lan               *network
	client            *redis.Client
	w                 *svcwatch.RedisServiceWatcher

	mu            sync.Mutex
	startBegan    time.Time     // when Start was called
	startReturned time.Time     // when it returned; zero before
	players       []string      // in the order they joined
	changed       chan struct{} // closed and replaced whenever players changes
	quit          chan struct{} // closed by stop: the simulated matches end
	sim           sync.WaitGroup

	stopOnce sync.Once
	stopErr  error
}

// startGame starts game server id of version: it registers in the version's
// table and answers at its address on the in-process network. When it returns,
// the server is registered.
func startGame(ctx context.Context, pr *printer, redisAddr string, lan *network, version, id string) (*gameServer, error) {
	g := &gameServer{
		id: id, version: version, name: id + ".demo.internal:7000",
		pr: pr, lan: lan,
		changed: make(chan struct{}),
		quit:    make(chan struct{}),
	}
	g.client = redis.NewClient(&redis.Options{Addr: redisAddr, ContextTimeoutEnabled: true})
	w, err := svcwatch.NewRedisServiceWatcher(g.client,
		svcwatch.Instance{
			Table: gameTable(version), ID: id, Name: g.name,
			Desc: fmt.Sprintf(`{"kind":"game","version":%q}`, version),
		},
		append(discoveryOptions(), svcwatch.WithLogger(newLibLogger(g.say)))...)
	if err != nil {
		_ = g.client.Close()
		return nil, fmt.Errorf("start %s: %w", id, err)
	}
	g.w = w
	lan.attach(g) // listening before it registers, as a real server would
	g.mu.Lock()
	g.startBegan = time.Now()
	g.mu.Unlock()
	if err := w.Start(ctx); err != nil {
		lan.detach(g)
		_ = g.client.Close()
		return nil, fmt.Errorf("start %s: %w", id, err)
	}
	g.mu.Lock()
	g.startReturned = time.Now()
	took := g.startReturned.Sub(g.startBegan)
	g.mu.Unlock()
	g.say(fmt.Sprintf("registered in %s as %s (Start took %dms)", gameTable(version), g.name, took.Milliseconds()))
	return g, nil
}

func (g *gameServer) say(msg string) { g.pr.event(g.id, msg) }

// startTimes returns when Start was called and when it returned (zero: not yet).
func (g *gameServer) startTimes() (began, returned time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.startBegan, g.startReturned
}

// join hosts player; the gate calls it over the (simulated) network.
func (g *gameServer) join(player string) {
	g.mu.Lock()
	g.players = append(g.players, player)
	n := len(g.players)
	g.notifyLocked()
	g.mu.Unlock()
	g.say(fmt.Sprintf("%s joined (%d playing here)", player, n))
}

// playerIDs returns the players the server hosts, in the order they joined.
func (g *gameServer) playerIDs() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.players)
}

// drain takes the server out of rotation and stops its watcher once its
// players have left: Drain sets Draining (peers see it, and Pick skips the
// server), calls the wait below, then Stop deregisters it. If ctx ends first,
// Drain returns the error and the server stays registered and draining.
func (g *gameServer) drain(ctx context.Context) error {
	g.say(fmt.Sprintf("draining: no new players; the %d playing here finish their matches first", len(g.playerIDs())))
	err := g.w.Drain(ctx, func(ctx context.Context) error {
		g.finishMatches()
		return g.waitNoPlayers(ctx)
	})
	if err != nil {
		return fmt.Errorf("drain %s: %w", g.id, err)
	}
	g.say("drained and deregistered: its players left, then Drain's Stop removed it from Redis")
	return nil
}

// finishMatches simulates the server's players finishing their matches: they
// leave one by one, spread over matchesEnd. The goroutine is owned by the
// server: stop ends it and waits for it.
func (g *gameServer) finishMatches() {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.quit:
		return // stopped: no Add after stop's Wait
	default:
	}
	players := slices.Clone(g.players)
	if len(players) == 0 {
		return
	}
	every := matchesEnd / time.Duration(len(players))
	g.sim.Add(1)
	go func() {
		defer g.sim.Done()
		t := time.NewTimer(every)
		defer t.Stop()
		for _, player := range players {
			select {
			case <-t.C:
			case <-g.quit:
				return
			}
			g.leave(player)
			t.Reset(every)
		}
	}()
}

// leave lets player go: its match is over.
func (g *gameServer) leave(player string) {
	g.mu.Lock()
	i := slices.Index(g.players, player)
	if i >= 0 {
		g.players = slices.Delete(g.players, i, i+1)
	}
	n := len(g.players)
	g.notifyLocked()
	g.mu.Unlock()
	if i >= 0 {
		g.say(fmt.Sprintf("%s finished its match and left (%d still playing)", player, n))
	}
}

// errShutDown is a drain's wait interrupted by stop.
var errShutDown = errors.New("the server is shutting down")

// waitNoPlayers returns once the server hosts nobody, or with an error when ctx
// ends or the server is stopped.
func (g *gameServer) waitNoPlayers(ctx context.Context) error {
	for {
		g.mu.Lock()
		n, changed := len(g.players), g.changed
		g.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d players to leave: %w", n, ctx.Err())
		case <-g.quit:
			return fmt.Errorf("waiting for %d players to leave: %w", n, errShutDown)
		}
	}
}

// notifyLocked wakes waitNoPlayers. Caller holds mu.
func (g *gameServer) notifyLocked() {
	close(g.changed)
	g.changed = make(chan struct{})
}

// stop ends the simulated matches, stops the watcher (deregistering the server
// unless Drain already did) and closes the Redis client. Calling it again
// returns the first call's result.
func (g *gameServer) stop(ctx context.Context) error {
	g.stopOnce.Do(func() {
		g.mu.Lock()
		close(g.quit)
		g.mu.Unlock()
		g.sim.Wait()
		g.lan.detach(g)
		g.stopErr = errors.Join(g.w.Stop(ctx), g.client.Close())
		if g.stopErr != nil {
			g.stopErr = fmt.Errorf("stop %s: %w", g.id, g.stopErr)
		}
	})
	return g.stopErr
}
