package main

// bench_storm.go: `svcwatch bench -storm N`, the registry at scale. N
// processes (each a real RedisServiceWatcher on a client of its own) register
// in one table and watch it, a full mesh, on a redis-server the bench starts
// itself; the bench measures the start, an idle window, then restarts Redis
// empty and measures how the N processes recover: re-registration, every view
// equal to Redis again, false removals, events, full reads and Redis CPU.
//
// Everything runs on the goroutine of runStorm except the starts and stops
// (bounded worker goroutines), the memory guard and the watchers' own
// goroutines; the handlers only count.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"runtime/metrics"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch"
	"github.com/svcwatch/svcwatch/protocol"
)

// stormOpts are the -storm flags.
type stormOpts struct {
	n        int
	idle     time.Duration
	server   string
	parallel int
	wait     time.Duration
	settle   time.Duration
	args     string
}

func (so *stormOpts) register(fs *flag.FlagSet) {
	fs.IntVar(&so.n, "storm", 0, "storm test instead of the latency bench: `N` processes registered in one table and all watching it, on a redis-server "+
		"the bench runs itself and restarts empty (0: off; refuses -addr; library defaults unless -ttl is given)")
	fs.DurationVar(&so.idle, "storm-idle", 20*time.Second, "storm: idle window over which Redis CPU and commands are counted")
	fs.StringVar(&so.server, "storm-redis-server", "redis-server", "storm: the redis-server binary (`path`) to run on a free loopback port")
	fs.StringVar(&so.args, "storm-redis-args", "", "storm: extra redis-server `arguments`, space-separated, appended last (e.g. \"--tcp-backlog 4096\")")
	fs.IntVar(&so.parallel, "storm-parallel", 16, "storm: processes started (and stopped) at a time")
	fs.DurationVar(&so.wait, "storm-wait", 3*time.Minute, "storm: longest wait for every view to converge, after the start and after the restart")
	fs.DurationVar(&so.settle, "storm-settle", 0, "storm: how long events are still counted after the views converged again (0: one TTL plus one scan interval)")
}

// stormOnlyFlags and benchOnlyFlags say which flags belong to which mode.
var (
	stormOnlyFlags = []string{"storm-idle", "storm-redis-server", "storm-redis-args", "storm-parallel", "storm-wait", "storm-settle"}
	benchOnlyFlags = []string{"watchers", "rounds", "idle", "procs", "poll-every", "poll-rounds"}
)

const (
	stormTable      = "svcwatch-bench/storm"
	stormStartLimit = time.Minute // one process's Start
	// A process holds up to 2 pooled connections and its pub/sub one.
	stormConnsPerProc = 3
)

func runStorm(ctx context.Context, g *globalOpts, o *benchOpts, set map[string]bool, fs *flag.FlagSet, out, errOut io.Writer) error {
	so := &o.storm
	switch {
	case fs.NArg() > 0:
		return usagef("takes no arguments")
	case so.n < 0:
		return usagef("-storm must not be negative")
	case g.addrSet:
		return usagef("-storm starts, empties and restarts a redis-server of its own; it refuses -addr and -sentinel-master so that it never flushes a Redis it does not own")
	case g.tls:
		return usagef("-storm runs its own redis-server, without TLS; drop -tls")
	case so.idle < 0 || so.parallel < 1 || so.wait <= 0 || so.settle < 0:
		return usagef("-storm-idle and -storm-settle must not be negative, -storm-parallel at least 1, -storm-wait positive")
	case set["ttl"] && o.ttl < 50*time.Millisecond:
		return usagef("-ttl must be at least 50ms")
	}
	for _, f := range benchOnlyFlags {
		if set[f] {
			return usagef("-%s does not apply to -storm", f)
		}
	}
	if !stormSupported {
		return errors.New("-storm runs a redis-server child and raises RLIMIT_NOFILE, which it does on Unix only")
	}
	stopProfile, err := startCPUProfile(o.cpuprofile)
	if err != nil {
		return err
	}
	defer stopProfile()

	s := &storm{
		o:      so,
		n:      so.n,
		prefix: g.prefix,
		table:  stormTable,
		prog:   &progress{w: errOut, tty: isTerminal(errOut)},
		logs:   &logCounter{counts: map[logKey]int64{}},
		rep:    &stormReport{N: so.n, Parallel: so.parallel, GOMAXPROCS: runtime.GOMAXPROCS(0)},
	}
	s.keys = protocol.TableKeys(s.prefix, s.table)
	s.obs = observed{}
	s.events.base = time.Now()
	s.events.removed = map[string]bool{}
	s.events.phase.Store(new(string))
	if set["ttl"] {
		s.ttl = o.ttl
	}
	s.fillSettings()

	err = s.run(ctx)
	s.cleanup()
	s.prog.done()
	if err != nil {
		s.rep.Stopped = fmt.Sprintf("during %s: %v", s.rep.phase, err)
		if ctx.Err() != nil {
			s.rep.Stopped = fmt.Sprintf("during %s: interrupted", s.rep.phase)
		}
	}
	s.rep.Logs = s.logs.list()
	s.rep.FalseRemovals = s.events.removes.Load() // every OnRemove before the final stop
	s.describeRemovals()
	s.rep.verdict()
	if g.json {
		if jerr := writeJSON(out, s.rep); jerr != nil {
			return jerr
		}
	} else {
		s.rep.print(out)
	}
	if err != nil {
		if ctx.Err() != nil {
			return errors.New("storm interrupted; its processes and redis-server are stopped")
		}
		return fmt.Errorf("storm stopped %s", s.rep.Stopped)
	}
	return nil
}

