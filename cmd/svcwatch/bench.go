package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch"
	"github.com/svcwatch/svcwatch/protocol"
)

type benchOpts struct {
	watchers   int
	rounds     int
	ttl        time.Duration
	idle       time.Duration
	procs      int
	pollEvery  time.Duration
	pollRounds int
	cpuprofile string
	storm      stormOpts
}

func benchCommand() *command {
	o := &benchOpts{}
	return &command{
		name:    "bench",
		args:    "[flags]",
		summary: "measure event latency at N watchers, crash detection and idle cost against a PUBLISH floor and polling; -storm N: N processes in a full mesh through an empty restart of a redis-server of its own",
		setFlags: func(fs *flag.FlagSet) {
			fs.IntVar(&o.watchers, "watchers", 50, "watch-only watchers (`N`), each on a client of its own")
			fs.IntVar(&o.rounds, "rounds", 20, "register/stop rounds, crashes and floor publishes")
			fs.DurationVar(&o.ttl, "ttl", 2*time.Second, "TTL of the bench's processes and watchers (keepalive TTL/5, scan 2/5 TTL); -storm uses the library's defaults unless -ttl is given")
			fs.DurationVar(&o.idle, "idle", 10*time.Second, "idle window over which the cost of idle processes is counted")
			fs.IntVar(&o.procs, "procs", 10, "idle processes (`K`, library default settings) in the idle window")
			fs.DurationVar(&o.pollEvery, "poll-every", svcwatch.DefaultScanEvery, "poll interval of the HGETALL baseline (the original design's 4 s)")
			fs.IntVar(&o.pollRounds, "poll-rounds", 3, "adds measured against the polling baseline")
			fs.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of this process to `file`")
			o.storm.register(fs)
		},
		run: func(ctx context.Context, g *globalOpts, fs *flag.FlagSet, out, errOut io.Writer) error {
			return runBench(ctx, g, o, fs, out, errOut)
		},
	}
}

