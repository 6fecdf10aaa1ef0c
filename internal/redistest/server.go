package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// ServerOptions configures StartServer and NewServer. The zero value is a
// plain server without persistence.
type ServerOptions struct {
	// Persist keeps data across Kill/Start with an append-only file
	// (appendonly yes, appendfsync always) in the server's temp dir. Without
	// it the server runs with --save "" --appendonly no and a Kill loses all
	// data.
	Persist bool
	// ACL holds extra `user ...` lines written into an aclfile, e.g.
	// "user app on >pw ~svcwatch:* &svcwatch:* +@all -@dangerous". The
	// default user must stay usable without a password: the helpers'
	// own admin connections use it.
	ACL []string
	// Args are extra redis-server arguments appended last, so they override
	// the helper's own, e.g. []string{"--maxmemory", "10mb"}.
	Args []string
}

type serverMode int

const (
	modeStandalone serverMode = iota
	modeCluster
	modeSentinel
)

// Server is one redis-server (or redis-sentinel) process started by this
// package. Its port and directory stay the same across Kill/Start. Methods
// are safe for concurrent use.
type Server struct {
	bin   string
	name  string
	mode  serverMode
	opts  ServerOptions
	dir   string
	conf  string // config file given first on the command line; CONFIG REWRITE updates it
	acl   string // aclfile path, "" without ACL
	log   string // --logfile
	stdio string // stdout+stderr of the process

	nodeTimeout time.Duration // cluster mode only

	port atomic.Int64 // fixed once the first start succeeded

	mu      sync.Mutex
	busPort int // cluster mode only
	proc    *process
	frozen  bool
	closed  bool // by Close: Start refuses, the dir is gone
}

// process is one run of the server binary.
type process struct {
	cmd  *exec.Cmd
	pid  int
	done chan struct{} // closed when the process has exited and been reaped
	err  error         // exit status, valid after done
}

// killWait SIGKILLs the process's whole group (so forked BGSAVE/AOF-rewrite
// children die too; SIGKILL works on stopped processes) and waits for it.
func (p *process) killWait() error {
	if !p.exited() {
		_ = signalGroup(p.pid, sigKill)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(waitTimeout):
		return fmt.Errorf("pid %d did not exit %v after SIGKILL", p.pid, waitTimeout)
	}
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// StartServer starts redis-server on 127.0.0.1 and a free port, waits until
// it answers PING, and registers t.Cleanup to close it (kill it, even when
// frozen, and remove its temp dir). It skips t like Require when the binary
// is missing, and fails t, with the tail of the server log, if the server
// does not come up. It is NewServer for a testing.TB.
func StartServer(t testing.TB, opts ServerOptions) *Server {
	t.Helper()
	s, err := NewServer(opts)
	SkipOrFatal(t, err)
	t.Cleanup(func() { closeAtCleanup(t, s) })
	return s
}

// NewServer starts redis-server on 127.0.0.1 and a free port and waits until
// it answers PING, like StartServer but with no testing.TB: the caller must
// Close the server. The error matches ErrMissing when redis-server is not on
// PATH; when the server does not come up it holds the tail of its log, and
// nothing is left running.
func NewServer(opts ServerOptions) (*Server, error) {
	bin, err := lookBinary("redis-server")
	if err != nil {
		return nil, err
	}
	s, err := newServer(bin, "redis-server", modeStandalone, opts, nil)
	if err != nil {
		return nil, err
	}
	if err := s.startFirst(); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

// closeAtCleanup closes c at the end of t and reports a failure to close.
func closeAtCleanup(t testing.TB, c interface{ Close() error }) {
	if err := c.Close(); err != nil {
		t.Errorf("redistest: cleanup: %v", err)
	}
}

// newServer prepares dir, config file and aclfile; it does not start
// anything. The caller closes the server, which removes the dir.
func newServer(bin, name string, mode serverMode, opts ServerOptions, confLines []string) (*Server, error) {
	dir, err := os.MkdirTemp("", "redistest-"+name+"-")
	if err != nil {
		return nil, fmt.Errorf("redistest: %s: temp dir: %v", name, err)
	}
	s := &Server{
		bin:   bin,
		name:  name,
		mode:  mode,
		opts:  opts,
		dir:   dir,
		conf:  filepath.Join(dir, "redis.conf"),
		log:   filepath.Join(dir, "redis.log"),
		stdio: filepath.Join(dir, "stdio.log"),
	}
	if mode == modeSentinel {
		s.conf = filepath.Join(dir, "sentinel.conf")
	}
	conf := "# written by redistest; command-line arguments override it\n" + strings.Join(confLines, "\n") + "\n"
	if err := os.WriteFile(s.conf, []byte(conf), 0o600); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("redistest: write %s: %v", s.conf, err)
	}
	if len(opts.ACL) > 0 {
		s.acl = filepath.Join(dir, "users.acl")
		if err := os.WriteFile(s.acl, []byte(strings.Join(opts.ACL, "\n")+"\n"), 0o600); err != nil {
			_ = os.RemoveAll(dir)
			return nil, fmt.Errorf("redistest: write %s: %v", s.acl, err)
		}
	}
	return s, nil
}

// Close kills the server (even when frozen), waits until it has exited and
// removes its directory. It is idempotent: a later call does nothing more
// (a failed one is tried again). Start fails after Close.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	var errs []error
	if err := s.killLocked(); err != nil {
		errs = append(errs, fmt.Errorf("redistest: close: %w", err))
	}
	if err := os.RemoveAll(s.dir); err != nil {
		errs = append(errs, fmt.Errorf("redistest: close %s: %w", s.name, err))
	}
	return errors.Join(errs...)
}