// storm is one run.
type storm struct {
	o      *stormOpts
	n      int
	ttl    time.Duration // 0: the library's default
	prefix string
	table  string
	keys   protocol.Keys
	prog   *progress
	rep    *stormReport
	logs   *logCounter
	events stormEvents

	srv   *stormServer
	admin *redis.Client
	obs   observed // the bench's own commands since the restart

	restarted time.Time // when the new server was started

	ids   []string // sorted
	mu    sync.Mutex
	procs []*stormProc // started, in the order of ids once all are
}

// stormProc is one process: a watcher on a client of its own.
type stormProc struct {
	id      string
	w       *svcwatch.RedisServiceWatcher
	c       *redis.Client
	stopped atomic.Bool
}

func (p *stormProc) stop(timeout time.Duration) {
	if p.stopped.Swap(true) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_ = p.w.Stop(ctx)
	_ = p.c.Close()
}

// stormEvents counts what every watcher's handler is told. Nobody dies in a
// storm until the final stop, so before it every OnRemove is a false one.
type stormEvents struct {
	adds, updates, removes atomic.Int64
	stopping               atomic.Bool
	base                   time.Time
	phase                  atomic.Pointer[string]

	mu      sync.Mutex
	samples []removal       // the first false removal of each of the first removed processes
	victims int             // watchers told at least one
	removed map[string]bool // processes some watcher was told of
}

// removal is one false removal.
type removal struct {
	at      time.Time
	watcher string
	inst    svcwatch.Instance
	phase   string
}

const maxRemovalSamples = 10

type stormHandler struct {
	e       *stormEvents
	id      string
	removes *atomic.Int64 // this watcher's false removals
}

func (h stormHandler) OnAdd(svcwatch.Instance)         { h.e.adds.Add(1) }
func (h stormHandler) OnUpdate(_, _ svcwatch.Instance) { h.e.updates.Add(1) }
func (h stormHandler) OnRemove(inst svcwatch.Instance) {
	if h.e.stopping.Load() {
		return
	}
	now := time.Now()
	h.e.removes.Add(1)
	first := h.removes.Add(1) == 1
	h.e.mu.Lock()
	defer h.e.mu.Unlock()
	if first {
		h.e.victims++
	}
	if h.e.removed[inst.ID] {
		return
	}
	h.e.removed[inst.ID] = true
	if len(h.e.samples) < maxRemovalSamples {
		h.e.samples = append(h.e.samples, removal{at: now, watcher: h.id, inst: inst, phase: *h.e.phase.Load()})
	}
}

