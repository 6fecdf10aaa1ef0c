package main

// run_supervise.go: the life of `svcwatch run`: register, start CMD, forward
// signals, drain on SIGTERM or SIGINT, and deregister when CMD has ended.
// One runner per run, driven by one goroutine (the command's); the
// goroutines it starts (the watcher's Start, the HTTP server, the poll of
// self, CMD's waiter) have all ended when shutdown returns.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch"
)

const (
	// startPatience is how long CMD waits for the registration while Redis
	// answers; a Redis that does not answer at all does not delay CMD.
	startPatience = 10 * time.Second
	// selfPollInterval: how often the local view of self is compared, to
	// wake the queries of self's table on a change that raises no event (the
	// health check's verdict). Local only: no Redis call.
	selfPollInterval = 200 * time.Millisecond
	// runStopTimeout bounds the deregistration and the HTTP shutdown at exit.
	runStopTimeout = 10 * time.Second
	// signalSettle: main's context ends on SIGINT and SIGTERM, and the
	// signal itself reaches this command's channel a moment apart.
	signalSettle = 100 * time.Millisecond
)

// runner is one run of the sidecar.
type runner struct {
	o    *runOpts
	g    *globalOpts
	self svcwatch.Instance
	say  func(format string, args ...any) // a line on stderr

	w        *svcwatch.RedisServiceWatcher
	idx      *tableIndexes
	api      *runAPI
	srv      *http.Server
	served   chan struct{} // closed when srv.Serve has returned
	httpAddr string        // where the API listens
	sigs     chan os.Signal

	cancelStart  context.CancelFunc
	startDone    chan error // Start's result
	startPending bool       // startDone not received yet
	pollStop     chan struct{}
	pollWG       sync.WaitGroup
}

// supervise is the whole sidecar. It returns CMD's status (or 128+N when
// signal N ended the sidecar before CMD started), or an error for a problem
// of the sidecar's own: usage, or Redis refusing the registration.
func (o *runOpts) supervise(ctx context.Context, g *globalOpts, args []string, stdout, stderr io.Writer) (int, error) {
	if !runSupported {
		return 0, fmt.Errorf("run: not supported on %s (it needs Unix process groups and signals)", runtime.GOOS)
	}
	if len(args) == 0 {
		return 0, usagef("needs the command to run after the flags: svcwatch run -table T -id ID -name HOST:PORT -- CMD [ARGS]")
	}
	self, err := o.instance()
	if err != nil {
		return 0, err
	}
	if o.grace < 0 {
		return 0, usagef("-grace %v is negative", o.grace)
	}
	if o.health != "" {
		if u, err := url.Parse(o.health); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return 0, usagef("-health %q is not an http:// or https:// URL", o.health)
		}
	}
	r := &runner{o: o, g: g, self: self, idx: newTableIndexes(),
		say: func(format string, args ...any) { fmt.Fprintf(stderr, "svcwatch run: "+format+"\n", args...) }}
	if _, err := exec.LookPath(args[0]); err != nil { // nothing to register
		r.say("cannot start %s: %v", args[0], err)
		return cannotStart(err), nil
	}
	cmd := exec.Command(args[0], args[1:]...)
	client := g.newClient(clientOpts{name: "svcwatch-run"})
	defer client.Close()
	if err := r.open(ctx, client, stderr); err != nil {
		return 0, err
	}

	// Wait for the registration before starting CMD, so that CMD finds its
	// tables loaded; but not while Redis does not answer.
	if code, done, err := r.awaitRegistration(ctx, client); done {
		r.shutdown()
		return code, err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	cmd.Env = append(os.Environ(), "SVCWATCH_HTTP="+r.httpAddr, "SVCWATCH_TABLE="+self.Table, "SVCWATCH_ID="+self.ID)
	cmd.SysProcAttr = runSysProcAttr()
	cmd.WaitDelay = time.Second // output copied through pipes (tests) must not hold Wait forever
	child, err := startChild(cmd)
	if err != nil {
		r.shutdown()
		r.say("cannot start %s: %v", args[0], err)
		return cannotStart(err), nil
	}
	fatal := r.watchChild(ctx, child)
	status := exitStatus(child.state)
	// Whatever CMD started and left behind in its group goes with it.
	_ = signalGroup(child.pid, runKillSignal)
	r.shutdown()
	what := "deregistered"
	if !r.api.started.Load() {
		what = "was never registered"
	}
	if child.state.Exited() {
		r.say("CMD exited with status %d; %s %s", status, self.Key(), what)
	} else {
		r.say("CMD ended (%v); %s %s; exit status %d", child.state, self.Key(), what, status)
	}
	if fatal != nil {
		return 0, fatal
	}
	return status, nil
}