// Addr returns "127.0.0.1:port".
func (s *Server) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port()))
}

// Port returns the TCP port; it never changes once StartServer (NewServer)
// returned.
func (s *Server) Port() int { return int(s.port.Load()) }

// Dir returns the server's working directory (logs, AOF, nodes.conf).
func (s *Server) Dir() string { return s.dir }

// LogTail returns the last lines of the server's log file.
func (s *Server) LogTail() string { return tail(s.log, 0, logTailLines) }

// String returns a label such as "redis-server 127.0.0.1:40001".
func (s *Server) String() string { return s.name + " " + s.Addr() }

// Running reports whether the process is alive (it may be frozen).
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil && !s.proc.exited()
}

// live reports whether the process is alive and not frozen.
func (s *Server) live() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil && !s.proc.exited() && !s.frozen
}

// Client returns a go-redis client to the server with go-redis defaults
// (modified by opts), closed at t's cleanup.
func (s *Server) Client(t testing.TB, opts ...func(*redis.Options)) *redis.Client {
	t.Helper()
	o := &redis.Options{Addr: s.Addr()}
	for _, f := range opts {
		f(o)
	}
	c := redis.NewClient(o)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Do runs one command through a short-lived admin client (default user,
// RESP2, 30 s deadline) and returns its reply as go-redis decodes it
// (string, int64, []any, ...; nil for a nil reply). Any other error fails t.
func (s *Server) Do(t testing.TB, args ...any) any {
	t.Helper()
	ctx, cancel := ctxTimeout(30 * time.Second)
	defer cancel()
	v, err := s.adminDo(ctx, args...)
	if err != nil {
		t.Fatalf("redistest: %s: %v: %v", s, args, err)
	}
	return v
}

// adminOptions are the options of the helpers' own short-lived clients.
func adminOptions(addr string) *redis.Options {
	return &redis.Options{
		Addr:                  addr,
		Protocol:              2,
		DisableIdentity:       true,
		MaxRetries:            -1,
		PoolSize:              1,
		DialTimeout:           2 * time.Second,
		ReadTimeout:           -1, // the context deadline governs
		WriteTimeout:          -1,
		ContextTimeoutEnabled: true,
	}
}

// admin returns a short-lived admin client; the caller closes it.
func (s *Server) admin() *redis.Client { return redis.NewClient(adminOptions(s.Addr())) }

// adminDo runs one command on a fresh admin client. A nil reply is (nil, nil).
func (s *Server) adminDo(ctx context.Context, args ...any) (any, error) {
	c := s.admin()
	defer c.Close()
	v, err := c.Do(ctx, args...).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	return v, err
}

// Kill sends SIGKILL to the server (frozen or not) and waits until it has
// exited. Without Persist the data is lost. Killing a stopped server is a
// no-op.
func (s *Server) Kill(t testing.TB) {
	t.Helper()
	if err := s.kill(); err != nil {
		t.Fatalf("redistest: %v", err)
	}
}

func (s *Server) kill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.killLocked()
}

func (s *Server) killLocked() error {
	p := s.proc
	if p == nil {
		return nil
	}
	if err := p.killWait(); err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	s.proc = nil
	s.frozen = false
	return nil
}

// Start starts the server again on the same port and directory (so Persist
// data, nodes.conf and CONFIG REWRITE changes come back) and waits until it
// answers PING. It retries while the port is briefly busy. Starting a
// running or closed server fails t.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		t.Fatalf("redistest: %s: Start: closed", s.name)
	}
	if s.proc != nil && !s.proc.exited() {
		t.Fatalf("redistest: %s: Start: already running (pid %d)", s.name, s.proc.pid)
	}
	s.proc = nil
	s.frozen = false
	if err := s.startLocked(false); err != nil {
		t.Fatalf("redistest: %v", err)
	}
}

