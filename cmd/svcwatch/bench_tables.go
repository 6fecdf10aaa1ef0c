package main

import (
	"context"
	"fmt"
	"time"
)

// newTablesReport: a version rollout's first step, seen by prefix watchers:
// from the register call of the first process of a table nobody had seen to
// OnAdd at watchers that watch a prefix above it (catalog announcement, then
// subscribe and load of the new table), against the PUBLISH floor of the
// same rounds.
type newTablesReport struct {
	AddEach  dist        `json:"add_each"`
	AddAll   dist        `json:"add_all"`
	Floor    latencyPair `json:"floor"`
	Rounds   int         `json:"rounds"`
	Prefix   string      `json:"prefix"`
	StartDur dist        `json:"start_call"`
	// CatalogCallsPerRegistration: catalog calls a registering process made
	// during Start, per registration (the catalog's cost per registration).
	CatalogCallsPerRegistration float64 `json:"catalog_calls_per_registration"`
}

// newTables makes every watcher watch a prefix, then, round by round, starts
// the first process of a new table under it and times OnAdd at the watchers.
func (b *bench) newTables(ctx context.Context, tr *tracker) error {
	prefix := b.table + "/versions"
	b.prog.phase("new tables: %d watchers watch the prefix %s; %d rounds of a first registration in a new table, and the floor", len(b.watchers), prefix, b.o.rounds)
	b.mu.Lock()
	watchers := append([]*proc(nil), b.watchers...)
	b.mu.Unlock()
	for _, w := range watchers {
		if err := w.w.WatchPrefix(ctx, prefix); err != nil {
			return fmt.Errorf("new tables: %w", err)
		}
	}
	fl, err := b.startFloor(ctx)
	if err != nil {
		return err
	}
	defer fl.close()
	var add, floorS series
	var starts []time.Duration
	catalogCalls := 0
	for r := 0; r < b.o.rounds; r++ {
		b.prog.step("new tables: round %d/%d", r+1, b.o.rounds)
		table := fmt.Sprintf("%s/v%04d/game", prefix, r)
		b.mu.Lock()
		b.createdTables = append(b.createdTables, table)
		b.mu.Unlock()
		a := tr.expect("add " + table + "/first")
		t0 := time.Now()
		p, err := b.startProc(ctx, procSpec{table: table, id: "first", ttl: b.o.ttl})
		if err != nil {
			return err
		}
		starts = append(starts, time.Since(t0))
		at, err := tr.wait(ctx, a, eventTimeout)
		if err != nil {
			return err
		}
		add.add(p.sent.get("register"), at)
		catalogCalls += p.sent.calls("catalog")
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return err
		}
		start, fat, err := fl.publish(ctx, r)
		if err != nil {
			return err
		}
		floorS.add(start, fat)
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
	rep := newTablesReport{
		AddEach: add.eachDist(), AddAll: add.lastDist(),
		Floor:  latencyPair{Each: floorS.eachDist(), All: floorS.lastDist()},
		Rounds: b.o.rounds, Prefix: prefix, StartDur: distOf(starts, 0),
	}
	if b.o.rounds > 0 {
		rep.CatalogCallsPerRegistration = float64(catalogCalls) / float64(b.o.rounds)
	}
	b.rep.NewTables = rep
	return nil
}
