package main

// routing.go: players. The gate places each player on a game server with
// Pick(game table, player ID) and tells that server over its connection to it
// ("join player-N"). When a player's match ends the game server tells the gate
// ("done player-N"), the gate takes the player back and confirms ("left
// player-N"), and only then does the game server let the player go: a server
// with no players left has nothing more to tell the gate. A game server drains
// with Drain: it goes Draining (Pick skips it, the gate keeps its connection),
// its players finish their matches and leave, then Drain stops its watcher,
// which deregisters it.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"
)

// matchEnd is how long after the previous one each player of a draining game
// server finishes its match and leaves (simulated).
const matchEnd = 250 * time.Millisecond

// errShutDown is the drain's wait interrupted by stop or kill.
var errShutDown = errors.New("the process is shutting down")

// --- the gate ---

// place places player on the game server that Pick chooses, over the gate's
// connection to it, and returns that server's ID.
func (p *process) place(player string) (string, error) {
	inst, ok := p.watcher.Pick(table(game), player)
	if !ok {
		return "", fmt.Errorf("place %s: no game server is serving", player)
	}
	pc, ok := p.conns.Get(inst.Key())
	if !ok {
		return "", fmt.Errorf("place %s: not connected to %s", player, inst.ID)
	}
	p.say("placed %s on %s", player, inst.ID) // before the game server can answer
	if _, err := fmt.Fprintf(pc, "join %s\n", player); err != nil {
		return "", fmt.Errorf("place %s on %s: %w", player, inst.ID, shortErr(err))
	}
	return inst.ID, nil
}

// readFromGame reads what a game server sends on the gate's connection c to
// it, until it fails (io.EOF when the server hangs up).
func (p *process) readFromGame(c net.Conn, r *bufio.Reader, gameID string) error {
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if player, ok := strings.CutPrefix(strings.TrimSpace(line), "done "); ok {
			p.say("%s finished its match on %s and leaves it", player, gameID)
			if _, err := fmt.Fprintf(c, "left %s\n", player); err != nil {
				return err
			}
		}
	}
}

// --- a game server ---

// readFromGate reads the gate's messages on an incoming connection c, until it
// fails (io.EOF when the gate hangs up).
func (p *process) readFromGate(c net.Conn, r *bufio.Reader) error {
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		msg := strings.TrimSpace(line)
		if player, ok := strings.CutPrefix(msg, "join "); ok {
			p.mu.Lock()
			p.players[player] = c
			n := len(p.players)
			p.notifyLocked()
			p.mu.Unlock()
			p.say("%s joined (%d playing here)", player, n)
		} else if player, ok := strings.CutPrefix(msg, "left "); ok {
			p.leave(player)
		}
	}
}

// hosts reports whether the game server hosts player.
func (p *process) hosts(player string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.players[player]
	return ok
}

// playerIDs returns the players the game server hosts, sorted.
func (p *process) playerIDs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	ids := make([]string, 0, len(p.players))
	for id := range p.players {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// drain takes the game server out of rotation and stops its watcher once its
// players have left: Drain sets Draining (peers see it; Pick skips the server),
// calls the wait function below, then Stop deregisters. The sockets stay open
// (the caller closes them with stop).
func (p *process) drain(ctx context.Context) error {
	p.say("draining: no new players; %d playing here finish their matches first", len(p.playerIDs()))
	return p.watcher.Drain(ctx, func(ctx context.Context) error {
		p.finishMatches()
		return p.waitNoPlayers(ctx)
	})
}

// finishMatches simulates the players of a draining server: the match of one
// ends every matchEnd, and the server tells the gate that placed the player.
func (p *process) finishMatches() {
	players := p.playerIDs()
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.quit:
		return // stopped: no Add after stopPlayers' Wait
	default:
	}
	p.sim.Add(1)
	go func() {
		defer p.sim.Done()
		for _, player := range players {
			select {
			case <-time.After(matchEnd):
			case <-p.quit:
				return
			}
			p.matchOver(player)
		}
	}()
}

// matchOver tells the gate that placed player that its match is over; the
// player stays until the gate confirms (leave).
func (p *process) matchOver(player string) {
	p.mu.Lock()
	c, ok := p.players[player]
	p.mu.Unlock()
	if ok {
		_, _ = fmt.Fprintf(c, "done %s\n", player) // the gate may be gone: the player stays (Drain's wait fails with ctx)
	}
}

// leave removes player, whom the gate has taken back.
func (p *process) leave(player string) {
	p.mu.Lock()
	_, ok := p.players[player]
	delete(p.players, player)
	n := len(p.players)
	p.notifyLocked()
	p.mu.Unlock()
	if ok {
		p.say("%s left (%d still playing)", player, n)
	}
}

// waitNoPlayers returns once the server hosts no player, or with an error when
// ctx ends or the process is stopped.
func (p *process) waitNoPlayers(ctx context.Context) error {
	for {
		p.mu.Lock()
		n, changed := len(p.players), p.changed
		p.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("%s: waiting for %d players to leave: %w", p.id, n, ctx.Err())
		case <-p.quit:
			return fmt.Errorf("%s: waiting for %d players to leave: %w", p.id, n, errShutDown)
		}
	}
}

// notifyLocked wakes waitNoPlayers. Caller holds mu.
func (p *process) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// stopPlayers ends the simulated players and a drain's wait, and waits for the
// simulation's goroutine.
func (p *process) stopPlayers() {
	p.mu.Lock()
	p.quitOnce.Do(func() { close(p.quit) })
	p.mu.Unlock()
	p.sim.Wait()
}