// open builds the watcher, serves the API, and starts the watcher's Start,
// which retries until Redis answers.
func (r *runner) open(ctx context.Context, client redis.UniversalClient, stderr io.Writer) error {
	o, idx := r.o, r.idx
	opts := []svcwatch.Option{
		svcwatch.WithKeyPrefix(r.g.prefix),
		svcwatch.WithTTL(o.ttl),
		svcwatch.WithTables(o.watch...),
		svcwatch.WithLogger(slog.New(slog.NewTextHandler(stderr, nil))),
		svcwatch.WithHandler(svcwatch.HandlerFuncs{
			Add:    func(in svcwatch.Instance) { idx.bump(in.Table) },
			Update: func(_, cur svcwatch.Instance) { idx.bump(cur.Table) },
			Remove: func(in svcwatch.Instance) { idx.bump(in.Table) },
		}),
		svcwatch.WithOnRegistrationLost(func(self svcwatch.Instance, err error) {
			r.say("%s is no longer registered (%v); CMD keeps running, unregistered", self.Key(), err)
		}),
	}
	if o.keepAlive > 0 {
		opts = append(opts, svcwatch.WithKeepAliveInterval(o.keepAlive))
	}
	if o.health != "" {
		opts = append(opts, svcwatch.WithHealthCheck(httpHealthCheck(o.health)))
	}
	w, err := svcwatch.NewRedisServiceWatcher(client, r.self, opts...)
	if err != nil {
		if errors.Is(err, svcwatch.ErrInvalid) {
			return usageError{err.Error()}
		}
		return err
	}
	r.w = w
	// Before Start, WatchPrefix only records the prefix (and checks it);
	// Start loads the tables under it.
	for _, p := range o.prefixes {
		if err := w.WatchPrefix(ctx, p); err != nil {
			if errors.Is(err, svcwatch.ErrInvalid) {
				return usageError{fmt.Sprintf("-watch-prefix: %v", err)}
			}
			return err
		}
	}
	ln, err := listenHTTP(o.httpAddr, o.httpPublic)
	if err != nil {
		return err
	}
	r.httpAddr = ln.Addr().String()
	r.api = newRunAPI(w, idx, r.self.Table, w.Prefixes(), o.keepAliveOrDefault()+time.Second)
	r.srv = &http.Server{
		Handler:           r.api,
		ReadHeaderTimeout: 10 * time.Second,
		// No ReadTimeout: it would cancel the context of a blocking query.
		WriteTimeout:   maxWait + time.Minute,
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 16 << 10,
		ErrorLog:       log.New(stderr, "svcwatch run: http: ", 0),
	}
	r.served = make(chan struct{})
	go func() {
		defer close(r.served)
		if err := r.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.say("the HTTP API stopped: %v", err)
		}
	}()

	r.sigs = make(chan os.Signal, 16)
	signal.Notify(r.sigs, append(append([]os.Signal{}, runStopSignals...), runForwardSignals...)...)

	// The watcher lives until CMD has ended, past the signal that ends ctx:
	// a draining CMD still discovers its peers.
	startCtx, cancel := context.WithCancel(context.Background())
	r.cancelStart = cancel
	r.startDone, r.startPending = make(chan error, 1), true
	go func() { r.startDone <- w.Start(startCtx) }()
	r.pollStop = make(chan struct{})
	r.pollWG.Add(1)
	go func() {
		defer r.pollWG.Done()
		t := time.NewTicker(selfPollInterval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				r.api.noteSelf()
			case <-r.pollStop:
				return
			}
		}
	}()
	return nil
}

// awaitRegistration waits for Start while Redis answers (at most
// startPatience). done means the run is over before CMD started: a signal
// (code 128+N), a wrong password or a refused registration (err).
func (r *runner) awaitRegistration(ctx context.Context, client redis.UniversalClient) (code int, done bool, err error) {
	if err := ping(ctx, client, r.g.target(), r.g.user); ctx.Err() != nil {
		return signalStatus(r.lastSignal()), true, nil
	} else if err != nil && isAuthError(err) {
		return 0, true, err // a wrong password does not heal
	} else if err != nil {
		r.say("%s; starting CMD anyway: %s is registered as soon as Redis answers",
			strings.TrimPrefix(err.Error(), "svcwatch: "), r.self.Key())
		return 0, false, nil
	}
	patience := time.NewTimer(startPatience)
	defer patience.Stop()
	select {
	case err := <-r.startDone:
		r.startPending = false
		if err != nil {
			return 0, true, fmt.Errorf("run: register %s: %w", r.self.Key(), err)
		}
		r.registered()
	case <-patience.C:
		r.say("%s is not registered yet (Redis at %s is slow); starting CMD anyway", r.self.Key(), r.g.target())
	case sig := <-r.sigs:
		return signalStatus(sig), true, nil
	case <-ctx.Done():
		return signalStatus(r.lastSignal()), true, nil
	}
	return 0, false, nil
}

