package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch"
	"github.com/svcwatch/svcwatch/protocol"
)

const eventTimeout = 10 * time.Second // a receipt later than this counts as missed

// propagation registers and stops one new process per round and times the
// events at the watchers from the moment the register / deregister script
// call was sent.
func (b *bench) propagation(ctx context.Context, tr *tracker) error {
	probe, stopProbe, err := b.startProbe(ctx)
	if err != nil {
		return err
	}
	defer stopProbe()
	fl, err := b.startFloor(ctx)
	if err != nil {
		return err
	}
	defer fl.close()
	var add, del, probeAdd, probeDel, floorS series
	var startCalls []time.Duration
	for r := 0; r < b.o.rounds; r++ {
		if r == 0 {
			b.prog.phase("propagation: %d rounds of register, stop and (the floor) a bare PUBLISH, interleaved", b.o.rounds)
		}
		b.prog.step("propagation: round %d/%d", r+1, b.o.rounds)
		id := fmt.Sprintf("prop-%d", r)
		key := b.table + "/" + id
		a, pa := tr.expect("add "+key), probe.expect("add "+key)
		t0 := time.Now()
		p, err := b.startProc(ctx, procSpec{table: b.table, id: id, ttl: b.o.ttl})
		if err != nil {
			return err
		}
		startCalls = append(startCalls, time.Since(t0))
		at, err := tr.wait(ctx, a, eventTimeout)
		if err != nil {
			return err
		}
		add.add(p.sent.get("register"), at)
		if at, err = probe.wait(ctx, pa, eventTimeout); err != nil {
			return err
		}
		probeAdd.add(p.sent.get("register"), at)

		rm, pr := tr.expect("remove "+key), probe.expect("remove "+key)
		if err := p.stop(5 * time.Second); err != nil {
			return fmt.Errorf("stop %s: %w", key, err)
		}
		at, err = tr.wait(ctx, rm, eventTimeout)
		if err != nil {
			return err
		}
		del.add(p.sent.get("deregister"), at)
		if at, err = probe.wait(ctx, pr, eventTimeout); err != nil {
			return err
		}
		probeDel.add(p.sent.get("deregister"), at)

		// The floor in the same round, so that both see the same machine.
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return err
		}
		start, at, err := fl.publish(ctx, r)
		if err != nil {
			return err
		}
		floorS.add(start, at)
		// Let the watchers' goroutines settle, as between real deployments.
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
	b.rep.Propagation = propagationReport{
		StartCall: distOf(startCalls, 0),
		AddEach:   add.eachDist(), AddAll: add.lastDist(),
		RemoveEach: del.eachDist(), RemoveAll: del.lastDist(),
		ProbeAdd: probeAdd.eachDist(), ProbeRemove: probeDel.eachDist(),
	}
	b.rep.Floor = latencyPair{Each: floorS.eachDist(), All: floorS.lastDist()}
	return nil
}

// startProbe subscribes one bare go-redis PubSub to the bench table's channel:
// with few watchers, its receipts split the propagation latency into Redis
// and the network (up to the probe) and the library's client side (after it).
func (b *bench) startProbe(ctx context.Context) (*tracker, func(), error) {
	c := b.g.newClient(clientOpts{})
	ps := c.Subscribe(ctx, protocol.TableKeys(b.g.prefix, b.table).Channel)
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err := ps.Receive(rctx) // the subscribe confirmation
	cancel()
	if err != nil {
		_ = ps.Close()
		_ = c.Close()
		return nil, nil, fmt.Errorf("probe: subscribe: %w", err)
	}
	tr := newTracker(1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			m, err := ps.ReceiveMessage(context.Background())
			now := time.Now()
			if err != nil {
				return // closed
			}
			var msg struct{ Op, ID string }
			if json.Unmarshal([]byte(m.Payload), &msg) != nil {
				continue
			}
			op := "add"
			if msg.Op == "del" || msg.Op == "expired" {
				op = "remove"
			}
			tr.note(0, op+" "+b.table+"/"+msg.ID, now)
		}
	}()
	return tr, func() {
		_ = ps.Close()
		<-done
		_ = c.Close()
	}, nil
}

