package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/svcwatch/svcwatch"
)

func watchCommand() *command {
	var prefixes listFlag // the repeatable -prefix
	return &command{
		name:    "watch",
		args:    "[-prefix P]... [TABLE...]",
		summary: "print one line per discovery event of the tables and of every table under the prefixes (existing instances first, as adds) until interrupted",
		setFlags: func(fs *flag.FlagSet) {
			fs.Var(&prefixes, "prefix", "watch every table under this path prefix, by whole segments, including tables created later (repeatable; "+
				"the global -prefix before the command is the key prefix)")
		},
		run: func(ctx context.Context, g *globalOpts, fs *flag.FlagSet, out, errOut io.Writer) error {
			return runWatch(ctx, g, prefixes, fs, out, errOut)
		},
	}
}

// watchEvent is one line of `svcwatch -json watch`.
type watchEvent struct {
	Time        string `json:"time"` // local clock, when the handler ran
	Event       string `json:"event"`
	Key         string `json:"key"`
	Table       string `json:"table"`
	ID          string `json:"id"`
	Name        string `json:"name"`
	Incarnation string `json:"incarnation"`
	Desc        string `json:"desc"`
	State       string `json:"state"` // "serving", "draining" or "unhealthy"
	// Meta is the instance's attributes, {} when it has none.
	Meta         map[string]string `json:"meta"`
	RegisteredAt string            `json:"registered_at"` // server clock
	Old          *watchInstance    `json:"old,omitempty"` // update only
}

// watchInstance is what an update changed from.
type watchInstance struct {
	Name  string            `json:"name"`
	Desc  string            `json:"desc"`
	State string            `json:"state"`
	Meta  map[string]string `json:"meta"`
}

// eventPrinter is the watcher's handler. The library calls it from one
// goroutine, so writes never interleave.
type eventPrinter struct {
	out  io.Writer
	json bool
	now  func() time.Time
	err  error // first write error; printing stops after it
}

func (p *eventPrinter) OnAdd(inst svcwatch.Instance) { p.print("add", inst, nil) }
func (p *eventPrinter) OnUpdate(old, cur svcwatch.Instance) {
	p.print("update", cur, &watchInstance{Name: old.Name, Desc: old.Desc, State: old.State.String(), Meta: jsonMeta(old.Meta)})
}
func (p *eventPrinter) OnRemove(inst svcwatch.Instance) { p.print("remove", inst, nil) }

func (p *eventPrinter) print(op string, inst svcwatch.Instance, old *watchInstance) {
	if p.err != nil {
		return
	}
	ts := p.now().UTC().Format(timeFormat)
	if p.json {
		ev := watchEvent{
			Time: ts, Event: op, Key: inst.Key(), Table: inst.Table, ID: inst.ID,
			Name: inst.Name, Incarnation: inst.Incarnation, Desc: inst.Desc,
			State: inst.State.String(), Meta: jsonMeta(inst.Meta), Old: old,
		}
		if !inst.RegisteredAt.IsZero() {
			ev.RegisteredAt = inst.RegisteredAt.UTC().Format(timeFormat)
		}
		b, _ := json.Marshal(ev) // strings only: cannot fail
		_, p.err = p.out.Write(append(b, '\n'))
		return
	}
	var b strings.Builder
	meta := formatMeta(inst.Meta)
	fmt.Fprintf(&b, "%s %s %s name=%s inc=%s state=%s meta=%s desc=%s", ts, op, inst.Key(), inst.Name, inst.Incarnation,
		inst.State, quoteIfNeeded(meta), quoteIfNeeded(inst.Desc))
	// An update says what changed besides the desc: the name, the state
	// (draining is the change an operator watches for), the meta.
	if old != nil {
		if old.Name != inst.Name {
			fmt.Fprintf(&b, " old-name=%s", old.Name)
		}
		if old.State != inst.State.String() {
			fmt.Fprintf(&b, " state %s->%s", old.State, inst.State)
		}
		if oldMeta := formatMeta(old.Meta); oldMeta != meta {
			fmt.Fprintf(&b, " old-meta=%s", quoteIfNeeded(oldMeta))
		}
	}
	b.WriteByte('\n')
	_, p.err = io.WriteString(p.out, b.String())
}

// jsonMeta is meta for JSON: {} rather than null when empty.
func jsonMeta(meta map[string]string) map[string]string {
	if meta == nil {
		return map[string]string{}
	}
	return meta
}

// quoteIfNeeded keeps a desc on one line and in one field: quoted when it has
// white space or control characters, as is otherwise (JSON stays readable).
func quoteIfNeeded(s string) string {
	if s == "" {
		return `""`
	}
	if strings.IndexFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return strconv.Quote(s)
	}
	return s
}

func runWatch(ctx context.Context, g *globalOpts, prefixes []string, fs *flag.FlagSet, out, errOut io.Writer) error {
	tables := fs.Args()
	if len(tables) == 0 && len(prefixes) == 0 {
		return usagef("needs at least one TABLE or -prefix")
	}
	for _, t := range tables {
		if err := checkTableArg(t); err != nil {
			return err
		}
	}
	c, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()

	p := &eventPrinter{out: out, json: g.json, now: time.Now}
	w, err := svcwatch.NewRedisServiceWatcher(c, svcwatch.Instance{},
		svcwatch.WatchOnly(),
		svcwatch.WithTables(tables...),
		svcwatch.WithKeyPrefix(g.prefix),
		svcwatch.WithHandler(p),
		// The library's warnings (Redis gone, unreadable data) belong on stderr
		// next to the events.
		svcwatch.WithLogger(slog.New(slog.NewTextHandler(errOut, &slog.HandlerOptions{Level: slog.LevelWarn}))),
	)
	if errors.Is(err, svcwatch.ErrInvalid) {
		return usageError{err.Error()}
	}
	if err != nil {
		return err
	}
	for _, p := range prefixes {
		if err := w.WatchPrefix(ctx, p); err != nil { // before Start: only checked and recorded
			return usageError{err.Error()}
		}
	}
	// Start keeps retrying while Redis is away, until the interrupt.
	if err := w.Start(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // interrupted while starting
		}
		return err
	}
	what := strings.Join(w.Tables(), ", ")
	if len(prefixes) > 0 {
		what = strings.TrimPrefix(what+"; prefixes "+strings.Join(prefixes, ", "), "; ")
	}
	fmt.Fprintf(errOut, "svcwatch: watching %s on %s; interrupt to stop\n", what, g.target())
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.Stop(sctx); err != nil {
		return err
	}
	return p.err
}