func runBench(ctx context.Context, g *globalOpts, o *benchOpts, fs *flag.FlagSet, out, errOut io.Writer) error {
	// The progress lines and the watchers' logs share errOut from several
	// goroutines; a writer that is not an *os.File needs the lock.
	errOut = &lockedWriter{w: errOut}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.storm.n != 0 {
		return runStorm(ctx, g, o, set, fs, out, errOut)
	}
	for _, f := range stormOnlyFlags {
		if set[f] {
			return usagef("-%s needs -storm N", f)
		}
	}
	switch {
	case fs.NArg() > 0:
		return usagef("takes no arguments")
	case o.watchers < 1 || o.rounds < 1 || o.procs < 0 || o.pollRounds < 0:
		return usagef("-watchers and -rounds must be at least 1, -procs and -poll-rounds not negative")
	case o.ttl < 50*time.Millisecond || o.idle < 0 || o.pollEvery <= 0:
		return usagef("-ttl must be at least 50ms, -idle not negative, -poll-every positive")
	}
	stopProfile, err := startCPUProfile(o.cpuprofile)
	if err != nil {
		return err
	}
	defer stopProfile()

	b := &bench{o: o, g: g, rep: &benchReport{}, prog: &progress{w: errOut, tty: isTerminal(errOut)}}
	b.log = slog.New(slog.NewTextHandler(errOut, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if g.addrSet {
		c, err := g.connect(ctx)
		if err != nil {
			return err
		}
		b.admin = c
		b.rep.Target = g.target()
	} else {
		// No address given: numbers from an in-process Redis written in Go
		// are only good for checking that bench works.
		mr, err := miniredis.Run()
		if err != nil {
			return fmt.Errorf("start miniredis: %w", err)
		}
		defer mr.Close()
		fmt.Fprintln(errOut, "svcwatch: warning: no -addr given: benchmarking an in-process miniredis; its numbers say little about a real Redis")
		g = &globalOpts{addrs: []string{mr.Addr()}, prefix: g.prefix, json: g.json}
		b.g = g
		b.admin = g.newClient(clientOpts{})
		b.rep.Target = "in-process miniredis " + mr.Addr()
		b.rep.Miniredis = true
	}
	defer b.admin.Close()

	b.table = "svcwatch-bench/" + randHex(6)
	b.idleTable = b.table + "/idle"
	// Cleanup runs also after an error or an interrupt, with a context of its
	// own since ctx may be over.
	defer b.cleanup(errOut)

	err = b.run(ctx)
	b.prog.done()
	if err != nil {
		if ctx.Err() != nil {
			return errors.New("bench interrupted; its keys are removed")
		}
		return err
	}
	if g.json {
		return writeJSON(out, b.rep)
	}
	b.rep.print(out)
	return nil
}

// lockedWriter serialises writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// startCPUProfile starts a CPU profile to path, if any; the returned func
// stops it.
func startCPUProfile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// bench is one run.
type bench struct {
	o     *benchOpts
	g     *globalOpts
	admin redis.UniversalClient
	log   *slog.Logger
	prog  *progress
	rep   *benchReport

	table, idleTable string

	mu       sync.Mutex
	started  []*proc // every process and watcher still to stop
	watchers []*proc // the watch-only watchers
	// createdTables: the tables the new-table phase created, deleted at the end.
	createdTables []string
}

// stopAll stops every process still running, concurrently.
func (b *bench) stopAll(timeout time.Duration) {
	b.mu.Lock()
	ps := b.started
	b.started = nil
	b.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func(p *proc) {
			defer wg.Done()
			_ = p.stop(timeout)
		}(p)
	}
	wg.Wait()
}

// cleanup stops everything and deletes every key the bench wrote.
func (b *bench) cleanup(errOut io.Writer) {
	b.stopAll(3 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b.mu.Lock()
	tables := append([]string{b.table, b.idleTable}, b.createdTables...)
	b.mu.Unlock()
	for _, t := range tables {
		// One DEL per table: its keys share a hash tag, so a Cluster takes it.
		if err := b.admin.Del(ctx, protocol.TableKeys(b.g.prefix, t).All()...).Err(); err != nil {
			fmt.Fprintf(errOut, "svcwatch: warning: could not delete the keys of %s: %v\n", t, err)
		}
		if err := uncatalog(ctx, b.admin, b.g.prefix, t); err != nil {
			fmt.Fprintf(errOut, "svcwatch: warning: could not remove %s from the catalog: %v\n", t, err)
		}
	}
	// A catalog the bench alone used goes too (its revision would stay).
	cat := protocol.Catalog(b.g.prefix)
	if err := b.admin.Eval(ctx, dropEmptyCatalog, cat.Script()).Err(); err != nil {
		fmt.Fprintf(errOut, "svcwatch: warning: could not tidy the catalog: %v\n", err)
	}
}

// dropEmptyCatalog deletes the catalog's revision when no table is listed.
const dropEmptyCatalog = `if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end return 0`

// uncatalog removes a table the bench deleted from the catalog, announcing it
// as a collection would.
func uncatalog(ctx context.Context, c redis.UniversalClient, prefix, table string) error {
	cat := protocol.Catalog(prefix)
	// Any score is below this one: the entry goes whatever touched it last.
	return c.Eval(ctx, protocol.CatalogDrop, cat.Script(), cat.Channel, table, "9e15").Err()
}

func (b *bench) run(ctx context.Context) error {
	o, rep := b.o, b.rep
	ka := o.ttl / 5
	scan := min(svcwatch.DefaultScanEvery, o.ttl*2/5)
	rep.Table, rep.Prefix = b.table, b.g.prefix
	rep.Watchers, rep.Rounds = o.watchers, o.rounds
	rep.TTLms, rep.KeepAliveMs, rep.ScanMs = ms(o.ttl), ms(ka), ms(scan)
	rep.GOMAXPROCS = runtime.GOMAXPROCS(0)
	if rep.Miniredis {
		rep.Server = "miniredis, in-process"
	} else {
		rep.Server = serverVersion(ctx, b.admin)
	}

	// A table in use has an epoch and some process in it: an anchor process
	// registers first, so that every measurement below is of the steady state
	// rather than of the table's creation (which watchers already watching
	// take for a new epoch, and answer with a full reload).
	b.prog.phase("registering the anchor process")
	if _, err := b.startProc(ctx, procSpec{table: b.table, id: "anchor", ttl: o.ttl}); err != nil {
		return err
	}

	// N watch-only watchers, each on a client of its own as N processes would be.
	b.prog.phase("starting %d watchers", o.watchers)
	tr := newTracker(o.watchers)
	errs := make(chan error, o.watchers)
	var wg sync.WaitGroup
	for i := 0; i < o.watchers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			// Spread over one scan interval, as processes that start at
			// different times are: watchers started together would run their
			// revision checks (which also reap expired entries) in lockstep.
			if err := sleep(ctx, time.Duration(mrand.Int63n(int64(scan)))); err != nil {
				errs <- err
				return
			}
			w, err := b.startProc(ctx, procSpec{table: b.table, ttl: o.ttl, watchOnly: true, handler: &benchHandler{i: i, tr: tr}})
			if err != nil {
				errs <- err
				return
			}
			b.mu.Lock()
			b.watchers = append(b.watchers, w)
			b.mu.Unlock()
		}(i)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}

	if err := b.propagation(ctx, tr); err != nil {
		return err
	}
	if err := b.newTables(ctx, tr); err != nil {
		return err
	}
	if err := b.crashes(ctx, tr, ka); err != nil {
		return err
	}
	if err := b.polling(ctx); err != nil {
		return err
	}
	// The idle window counts every command the server runs: nothing else of
	// the bench may be running then.
	b.prog.phase("stopping the watchers")
	b.stopAll(5 * time.Second)
	return b.idleCost(ctx)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