// crashes registers -rounds processes whose connections can be cut, then
// "kills" them one by one at random moments of their heartbeat cycle and
// times OnRemove at the watchers.
func (b *bench) crashes(ctx context.Context, tr *tracker, ka time.Duration) error {
	n := b.o.rounds
	b.prog.phase("crash detection: starting %d processes", n)
	procs := make([]*proc, n)
	for r := range procs {
		id := fmt.Sprintf("crash-%d", r)
		a := tr.expect("add " + b.table + "/" + id)
		p, err := b.startProc(ctx, procSpec{table: b.table, id: id, ttl: b.o.ttl, crashable: true, quiet: true})
		if err != nil {
			return err
		}
		procs[r] = p
		if _, err := tr.wait(ctx, a, eventTimeout); err != nil {
			return err
		}
	}
	arrivals := make([]*arrival, n)
	for r, p := range procs {
		if r == 0 {
			b.prog.phase("crash detection: crashing %d processes at random points of their heartbeat cycle", n)
		}
		b.prog.step("crash detection: crash %d/%d", r+1, n)
		if err := sleep(ctx, time.Duration(mrand.Int63n(int64(ka)+1))); err != nil {
			return err
		}
		arrivals[r] = tr.expect("remove " + p.w.Self().Key())
		arrivals[r].start = time.Now()
		p.cut.crash()
	}
	b.prog.phase("crash detection: waiting for the expiries")
	var s series
	for _, a := range arrivals {
		at, err := tr.wait(ctx, a, b.o.ttl+5*time.Second)
		if err != nil {
			return err
		}
		s.add(a.start, at)
	}
	for _, p := range procs {
		// Its deregistration cannot reach Redis: the dialer refuses.
		_ = p.stop(time.Second)
	}
	b.rep.Crash = crashReport{
		Method: "each process runs on a client of its own whose dialer the bench controls; the crash closes its TCP " +
			"connections and makes every later dial fail, as the kernel does for a SIGKILLed process, so it can neither " +
			"heartbeat nor deregister; timed from that moment to OnRemove at the watchers. Crashes fall at random points " +
			"of the heartbeat cycle, so the expected range is (TTL - keepalive, TTL] plus the time until some script reaps.",
		Each: s.eachDist(), All: s.lastDist(),
		BoundMs: ms(b.o.ttl + time.Second),
	}
	return nil
}

// floor is N bare go-redis PubSub connections on a channel of the bench
// table, and a publisher: the least any push-based discovery can take on this
// Redis and machine.
type floor struct {
	c, pub  redis.UniversalClient
	channel string
	tr      *tracker
	subs    []*redis.PubSub
	wg      sync.WaitGroup
}

func (b *bench) startFloor(ctx context.Context) (*floor, error) {
	n := b.o.watchers
	f := &floor{
		c: b.g.newClient(clientOpts{}), pub: b.g.newClient(clientOpts{}),
		channel: protocol.Key(b.g.prefix, b.table, "floor"), tr: newTracker(n),
	}
	if err := f.pub.Ping(ctx).Err(); err != nil { // connect before timing
		f.close()
		return nil, fmt.Errorf("floor: %w", err)
	}
	for i := 0; i < n; i++ {
		ps := f.c.Subscribe(ctx, f.channel)
		f.subs = append(f.subs, ps)
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := ps.Receive(rctx) // the subscribe confirmation
		cancel()
		if err != nil {
			f.close()
			return nil, fmt.Errorf("floor: subscribe: %w", err)
		}
		f.wg.Add(1)
		go func(i int, ps *redis.PubSub) {
			defer f.wg.Done()
			for {
				m, err := ps.ReceiveMessage(context.Background())
				now := time.Now()
				if err != nil {
					return // closed
				}
				k, _, _ := strings.Cut(m.Payload, "|")
				f.tr.note(i, k, now)
			}
		}(i, ps)
	}
	return f, nil
}

// floorPad makes the floor's message as long as the library's add message,
// so that only the library differs.
var floorPad = strings.Repeat("x", 180)

// publish sends message r and waits for it at every subscriber.
func (f *floor) publish(ctx context.Context, r int) (time.Time, []time.Time, error) {
	key := strconv.Itoa(r)
	a := f.tr.expect(key)
	a.start = time.Now()
	if err := f.pub.Publish(ctx, f.channel, key+"|"+floorPad).Err(); err != nil {
		return a.start, nil, fmt.Errorf("floor: publish: %w", err)
	}
	at, err := f.tr.wait(ctx, a, eventTimeout)
	return a.start, at, err
}