// describeRemovals puts the false removals' samples into the report.
func (s *storm) describeRemovals() {
	s.events.mu.Lock()
	defer s.events.mu.Unlock()
	s.rep.RemovalWatchers, s.rep.RemovedProcesses = s.events.victims, len(s.events.removed)
	for _, r := range s.events.samples {
		when := fmt.Sprintf("%.3fs into the run", r.at.Sub(s.events.base).Seconds())
		if !s.restarted.IsZero() && !r.at.Before(s.restarted) {
			when = fmt.Sprintf("%.3fs after the new server started", r.at.Sub(s.restarted).Seconds())
		}
		s.rep.RemovalSamples = append(s.rep.RemovalSamples, fmt.Sprintf("%s told OnRemove(%s, incarnation %s) %s (during: %s)",
			r.watcher, r.inst.ID, r.inst.Incarnation, when, r.phase))
	}
}

// counts is a snapshot of the events and of the watchers' counters.
type counts struct {
	adds, updates, removes int64
	fullLoads, rereg       uint64
}

func (s *storm) snapshot() counts {
	c := counts{adds: s.events.adds.Load(), updates: s.events.updates.Load(), removes: s.events.removes.Load()}
	s.mu.Lock()
	procs := s.procs
	s.mu.Unlock()
	for _, p := range procs {
		st := p.w.Stats()
		c.fullLoads += st.FullLoads
		c.rereg += st.Reregistrations
	}
	return c
}

func (c counts) sub(b counts) eventReport {
	return eventReport{
		Adds: c.adds - b.adds, Updates: c.updates - b.updates, Removes: c.removes - b.removes,
		FullLoads: c.fullLoads - b.fullLoads, Reregistrations: c.rereg - b.rereg,
	}
}

// phase names what runs now, for the progress line and for the report of a
// run that stops.
func (s *storm) phase(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.rep.phase = msg
	s.events.phase.Store(&msg)
	s.prog.phase("storm: %s", msg)
}

func (s *storm) fillSettings() {
	ttl, src := svcwatch.DefaultTTL, "library defaults (-ttl not given)"
	if s.ttl > 0 {
		ttl, src = s.ttl, "-ttl "+s.ttl.String()+" (keepalive and scan follow the library's rules)"
	}
	s.rep.Settings = src
	s.rep.TTLms = ms(ttl)
	s.rep.KeepAliveMs = ms(ttl / 5)
	s.rep.ScanMs = ms(min(svcwatch.DefaultScanEvery, ttl*2/5))
	s.rep.Table, s.rep.Prefix = s.table, s.prefix
}

func (s *storm) settle() time.Duration {
	if s.o.settle > 0 {
		return s.o.settle
	}
	return msDur(s.rep.TTLms) + msDur(s.rep.ScanMs)
}

func (s *storm) run(parent context.Context) error {
	rep := s.rep
	s.phase("checking limits")
	avail := memAvailable()
	if avail > 0 {
		rep.MemBudgetMiB = (avail + goMemory()) >> 20
	}
	var err error
	if rep.NoFile.Before, rep.NoFile.After, rep.NoFile.Hard, err = raiseNoFile(); err != nil {
		return fmt.Errorf("RLIMIT_NOFILE: %w", err)
	}
	need := uint64(stormConnsPerProc*s.n + 256)
	rep.NoFile.Need = need
	if rep.NoFile.After < need {
		return fmt.Errorf("does not fit: %d processes need about %d file descriptors in this process (%d connections each plus the bench's), "+
			"but RLIMIT_NOFILE is %d (hard limit %d); raise the hard limit (ulimit -Hn) or lower -storm",
			s.n, need, stormConnsPerProc, rep.NoFile.After, rep.NoFile.Hard)
	}

	// The memory guard stops the run, with its reason, before the machine
	// runs out.
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	if rep.MemBudgetMiB > 0 {
		go s.memoryGuard(ctx, cancel, rep.MemBudgetMiB<<20)
	}
	cause := func(err error) error {
		if c := context.Cause(ctx); c != nil && parent.Err() == nil && !errors.Is(c, context.Canceled) {
			return c
		}
		return err
	}

	s.phase("starting redis-server")
	rep.MaxClients = stormConnsPerProc*s.n + s.n + 100
	if s.srv, err = startStormServer(ctx, s.o.server, rep.MaxClients, strings.Fields(s.o.args)); err != nil {
		return cause(err)
	}
	rep.Addr, rep.ServerCmd = s.srv.addr(), s.srv.cmdline()
	s.admin = s.srv.client(redis.Options{PoolSize: 4})
	rep.Server = serverVersion(ctx, s.admin)
	if v, err := s.admin.ConfigGet(ctx, "maxclients").Result(); err == nil {
		if got, _ := strconv.Atoi(v["maxclients"]); got > 0 && got < stormConnsPerProc*s.n+10 {
			return fmt.Errorf("does not fit: redis-server accepts only %d clients (maxclients, which Redis lowers to what its RLIMIT_NOFILE allows), %d processes need %d",
				got, s.n, stormConnsPerProc*s.n+10)
		}
	}

	if err := s.baseline(ctx); err != nil {
		return cause(err)
	}

	s.ids = make([]string, s.n)
	for i := range s.ids {
		s.ids[i] = fmt.Sprintf("p%05d", i)
	}
	if err := s.startAll(ctx); err != nil {
		return cause(err)
	}

	s.phase("waiting until every view holds the %d processes", s.n)
	conv, err := s.converge(ctx, rep.Start.began, s.o.wait)
	rep.Start.Converge = conv
	if err != nil {
		return cause(err)
	}
	rep.Start.Events = s.snapshot().sub(counts{})
	rep.Start.GoMemMiB, rep.Start.Goroutines = goMemory()>>20, runtime.NumGoroutine()
	if info, err := s.info(ctx, "cpu"); err == nil {
		rep.Start.RedisCPUS = round3(cpuSeconds(info))
	}

	if err := s.idle(ctx); err != nil {
		return cause(err)
	}
	if err := s.restart(ctx); err != nil {
		return cause(err)
	}

	s.phase("stopping the %d processes", s.n)
	s.events.stopping.Store(true)
	t0 := time.Now()
	s.stopAll(10*time.Second, s.o.parallel*4)
	rep.StopS = round3(time.Since(t0).Seconds())
	return nil
}

