package main

// gate.go: the gate. It registers nothing and watches the prefix demo/prod, so
// each version's game table is found when its first server registers, without
// the gate being told. It places each new player on the newest version that has
// a serving server, with Pick over that version's table: every gate would place
// the player on the same server.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch"
)

// gate is the gate process: its own Redis client and a watch-only watcher.
type gate struct {
	id  string
	pr  *printer
	lan *network

	client *redis.Client
	w      *svcwatch.RedisServiceWatcher

	mu     sync.Mutex
	known  map[string]svcwatch.State // Instance.Key -> the state last reported
	tables map[string]bool           // tables whose first instance was reported

	stopOnce sync.Once
	stopErr  error
}

// startGate starts the gate and watches prefix; it returns once the tables
// already under prefix are loaded and their instances reported.
func startGate(ctx context.Context, pr *printer, redisAddr string, lan *network, id, prefix string) (*gate, error) {
	g := &gate{id: id, pr: pr, lan: lan, known: map[string]svcwatch.State{}, tables: map[string]bool{}}
	g.client = redis.NewClient(&redis.Options{Addr: redisAddr, ContextTimeoutEnabled: true})
	w, err := svcwatch.NewRedisServiceWatcher(g.client, svcwatch.Instance{},
		append(discoveryOptions(),
			svcwatch.WatchOnly(),
			svcwatch.WithLogger(newLibLogger(g.say)),
			svcwatch.WithHandler(svcwatch.HandlerFuncs{Add: g.onAdd, Update: g.onUpdate, Remove: g.onRemove}))...)
	if err == nil {
		g.w = w
		err = w.Start(ctx)
	}
	if err == nil {
		err = w.WatchPrefix(ctx, prefix)
	}
	if err != nil {
		if g.w != nil {
			_ = g.w.Stop(context.Background()) // watch-only: nothing to deregister
		}
		_ = g.client.Close()
		return nil, fmt.Errorf("start %s: %w", id, err)
	}
	g.say(fmt.Sprintf("watching the prefix %s; tables found: %s", prefix, strings.Join(w.Tables(), ", ")))
	return g, nil
}

func (g *gate) say(msg string) { g.pr.event(g.id, msg) }

// --- discovery events (the watcher calls these from one goroutine, in order) ---

func (g *gate) onAdd(inst svcwatch.Instance) {
	g.mu.Lock()
	first := !g.tables[inst.Table]
	g.tables[inst.Table] = true
	g.known[inst.Key()] = inst.State
	g.mu.Unlock()
	if first {
		g.say(fmt.Sprintf("found table %s under the prefix: sees %s up (%s), %s",
			inst.Table, inst.ID, inst.State, g.sinceStart(inst)))
		return
	}
	g.say(fmt.Sprintf("sees %s up in %s (%s)", inst.ID, inst.Table, inst.State))
}

func (g *gate) onUpdate(old, cur svcwatch.Instance) {
	g.mu.Lock()
	g.known[cur.Key()] = cur.State
	g.mu.Unlock()
	if old.State != cur.State {
		g.say(fmt.Sprintf("sees %s %s (was %s); Pick gives it no new players", cur.ID, cur.State, old.State))
	}
}

func (g *gate) onRemove(inst svcwatch.Instance) {
	g.mu.Lock()
	delete(g.known, inst.Key())
	g.mu.Unlock()
	g.say(fmt.Sprintf("sees %s gone (removed from %s)", inst.ID, inst.Table))
}

// sinceStart says how long after the server's Start returned the gate heard of
// it. The figure is printed, never checked: it is loopback latency.
func (g *gate) sinceStart(inst svcwatch.Instance) string {
	srv, ok := g.lan.dial(inst.Name)
	if !ok {
		return "its process is not in this program"
	}
	began, returned := srv.startTimes()
	now := time.Now()
	if returned.IsZero() {
		return fmt.Sprintf("before its Start returned (%dms after Start was called)", now.Sub(began).Milliseconds())
	}
	return fmt.Sprintf("%dms after its Start returned", now.Sub(returned).Milliseconds())
}

// knows reports whether the watcher reported the instance key and did not
// remove it; sees also requires the state it last reported to be s.
func (g *gate) knows(key string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.known[key]
	return ok
}

func (g *gate) sees(key string, s svcwatch.State) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	got, ok := g.known[key]
	return ok && got == s
}

// --- placing players ---

// place puts player on a server of the newest version that has a serving
// server, the one Pick names in that version's table, and returns the server.
func (g *gate) place(player string) (*gameServer, error) {
	table, version, ok := g.newestServing()
	if !ok {
		return nil, fmt.Errorf("place %s: no game server is serving", player)
	}
	inst, ok := g.w.Pick(table, player)
	if !ok { // its last serving server left since newestServing looked
		return nil, fmt.Errorf("place %s: nobody serves in %s any more", player, table)
	}
	srv, ok := g.lan.dial(inst.Name)
	if !ok {
		return nil, fmt.Errorf("place %s: %s at %s does not answer", player, inst.ID, inst.Name)
	}
	g.say(fmt.Sprintf("placed %s on %s (%s)", player, inst.ID, version))
	srv.join(player)
	return srv, nil
}

// newestServing returns the game table of the newest version among the watched
// tables that has a serving instance, and that version.
func (g *gate) newestServing() (table, version string, ok bool) {
	for _, t := range g.w.Tables() {
		v, kind, isGame := parseTable(t)
		if !isGame || kind != "game" || !anyServing(g.w.Services(t)) {
			continue
		}
		if !ok || newerVersion(v, version) {
			table, version, ok = t, v, true
		}
	}
	return table, version, ok
}

func anyServing(insts []svcwatch.Instance) bool {
	for _, inst := range insts {
		if inst.State == svcwatch.Serving && inst.Weight() > 0 {
			return true
		}
	}
	return false
}

// parseTable splits "demo/prod/<version>/<kind>" into version and kind.
func parseTable(table string) (version, kind string, ok bool) {
	parts := strings.Split(table, "/")
	if len(parts) != 4 || parts[0]+"/"+parts[1] != prefix {
		return "", "", false
	}
	return parts[2], parts[3], true
}

// newerVersion orders version segments: numerically when both are numbers
// (a date like 20261126, a build number), else lexically.
func newerVersion(a, b string) bool {
	na, errA := strconv.ParseUint(a, 10, 64)
	nb, errB := strconv.ParseUint(b, 10, 64)
	if errA == nil && errB == nil {
		return na > nb
	}
	return a > b
}

// stop stops the gate's watcher and closes its Redis client. Calling it again
// returns the first call's result.
func (g *gate) stop(ctx context.Context) error {
	g.stopOnce.Do(func() {
		if err := errors.Join(g.w.Stop(ctx), g.client.Close()); err != nil {
			g.stopErr = fmt.Errorf("stop %s: %w", g.id, err)
		}
	})
	return g.stopErr
}