func (f *floor) close() {
	for _, ps := range f.subs {
		_ = ps.Close()
	}
	f.wg.Wait()
	_ = f.c.Close()
	_ = f.pub.Close()
}

// polling measures the original design: N pollers, each reading the whole
// table with HGETALL every poll interval from a random phase, see an add
// only at their next poll.
func (b *bench) polling(ctx context.Context) error {
	n, rounds := b.o.watchers, b.o.pollRounds
	b.rep.Poll = pollReport{IntervalMs: ms(b.o.pollEvery), Rounds: rounds}
	if rounds == 0 {
		return nil
	}
	b.prog.phase("polling baseline: %d pollers, HGETALL every %v, %d adds", n, b.o.pollEvery, rounds)
	c := b.g.newClient(clientOpts{poolSize: n})
	defer c.Close()
	tr := newTracker(n)
	inst := protocol.TableKeys(b.g.prefix, b.table).Inst
	pctx, stopPollers := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stopPollers()
		wg.Wait()
	}()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if sleep(pctx, time.Duration(mrand.Int63n(int64(b.o.pollEvery)))) != nil {
				return
			}
			t := time.NewTicker(b.o.pollEvery)
			defer t.Stop()
			for {
				recs, err := c.HGetAll(pctx, inst).Result()
				now := time.Now()
				if err == nil {
					for id := range recs {
						tr.note(i, id, now)
					}
				}
				select {
				case <-pctx.Done():
					return
				case <-t.C:
				}
			}
		}(i)
	}
	// The adds are spread over one interval so that the run stays short; the
	// pollers' phases are random, so they do not interfere.
	type round struct {
		a *arrival
		p *proc
	}
	var rs []round
	for r := 0; r < rounds; r++ {
		if r > 0 {
			if err := sleep(ctx, b.o.pollEvery/time.Duration(rounds)); err != nil {
				return err
			}
		}
		id := fmt.Sprintf("poll-%d", r)
		a := tr.expect(id)
		p, err := b.startProc(ctx, procSpec{table: b.table, id: id, ttl: b.o.ttl})
		if err != nil {
			return err
		}
		rs = append(rs, round{a, p})
	}
	var s series
	for _, r := range rs {
		at, err := tr.wait(ctx, r.a, b.o.pollEvery+eventTimeout)
		if err != nil {
			return err
		}
		s.add(r.p.sent.get("register"), at)
		_ = r.p.stop(5 * time.Second)
	}
	b.rep.Poll.Each, b.rep.Poll.All = s.eachDist(), s.lastDist()
	return nil
}