// startAll starts the processes, o.parallel at a time.
func (s *storm) startAll(ctx context.Context) error {
	rep := &s.rep.Start
	s.phase("starting %d processes, %d at a time", s.n, s.o.parallel)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan int)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
		calls    = make([]time.Duration, 0, s.n)
		started  atomic.Int64
	)
	begin := time.Now()
	rep.began = begin
	for w := 0; w < s.o.parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				t0 := time.Now()
				err := s.startProc(ctx, s.ids[i])
				d := time.Since(t0)
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = fmt.Errorf("%d of %d processes started; %s: %w", started.Load(), s.n, s.ids[i], err)
						cancel()
					}
				} else {
					calls = append(calls, d)
				}
				mu.Unlock()
				if err == nil {
					if k := started.Add(1); k%50 == 0 {
						s.prog.step("storm: %d of %d processes started", k, s.n)
					}
				}
			}
		}()
	}
feed:
	for i := range s.ids {
		select {
		case jobs <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	rep.Seconds = round3(time.Since(begin).Seconds())
	rep.StartCall = distOf(calls, 0)
	rep.Started = int(started.Load())
	if firstErr != nil {
		return firstErr
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	// The index order of ids, for the views' checks.
	s.mu.Lock()
	sort.Slice(s.procs, func(i, j int) bool { return s.procs[i].id < s.procs[j].id })
	s.mu.Unlock()
	return nil
}

// startProc builds and starts one process on a client of its own.
func (s *storm) startProc(ctx context.Context, id string) error {
	c := redis.NewClient(&redis.Options{
		Addr: s.srv.addr(), ContextTimeoutEnabled: true, PoolSize: 2, MinIdleConns: 0,
	})
	opts := []svcwatch.Option{
		svcwatch.WithKeyPrefix(s.prefix),
		svcwatch.WithLogger(slog.New(s.logs)),
		svcwatch.WithHandler(stormHandler{e: &s.events, id: id, removes: new(atomic.Int64)}),
	}
	if s.ttl > 0 {
		opts = append(opts, svcwatch.WithTTL(s.ttl))
	}
	n, _ := strconv.Atoi(id[1:])
	self := svcwatch.Instance{Table: s.table, ID: id,
		Name: fmt.Sprintf("10.%d.%d.%d:7000", n>>16&0xff, n>>8&0xff, n&0xff), Desc: `{"zone":1,"load":0}`}
	w, err := svcwatch.NewRedisServiceWatcher(c, self, opts...)
	if err != nil {
		_ = c.Close()
		return err
	}
	p := &stormProc{id: id, w: w, c: c}
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
	sctx, cancel := context.WithTimeout(ctx, stormStartLimit)
	defer cancel()
	err = w.Start(sctx)
	if err != nil && ctx.Err() == nil && sctx.Err() != nil {
		return fmt.Errorf("Start did not return within %v: %w", stormStartLimit, err)
	}
	return err
}

// stopAll stops every process still running, par at a time.
func (s *storm) stopAll(timeout time.Duration, par int) {
	s.mu.Lock()
	procs := s.procs
	s.mu.Unlock()
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for _, p := range procs {
		if p.stopped.Load() {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(p *stormProc) {
			defer wg.Done()
			p.stop(timeout)
			<-sem
		}(p)
	}
	wg.Wait()
}

// cleanup stops whatever is left, then the server, after success or not.
func (s *storm) cleanup() {
	s.events.stopping.Store(true)
	s.stopAll(2*time.Second, 256)
	if s.admin != nil {
		_ = s.admin.Close()
	}
	if s.srv != nil {
		s.srv.close()
	}
}

// idle counts what the N registered, watching, idle processes make Redis do.
func (s *storm) idle(ctx context.Context) error {
	rep := &s.rep.Idle
	rep.WindowS = s.o.idle.Seconds()
	if s.o.idle == 0 {
		rep.NA = "skipped (-storm-idle 0)"
		return nil
	}
	s.phase("idle window of %v", s.o.idle)
	cpu0, st0, cs0, err := s.serverCounters(ctx)
	if err != nil {
		return err
	}
	ev0, pcpu0, busy0, t0 := s.snapshot(), processCPU(), machineBusy(), time.Now()
	for left := s.o.idle; left > 0; left -= time.Second {
		s.prog.step("storm: idle window, %v left", left.Round(time.Second))
		if err := sleep(ctx, min(left, time.Second)); err != nil {
			return err
		}
	}
	secs := time.Since(t0).Seconds()
	pcpu, busy, ev := processCPU()-pcpu0, machineBusy(), s.snapshot().sub(ev0)
	cpu1, st1, cs1, err := s.serverCounters(ctx)
	if err != nil {
		return err
	}
	n := float64(s.n)
	rep.WindowS = round3(secs)
	rep.RedisCPUS = round3(cpu1 - cpu0)
	rep.RedisCPUPerSecPer1000 = round6((cpu1 - cpu0) / secs / n * 1000)
	rep.NetCPUPerSecPer1000 = round6(max(0, (cpu1-cpu0)/secs-rep.BaselineCPUPerSec) / n * 1000)
	cmds := float64(st1["total_commands_processed"] - st0["total_commands_processed"] - 3) // the bench's own INFO calls
	rep.CommandsPerSec = round3(cmds / secs)
	rep.CommandsPerSecPerProc = round3(cmds / secs / n)
	var rt float64
	for name, c := range cs1 {
		if d := c.sub(cs0[name]).calls; d > 0 && clientCommand(name) {
			rt += float64(d)
			rep.RoundTrips = append(rep.RoundTrips, idleCommand{Command: name, Calls: d, RoundTrip: true,
				PerProcPerSec: round3(float64(d) / secs / n), UsecPerCall: round3(float64(c.sub(cs0[name]).usec) / float64(d))})
		}
	}
	sortCommands(rep.RoundTrips)
	rep.RoundTripsPerSecPerProc = round3(rt / secs / n)
	rep.Events = ev
	rep.ProcessCPUPerSec = round3(pcpu.Seconds() / secs)
	rep.OthersCPUPerSec = othersCPU(busy0, busy, pcpu, cpu1-cpu0, secs)
	return nil
}

// baseline measures what the empty server costs by itself (its timers), so
// that the idle figure can be read net of it.
func (s *storm) baseline(ctx context.Context) error {
	d := min(s.o.idle, 5*time.Second)
	if d <= 0 {
		return nil
	}
	s.phase("measuring the empty server's own CPU for %v", d)
	info, err := s.info(ctx, "cpu")
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := sleep(ctx, d); err != nil {
		return err
	}
	info1, err := s.info(ctx, "cpu")
	if err != nil {
		return err
	}
	s.rep.Idle.BaselineCPUPerSec = round6((cpuSeconds(info1) - cpuSeconds(info)) / time.Since(t0).Seconds())
	return nil
}

// serverCounters reads INFO cpu, INFO stats and INFO commandstats.
func (s *storm) serverCounters(ctx context.Context) (cpu float64, stats map[string]int64, cmds map[string]cmdCounter, err error) {
	info, err := s.info(ctx, "cpu")
	if err != nil {
		return 0, nil, nil, err
	}
	st, err := s.info(ctx, "stats")
	if err != nil {
		return 0, nil, nil, err
	}
	s.obs.add("info")
	stats = map[string]int64{}
	for k, v := range st {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			stats[k] = n
		}
	}
	cmds, err = commandStats(ctx, s.admin)
	return cpuSeconds(info), stats, cmds, err
}

// info reads an INFO section with the admin client, counted as the bench's.
func (s *storm) info(ctx context.Context, section string) (map[string]string, error) {
	s.obs.add("info")
	return redisInfo(ctx, s.admin, section)
}

func (o observed) add(names ...string) {
	for _, n := range names {
		o[n]++
	}
}

// othersCPU is the CPU the machine's other processes used per second: all
// of it less this process and Redis; -1 if unknown.
func othersCPU(busy0, busy1, self time.Duration, redisCPU, secs float64) float64 {
	if busy0 < 0 || busy1 < 0 || secs <= 0 {
		return -1
	}
	return round3(max(0, ((busy1-busy0).Seconds()-self.Seconds()-redisCPU)/secs))
}

func cpuSeconds(info map[string]string) float64 {
	u, _ := strconv.ParseFloat(info["used_cpu_user"], 64)
	y, _ := strconv.ParseFloat(info["used_cpu_sys"], 64)
	return u + y
}

// observed counts the commands the bench itself sends to the server, so that
// their share of the server's time can be estimated.
type observed map[string]int64

// serverMs estimates the server time of the counted commands from the
// average time per call of each command in INFO commandstats.
func (o observed) serverMs(cs map[string]cmdCounter) float64 {
	var us float64
	for name, n := range o {
		if c := cs[name]; c.calls > 0 {
			us += float64(n) * float64(c.usec) / float64(c.calls)
		}
	}
	return us / 1000
}

// restart restarts Redis empty and measures the recovery.
func (s *storm) restart(ctx context.Context) error {
	rep := &s.rep.Restart
	s.phase("restarting redis-server empty (SHUTDOWN NOSAVE, same binary, same port)")
	ev0, pcpu0, busy0 := s.snapshot(), processCPU(), machineBusy()
	t, err := s.srv.restartEmpty(ctx)
	if err != nil {
		return err
	}
	s.restarted = t.spawned
	rep.ShutdownMs = ms(t.exited.Sub(t.shutdown))
	rep.SpawnToUpMs = ms(t.up.Sub(t.spawned))
	s.obs = observed{}
	drops := listenDrops()
	s.phase("waiting for re-registration and for every view to equal Redis")
	conv, err := s.converge(ctx, t.spawned, s.o.wait)
	rep.Converge = conv
	rep.Events = s.snapshot().sub(ev0)
	rep.FalseRemovals = rep.Events.Removes
	el, pcpu, busy := time.Since(t.spawned).Seconds(), processCPU()-pcpu0, machineBusy()
	if d := listenDrops(); drops >= 0 && d >= 0 {
		rep.ListenDrops = d - drops
	} else {
		rep.ListenDrops = -1
	}
	if err != nil {
		return err
	}
	cpu, st, cs, err := s.serverCounters(ctx)
	if err != nil {
		return err
	}
	// The new server's counters start at zero: they are the storm's.
	rep.RedisCPUS = round3(cpu)
	rep.ProcessCPUPerSec = round3(pcpu.Seconds() / el)
	rep.OthersCPUPerSec = othersCPU(busy0, busy, pcpu, cpu, el)
	rep.Commands = st["total_commands_processed"]
	rep.Publishes = cs["publish"].calls
	rep.NetOutputMiB = round3(float64(st["total_net_output_bytes"]) / (1 << 20))
	rep.ObserverMs = round3(s.obs.serverMs(cs))

	settle := s.settle()
	s.phase("counting events for %v after convergence", settle)
	ev1 := s.snapshot()
	for left := settle; left > 0; left -= time.Second {
		s.prog.step("storm: after convergence, %v left", left.Round(time.Second))
		if err := sleep(ctx, min(left, time.Second)); err != nil {
			return err
		}
	}
	rep.Settle.WindowS = round3(settle.Seconds())
	rep.Settle.Events = s.snapshot().sub(ev1)
	if info, err := s.info(ctx, "cpu"); err == nil {
		rep.Settle.RedisCPUS = round3(cpuSeconds(info) - cpu)
	}
	rep.FalseRemovals += rep.Settle.Events.Removes
	live, err := s.readLive(ctx)
	if err != nil {
		return err
	}
	bad := 0
	if slices.Equal(live, s.ids) {
		for _, p := range s.procs {
			if !s.viewIs(p, s.ids) {
				bad++
			}
		}
	} else {
		bad = -1
	}
	rep.Settle.ViewsDiffer = bad
	return nil
}

// converge waits until every id is registered (HLEN of the record hash) and
// every view equals the live ids read from Redis, all N. Times are from t0.
func (s *storm) converge(ctx context.Context, t0 time.Time, limit time.Duration) (*convergeReport, error) {
	r := &convergeReport{RegisteredS: -1, ConvergedS: -1}
	n := len(s.procs)
	at := make([]time.Duration, n) // when each view was first seen equal (in the current streak); -1: not
	for i := range at {
		at[i] = -1
	}
	pending := n
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	half, ninety, checked := false, false, false
	var lastLive []string
	for i := 0; ; i++ {
		if r.RegisteredS < 0 {
			i = 0 // the views are checked at once when all registered, then every 100ms
			s.obs.add("hlen")
			if h, err := s.admin.HLen(ctx, s.keys.Inst).Result(); err == nil {
				r.Registered = h
				el := round3(time.Since(t0).Seconds())
				if !half && h*2 >= int64(s.n) {
					half, r.Registered50S = true, el
				}
				if !ninety && h*10 >= int64(s.n)*9 {
					ninety, r.Registered90S = true, el
				}
				if h >= int64(s.n) {
					r.RegisteredS = el
				}
			}
		}
		if i%5 == 0 && r.RegisteredS >= 0 {
			live, err := s.readLive(ctx)
			if err == nil {
				lastLive = live
			}
			if err == nil && slices.Equal(live, s.ids) {
				pass := time.Now()
				example := ""
				for k, p := range s.procs {
					if at[k] >= 0 {
						continue
					}
					if v := p.w.Services(s.table); sameIDs(v, s.ids) {
						at[k] = time.Since(t0)
						pending--
					} else if example == "" {
						example = s.diffView(p.id, v)
					}
				}
				r.PassMs = max(r.PassMs, ms(time.Since(pass)))
				r.Example = example
				if !checked {
					// What the first check found, to tell a slow view from a stuck one.
					checked = true
					r.FirstCheckDiffer, r.FirstCheckExample = pending, example
				}
				if pending == 0 {
					// Confirm with one pass over every view at once.
					live, err := s.readLive(ctx)
					ok := err == nil && slices.Equal(live, s.ids)
					pass := time.Now()
					for k, p := range s.procs {
						if ok && !s.viewIs(p, s.ids) {
							at[k] = -1
							pending++
						}
					}
					r.PassMs = max(r.PassMs, ms(time.Since(pass)))
					if ok && pending == 0 {
						r.ConvergedS = round3(slices.Max(at).Seconds())
						r.Slowest = s.procs[slices.Index(at, slices.Max(at))].id
						r.PerView = distOf(at, 0)
						return r, nil
					}
				}
			}
		}
		if time.Now().After(deadline) {
			return r, s.notConverged(r, at, lastLive, limit)
		}
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-tick.C:
		}
	}
}

// notConverged describes the state after a wait that ran out.
func (s *storm) notConverged(r *convergeReport, at []time.Duration, live []string, limit time.Duration) error {
	for _, d := range at {
		if d < 0 {
			r.ViewsNotConverged++
		}
	}
	if r.RegisteredS < 0 {
		return fmt.Errorf("not every process registered within %v: %d of %d in the record hash (views are checked once all are)",
			limit, r.Registered, s.n)
	}
	if len(live) != s.n {
		return fmt.Errorf("no convergence within %v: Redis held only %d of the %d registered live at the last check "+
			"(the others' deadlines had passed: their heartbeats were late), so the views were not compared", limit, len(live), s.n)
	}
	if r.Example != "" {
		r.Example = "e.g. " + r.Example
	}
	return fmt.Errorf("views did not converge within %v: %d of %d differ from Redis (all %d live) %s",
		limit, r.ViewsNotConverged, len(at), len(live), r.Example)
}

// diffView says how a view (of watcher id) differs from the N ids.
func (s *storm) diffView(id string, v []svcwatch.Instance) string {
	have := map[string]bool{}
	for _, inst := range v {
		have[inst.ID] = true
	}
	var missing, extra []string
	for _, id := range s.ids {
		if !have[id] {
			missing = append(missing, id)
		}
		delete(have, id)
	}
	for id := range have {
		extra = append(extra, id)
	}
	return fmt.Sprintf("%s held %d (missing %s; extra %s)", id, len(v), head(missing, 5), head(extra, 5))
}

func head(ids []string, n int) string {
	if len(ids) == 0 {
		return "none"
	}
	sort.Strings(ids)
	if len(ids) > n {
		return fmt.Sprintf("%s and %d more", strings.Join(ids[:n], ","), len(ids)-n)
	}
	return strings.Join(ids, ",")
}

// viewIs reports whether p's view of the table is exactly ids (sorted).
func (s *storm) viewIs(p *stormProc, ids []string) bool { return sameIDs(p.w.Services(s.table), ids) }

// sameIDs reports whether a view, sorted by ID, holds exactly ids (sorted).
func sameIDs(v []svcwatch.Instance, ids []string) bool {
	if len(v) != len(ids) {
		return false
	}
	for i := range v {
		if v[i].ID != ids[i] {
			return false
		}
	}
	return true
}

// readLive returns the sorted ids that are live in Redis: a record and a
// deadline ahead. The server runs on this machine, so its clock is ours. It
// uses only commands the library never sends, so that the bench's own reads
// can be told apart in INFO commandstats.
func (s *storm) readLive(ctx context.Context) ([]string, error) {
	now := strconv.FormatInt(time.Now().UnixMilli(), 10)
	var hk, zr *redis.StringSliceCmd
	_, err := s.admin.TxPipelined(ctx, func(p redis.Pipeliner) error {
		hk = p.HKeys(ctx, s.keys.Inst)
		zr = p.ZRevRangeByScore(ctx, s.keys.Exp, &redis.ZRangeBy{Max: "+inf", Min: "(" + now})
		return nil
	})
	s.obs.add("multi", "hkeys", "zrevrangebyscore", "exec")
	if err != nil {
		return nil, err
	}
	rec := map[string]bool{}
	for _, id := range hk.Val() {
		rec[id] = true
	}
	live := make([]string, 0, len(rec))
	for _, id := range zr.Val() {
		if rec[id] {
			live = append(live, id)
		}
	}
	sort.Strings(live)
	return live, nil
}

// memoryGuard stops the run when this process's memory nears what the
// machine had available at the start.
func (s *storm) memoryGuard(ctx context.Context, cancel context.CancelCauseFunc, budget uint64) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if used := goMemory(); used > budget/100*85 {
			cancel(fmt.Errorf("does not fit in memory: this process holds %d MiB (%d goroutines), over 85%% of the %d MiB available at the start",
				used>>20, runtime.NumGoroutine(), budget>>20))
			return
		}
	}
}

// goMemory is the memory the Go runtime holds from the OS.
func goMemory() uint64 {
	sm := []metrics.Sample{{Name: "/memory/classes/total:bytes"}}
	metrics.Read(sm)
	if sm[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return sm[0].Value.Uint64()
}

func round6(v float64) float64 { return float64(int64(v*1e6+0.5)) / 1e6 }

// logCounter is the watchers' logger: it counts records by level and message
// instead of printing a thousand copies of each.
type logCounter struct {
	mu     sync.Mutex
	counts map[logKey]int64
}

type logKey struct {
	level slog.Level
	msg   string
}

func (l *logCounter) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelInfo }
func (l *logCounter) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.counts[logKey{r.Level, r.Message}]++
	l.mu.Unlock()
	return nil
}
func (l *logCounter) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logCounter) WithGroup(string) slog.Handler      { return l }

func (l *logCounter) list() []logLine {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []logLine
	for k, n := range l.counts {
		out = append(out, logLine{Level: k.level.String(), Message: k.msg, Count: n})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Message < out[j].Message
	})
	return out
}