// Restart is Kill then Start.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Kill(t)
	s.Start(t)
}

// Freeze sends SIGSTOP to the server and waits until it is stopped: it keeps
// its port and connections but answers nothing until Thaw.
func (s *Server) Freeze(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil || s.proc.exited() {
		t.Fatalf("redistest: %s: Freeze: not running", s.name)
	}
	if err := signalGroup(s.proc.pid, sigStop); err != nil {
		t.Fatalf("redistest: %s: SIGSTOP: %v", s.name, err)
	}
	if err := waitStopped(s.proc.pid); err != nil {
		t.Fatalf("redistest: %s: Freeze: %v", s.name, err)
	}
	s.frozen = true
}

// Thaw sends SIGCONT to a frozen server.
func (s *Server) Thaw(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil || s.proc.exited() {
		t.Fatalf("redistest: %s: Thaw: not running", s.name)
	}
	if err := signalGroup(s.proc.pid, sigCont); err != nil {
		t.Fatalf("redistest: %s: SIGCONT: %v", s.name, err)
	}
	s.frozen = false
}

// startFirst picks ports and starts the server; on a busy port it picks new
// ones.
func (s *Server) startFirst() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.startLocked(true); err != nil {
		return fmt.Errorf("redistest: %w", err)
	}
	return nil
}

var errPortBusy = errors.New("address already in use")

// startLocked starts the process and waits until it answers PING with its
// own process id. With pickPorts it (re)chooses ports, otherwise it reuses
// s.port and retries while it is busy.
func (s *Server) startLocked(pickPorts bool) error {
	deadline := time.Now().Add(startTimeout)
	for attempt := 1; ; attempt++ {
		if pickPorts {
			if err := s.pickPorts(); err != nil {
				return fmt.Errorf("%s: %v", s.name, err)
			}
		}
		logOff, stdioOff := fileSize(s.log), fileSize(s.stdio)
		p, err := s.spawn()
		if err != nil {
			return fmt.Errorf("%s: start: %v", s.name, err)
		}
		err = s.waitReady(p, deadline, logOff, stdioOff)
		if err == nil {
			s.proc = p
			return nil
		}
		_ = p.killWait()
		if errors.Is(err, errPortBusy) && time.Now().Before(deadline) {
			if !pickPorts {
				time.Sleep(100 * time.Millisecond) // wait for the port to be released
			}
			continue
		}
		return fmt.Errorf("%s on %s (attempt %d): %v\ncommand: %s\n--- tail of %s ---\n%s\n--- tail of %s ---\n%s",
			s.name, s.Addr(), attempt, err,
			shellJoin(p.cmd.Args),
			s.log, tail(s.log, logOff, logTailLines),
			s.stdio, tail(s.stdio, stdioOff, logTailLines))
	}
}