// idleCost counts, with INFO commandstats, what K idle registered processes
// (library defaults) make the server do over the idle window.
func (b *bench) idleCost(ctx context.Context) error {
	o := b.o
	rep := &b.rep.Idle
	rep.Procs, rep.WindowS = o.procs, o.idle.Seconds()
	if o.procs == 0 || o.idle == 0 {
		rep.NA = "skipped (-procs 0 or -idle 0)"
		return nil
	}
	if _, err := commandStats(ctx, b.admin); err != nil {
		rep.NA = "INFO commandstats is not available: " + err.Error()
		return nil
	}
	b.prog.phase("idle cost: starting %d processes with the library's defaults", o.procs)
	procs := make([]*proc, o.procs)
	for k := range procs {
		p, err := b.startProc(ctx, procSpec{table: b.idleTable, id: fmt.Sprintf("idle-%d", k)})
		if err != nil {
			return err
		}
		procs[k] = p
	}
	before, err := commandStats(ctx, b.admin)
	if err != nil {
		return err
	}
	t0 := time.Now()
	for left := o.idle; left > 0; left -= time.Second {
		b.prog.step("idle cost: counting commands, %v left", left.Round(time.Second))
		if err := sleep(ctx, min(left, time.Second)); err != nil {
			return err
		}
	}
	after, err := commandStats(ctx, b.admin)
	if err != nil {
		return err
	}
	secs := time.Since(t0).Seconds()
	rep.WindowS = secs
	for _, p := range procs {
		_ = p.stop(5 * time.Second)
	}
	per := func(v float64) float64 { return v / float64(o.procs) / secs }
	for name, a := range after {
		if name == "info" { // the bench's own counting
			continue
		}
		d := a.sub(before[name])
		if d.calls == 0 {
			continue
		}
		cs := idleCommand{
			Command: name, Calls: d.calls, RoundTrip: clientCommand(name),
			PerProcPerSec: round3(per(float64(d.calls))), UsecPerCall: round3(float64(d.usec) / float64(d.calls)),
		}
		rep.Commands = append(rep.Commands, cs)
		if cs.RoundTrip {
			rep.RoundTripsPerProcPerSec += per(float64(d.calls))
			rep.ServerUsecPerProcPerSec += per(float64(d.usec))
		} else {
			rep.InScriptPerProcPerSec += per(float64(d.calls))
		}
	}
	rep.RoundTripsPerProcPerSec = round3(rep.RoundTripsPerProcPerSec)
	rep.ServerUsecPerProcPerSec = round3(rep.ServerUsecPerProcPerSec)
	rep.InScriptPerProcPerSec = round3(rep.InScriptPerProcPerSec)
	sortCommands(rep.Commands)
	// What the settings predict: heartbeat every keepalive, revision check every
	// scan interval, and go-redis's PubSub health-check PING after 3 s without a
	// message.
	rep.Expected = round3(1/(svcwatch.DefaultTTL/5).Seconds() + 1/svcwatch.DefaultScanEvery.Seconds() + 1/3.0)
	return nil
}

// clientCommand tells the commands a client sends (its round trips) from
// those the library's scripts run inside Redis (protocol/scripts/*.lua),
// whatever the scripts use: an idle process sends only scripts and the
// connection's own commands. Subcommands count with their command, as Redis 7
// names them ("client|setname") or not ("client"). INFO is the bench's own.
func clientCommand(name string) bool {
	cmd, _, _ := strings.Cut(name, "|")
	switch cmd {
	case "evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro", "ping", "hello", "auth", "select",
		"subscribe", "unsubscribe", "psubscribe", "punsubscribe", "ssubscribe", "sunsubscribe", "readonly", "quit", "reset",
		"client", "script", "cluster", "command":
		return true
	}
	return false
}

type cmdCounter struct{ calls, usec int64 }

func (a cmdCounter) sub(b cmdCounter) cmdCounter {
	return cmdCounter{a.calls - b.calls, a.usec - b.usec}
}

// commandStats sums INFO commandstats over the server (every master of a
// Cluster).
func commandStats(ctx context.Context, c redis.UniversalClient) (map[string]cmdCounter, error) {
	var mu sync.Mutex
	total := map[string]cmdCounter{}
	read := func(ctx context.Context, node redis.Cmdable) error {
		s, err := node.Info(ctx, "commandstats").Result()
		if err != nil {
			return err
		}
		found := false
		mu.Lock()
		defer mu.Unlock()
		for _, line := range strings.Split(s, "\n") {
			name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
			if !ok || !strings.HasPrefix(name, "cmdstat_") {
				continue
			}
			found = true
			var cc cmdCounter
			for _, kv := range strings.Split(rest, ",") {
				k, v, _ := strings.Cut(kv, "=")
				switch k {
				case "calls":
					cc.calls, _ = strconv.ParseInt(v, 10, 64)
				case "usec":
					cc.usec, _ = strconv.ParseInt(v, 10, 64)
				}
			}
			name = strings.TrimPrefix(name, "cmdstat_")
			t := total[name]
			total[name] = cmdCounter{t.calls + cc.calls, t.usec + cc.usec}
		}
		if !found {
			return errors.New("no cmdstat_ lines in the reply")
		}
		return nil
	}
	var err error
	if cc, ok := c.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return read(ctx, m) })
	} else {
		err = read(ctx, c)
	}
	return total, err
}

// serverVersion returns "redis 7.0.15", or what is known.
func serverVersion(ctx context.Context, c redis.UniversalClient) string {
	s, err := c.Info(ctx, "server").Result()
	if err != nil {
		return "unknown (INFO server: " + err.Error() + ")"
	}
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			return "redis " + v
		}
	}
	return "unknown"
}
