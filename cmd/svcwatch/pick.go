package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/svcwatch/svcwatch"
)

// pickStartTimeout bounds the load of the table: pick is a one-shot command,
// and the watcher's Start otherwise retries for as long as Redis is away.
const pickStartTimeout = 15 * time.Second

func pickCommand() *command {
	var n int
	return &command{
		name: "pick",
		args: "TABLE KEY...",
		summary: `print the owner of each key as every watcher's Pick chooses it: "KEY ID NAME", ` +
			`or "KEY -" and exit status 1 when no instance serves; -n N: PickN's N candidates`,
		setFlags: func(fs *flag.FlagSet) {
			fs.IntVar(&n, "n", 1, "print PickN's `N` candidates per key, the owner first, one line each")
		},
		run: func(ctx context.Context, g *globalOpts, fs *flag.FlagSet, out, errOut io.Writer) error {
			return runPick(ctx, g, fs, out, errOut, n)
		},
	}
}

// pickRow is one key as `svcwatch -json pick` shows it.
type pickRow struct {
	Key   string        `json:"key"`
	Table string        `json:"table"`
	Owner *pickInstance `json:"owner"` // Pick's answer; null when no instance serves
	// Candidates are PickN's answer with -n N (N > 1), the owner first.
	Candidates []pickInstance `json:"candidates,omitempty"`
}

type pickInstance struct {
	ID     string            `json:"id"`
	Name   string            `json:"name"`
	Weight int               `json:"weight"`
	Meta   map[string]string `json:"meta,omitempty"`
}

func pickInstanceOf(in svcwatch.Instance) pickInstance {
	return pickInstance{ID: in.ID, Name: in.Name, Weight: in.Weight(), Meta: in.Meta}
}

func runPick(ctx context.Context, g *globalOpts, fs *flag.FlagSet, out, errOut io.Writer, n int) error {
	if fs.NArg() < 2 {
		return usagef("needs a TABLE and at least one KEY, got %d arguments", fs.NArg())
	}
	if n < 1 {
		return usagef("-n must be at least 1, got %d", n)
	}
	table, keys := fs.Arg(0), fs.Args()[1:]
	if err := checkTableArg(table); err != nil {
		return err
	}
	c, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()

	w, err := svcwatch.NewRedisServiceWatcher(c, svcwatch.Instance{Table: table},
		svcwatch.WatchOnly(),
		svcwatch.WithKeyPrefix(g.prefix),
		svcwatch.WithLogger(slog.New(slog.NewTextHandler(errOut, &slog.HandlerOptions{Level: slog.LevelWarn}))),
	)
	if errors.Is(err, svcwatch.ErrInvalid) {
		return usageError{err.Error()}
	}
	if err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, pickStartTimeout)
	err = w.Start(sctx)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("interrupted while loading table %s", table)
		}
		if sctx.Err() != nil {
			return fmt.Errorf("table %s not loaded within %v: %w", table, pickStartTimeout, err)
		}
		return err
	}
	// The answers come from the loaded view; the watcher has nothing more to do.
	rows := make([]pickRow, 0, len(keys))
	served := true
	for _, key := range keys {
		r := pickRow{Key: key, Table: table}
		if owner, ok := w.Pick(table, key); ok {
			o := pickInstanceOf(owner)
			r.Owner = &o
		} else {
			served = false
		}
		if n > 1 {
			for _, in := range w.PickN(table, key, n) {
				r.Candidates = append(r.Candidates, pickInstanceOf(in))
			}
		}
		rows = append(rows, r)
	}
	all := w.Services(table)
	stopCtx, stopCancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer stopCancel()
	if err := w.Stop(stopCtx); err != nil {
		return err
	}

	if err := writePick(out, rows, g.json, n); err != nil {
		return err
	}
	if !served {
		// Exit status 1, the rows ("KEY -") printed all the same. In one view
		// Pick has an owner for every key or for none: nobody served (a change
		// between two keys aside).
		if len(all) == 0 {
			return fmt.Errorf("no serving instance: table %s has no instance (prefix %q)", table, g.prefix)
		}
		states := map[string]int{}
		for _, in := range all {
			s := in.State.String()
			if in.State == svcwatch.Serving && in.Weight() == 0 { // takes no keys either
				s = "weight 0"
			}
			states[s]++
		}
		var parts []string
		for _, s := range []string{"draining", "unhealthy", "weight 0"} {
			if states[s] > 0 {
				parts = append(parts, fmt.Sprintf("%d %s", states[s], s))
			}
		}
		if states["serving"] > 0 || len(parts) == 0 { // the table changed meanwhile
			return fmt.Errorf("no serving instance in table %s for some keys: the table changed while they were picked", table)
		}
		return fmt.Errorf("no serving instance in table %s (%d instances: %s)", table, len(all), strings.Join(parts, ", "))
	}
	return nil
}

// writePick prints the rows: JSON, or one line per key, "KEY ID NAME" (the
// owner) or "KEY -", and with -n N one line per candidate, the owner first.
// KEY is quoted when it has white space, like a desc in watch.
func writePick(out io.Writer, rows []pickRow, asJSON bool, n int) error {
	if asJSON {
		return writeJSON(out, rows)
	}
	var b strings.Builder
	for _, r := range rows {
		key := quoteIfNeeded(r.Key)
		cands := r.Candidates
		if n == 1 && r.Owner != nil {
			cands = []pickInstance{*r.Owner}
		}
		if len(cands) == 0 {
			fmt.Fprintf(&b, "%s -\n", key)
		}
		for _, c := range cands {
			fmt.Fprintf(&b, "%s %s %s\n", key, c.ID, c.Name)
		}
	}
	_, err := io.WriteString(out, b.String())
	return err
}