func (s *Server) pickPorts() error {
	limit := 0
	if s.mode == modeCluster {
		limit = maxBusFreeTop
	}
	p, err := freePort(limit)
	if err != nil {
		return err
	}
	s.port.Store(int64(p))
	if s.mode == modeCluster {
		if s.busPort, err = freePort(0); err != nil {
			return err
		}
	}
	return nil
}

// args returns the command line for the current ports.
func (s *Server) args() []string {
	a := []string{s.conf}
	if s.mode == modeSentinel {
		a = append(a, "--sentinel")
	}
	a = append(a,
		"--port", strconv.Itoa(s.Port()),
		"--bind", "127.0.0.1",
		"--daemonize", "no",
		"--dir", s.dir,
		"--logfile", s.log,
	)
	if s.acl != "" {
		a = append(a, "--aclfile", s.acl)
	} else {
		a = append(a, "--protected-mode", "no")
	}
	if s.mode != modeSentinel {
		// Replicas sync at once instead of after the default 5 s.
		a = append(a, "--repl-diskless-sync-delay", "0")
		if s.opts.Persist {
			a = append(a, "--appendonly", "yes", "--appendfsync", "always", "--save", "")
		} else {
			a = append(a, "--save", "", "--appendonly", "no")
		}
	}
	if s.mode == modeCluster {
		a = append(a,
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", strconv.FormatInt(s.nodeTimeout.Milliseconds(), 10),
			"--cluster-port", strconv.Itoa(s.busPort),
			// A replica may always take over, however long it has been
			// cut off: tests kill masters on loaded machines.
			"--cluster-replica-validity-factor", "0",
		)
	}
	return append(a, s.opts.Args...)
}

// spawn starts the process and a goroutine that reaps it.
func (s *Server) spawn() (*process, error) {
	out, err := os.OpenFile(s.stdio, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer out.Close() // the child has its own copy
	cmd := exec.Command(s.bin, s.args()...)
	cmd.Dir = s.dir
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// waitReady polls until the process answers PING and reports its own pid on
// its port, it exits, or deadline passes.
func (s *Server) waitReady(p *process, deadline time.Time, logOff, stdioOff int64) error {
	addr := s.Addr()
	var lastErr error
	for {
		if p.exited() {
			out := tail(s.log, logOff, logTailLines) + "\n" + tail(s.stdio, stdioOff, logTailLines)
			if strings.Contains(out, "Address already in use") {
				return fmt.Errorf("%w: %v", errPortBusy, p.err)
			}
			return fmt.Errorf("exited before answering PING: %v", p.err)
		}
		pid, err := probe(addr)
		if err == nil && pid == p.pid {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("port answered by pid %d, not ours (%d)", pid, p.pid)
		}
		lastErr = err
		if time.Now().After(deadline) {
			return fmt.Errorf("no PING answer within %v: %v", startTimeout, lastErr)
		}
		time.Sleep(pollInterval)
	}
}

// role returns the first element of ROLE ("master", "slave", "sentinel").
func (s *Server) role() (string, error) {
	ctx, cancel := ctxTimeout(2 * time.Second)
	defer cancel()
	v, err := s.adminDo(ctx, "ROLE")
	if err != nil {
		return "", err
	}
	if a, ok := v.([]any); ok && len(a) > 0 {
		if r, ok := a[0].(string); ok {
			return r, nil
		}
	}
	return "", fmt.Errorf("unexpected ROLE reply %v", v)
}

// info returns INFO section as a map.
func (s *Server) info(section string) (map[string]string, error) {
	ctx, cancel := ctxTimeout(2 * time.Second)
	defer cancel()
	c := s.admin()
	defer c.Close()
	txt, err := c.Info(ctx, section).Result()
	if err != nil {
		return nil, err
	}
	return parseInfo(txt), nil
}

// shellJoin renders a command line, quoting empty or spaced arguments.
func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\n\"'") {
			a = strconv.Quote(a)
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}