// registered is called once Start returned nil.
func (r *runner) registered() {
	r.api.started.Store(true)
	r.idx.bumpAll() // tables loaded empty raised no event
	r.api.noteSelf()
	r.say("registered %s as %s; HTTP API on %s", r.self.Key(), r.self.Name, r.httpAddr)
}

// watchChild runs until CMD has ended: it forwards signals, drains on
// SIGTERM or SIGINT and kills CMD when -grace runs out. It returns the
// error of a registration that failed after CMD started (CMD is stopped
// then, as on SIGTERM).
func (r *runner) watchChild(ctx context.Context, child *runChild) (fatal error) {
	var (
		draining bool
		grace    *time.Timer
		graceC   <-chan time.Time
		ctxDone  = ctx.Done()
	)
	defer func() {
		if grace != nil {
			grace.Stop()
		}
	}()
	forward := func(sig os.Signal) {
		if err := signalGroup(child.pid, sig); err != nil {
			r.say("forwarding %v to CMD: %v", sig, err)
		}
	}
	// stop drains self (peers stop sending new work), forwards sig, and
	// gives CMD -grace to exit.
	stop := func(sig os.Signal) {
		if !draining {
			draining = true
			r.say("signal %v: draining %s, then stopping CMD (grace %v)", sig, r.self.Key(), r.o.grace)
			sctx, cancel := context.WithTimeout(context.Background(), r.o.keepAliveOrDefault()+time.Second)
			if err := r.w.SetState(sctx, svcwatch.Draining); err != nil {
				r.say("could not mark %s draining: %v", r.self.Key(), err)
			} else {
				r.api.noteSelf()
			}
			cancel()
			grace = time.NewTimer(r.o.grace)
			graceC = grace.C
		}
		forward(sig)
	}
	onSignal := func(sig os.Signal) {
		for _, s := range runStopSignals {
			if sig == s {
				stop(sig)
				return
			}
		}
		forward(sig)
	}
	for {
		select {
		case <-child.done:
			return fatal
		case err := <-r.startDone:
			r.startPending = false
			if err != nil {
				fatal = fmt.Errorf("run: register %s: %w", r.self.Key(), err)
				r.say("%v; stopping CMD", fatal)
				stop(runStopSignals[len(runStopSignals)-1])
				continue
			}
			r.registered()
		case sig := <-r.sigs:
			onSignal(sig)
		case <-ctxDone:
			ctxDone = nil
			if !draining {
				onSignal(r.lastSignal())
			}
		case <-graceC:
			graceC = nil
			r.say("CMD did not exit within -grace %v; killing it", r.o.grace)
			forward(runKillSignal)
		}
	}
}

// lastSignal returns the signal that ended main's context, which reaches
// sigs a moment apart; SIGTERM when none does.
func (r *runner) lastSignal() os.Signal {
	settle := time.NewTimer(signalSettle)
	defer settle.Stop()
	select {
	case sig := <-r.sigs:
		return sig
	case <-settle.C:
		return runStopSignals[len(runStopSignals)-1]
	}
}

// shutdown deregisters self (peers see the removal at once), then closes the
// API; every goroutine of the runner has ended when it returns.
func (r *runner) shutdown() {
	signal.Stop(r.sigs)
	r.cancelStart()
	ctx, cancel := context.WithTimeout(context.Background(), runStopTimeout)
	defer cancel()
	if err := r.w.Stop(ctx); err != nil {
		r.say("deregistering %s: %v", r.self.Key(), err)
	}
	if r.startPending {
		<-r.startDone // Stop made it give up
		r.startPending = false
	}
	close(r.pollStop)
	r.pollWG.Wait()
	r.idx.close() // blocking queries answer now
	if err := r.srv.Shutdown(ctx); err != nil {
		_ = r.srv.Close()
	}
	<-r.served
}

// cannotStart is a shell's status for a command it could not start: 126
// when it is not executable, 127 when it is not found.
func cannotStart(err error) int {
	if errors.Is(err, fs.ErrPermission) {
		return 126
	}
	return 127
}

// runChild is CMD, started.
type runChild struct {
	pid   int
	done  chan struct{} // closed once CMD has ended and been waited for
	state *os.ProcessState
}

// startChild starts cmd and waits for it on a goroutine locked to its OS
// thread: the kernel's parent-death signal (Linux) fires when the thread
// that started the child exits, and a locked thread lives as long as the
// goroutine holds it, that is until CMD has ended.
func startChild(cmd *exec.Cmd) (*runChild, error) {
	c := &runChild{done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		c.pid = cmd.Process.Pid
		started <- nil
		_ = cmd.Wait() // the status is in ProcessState; an I/O error after WaitDelay is moot
		c.state = cmd.ProcessState
		close(c.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return c, nil
}
