package main

// bench_storm_server.go: the redis-server the storm runs, owns and restarts
// empty. The storm never uses a server it did not start: it flushes it.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

const serverStartTimeout = 20 * time.Second

// stormServer is one redis-server child on 127.0.0.1, without persistence.
// Its port and directory stay the same across restarts.
type stormServer struct {
	bin        string
	dir        string
	logFile    string
	port       int
	maxclients int
	extra      []string // appended last

	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited and been reaped
}

var errPortBusy = errors.New("port in use")

// startStormServer starts bin on a free loopback port and waits until it
// answers.
func startStormServer(ctx context.Context, bin string, maxclients int, extra []string) (*stormServer, error) {
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("-storm needs a redis-server binary (-storm-redis-server %q): %w", bin, err)
	}
	if path, err = filepath.Abs(path); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "svcwatch-storm-")
	if err != nil {
		return nil, err
	}
	s := &stormServer{bin: path, dir: dir, logFile: filepath.Join(dir, "redis.log"), maxclients: maxclients, extra: extra}
	for attempt := 0; ; attempt++ {
		if s.port, err = freeLoopbackPort(); err != nil {
			break
		}
		if err = s.start(ctx); !errors.Is(err, errPortBusy) || attempt == 5 {
			break
		}
	}
	if err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

func (s *stormServer) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// sock is the server's Unix socket: the bench's own connections (readiness,
// counters, the live set, SHUTDOWN) use it, so that they do not queue behind
// thousands of processes reconnecting over TCP after the restart.
func (s *stormServer) sock() string { return filepath.Join(s.dir, "redis.sock") }

// client returns a client on the Unix socket.
func (s *stormServer) client(o redis.Options) *redis.Client {
	o.Network, o.Addr, o.ContextTimeoutEnabled = "unix", s.sock(), true
	return redis.NewClient(&o)
}

func (s *stormServer) args() []string {
	return append([]string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--protected-mode", "no",
		"--save", "", "--appendonly", "no",
		"--maxclients", strconv.Itoa(s.maxclients),
		"--unixsocket", s.sock(), "--unixsocketperm", "700",
		"--daemonize", "no", "--dir", s.dir, "--logfile", s.logFile,
	}, s.extra...)
}

// cmdline is the command as a shell would take it, for the report.
func (s *stormServer) cmdline() string {
	var b strings.Builder
	b.WriteString(s.bin)
	for _, a := range s.args() {
		if a == "" || strings.ContainsAny(a, " '") {
			a = "'" + a + "'"
		}
		b.WriteString(" " + a)
	}
	return b.String()
}

// start runs the binary on s.port and waits until it answers as itself.
func (s *stormServer) start(ctx context.Context) error {
	logOff := fileSize(s.logFile)
	cmd := exec.Command(s.bin, s.args()...)
	cmd.Dir = s.dir
	cmd.SysProcAttr = runSysProcAttr() // a process group of its own, killed with the bench (Linux)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	s.cmd, s.done = cmd, done
	err := s.waitReady(ctx, logOff)
	if err != nil {
		s.kill()
	}
	return err
}

// waitReady polls until the server on s.port reports the child's pid.
func (s *stormServer) waitReady(ctx context.Context, logOff int64) error {
	deadline := time.Now().Add(serverStartTimeout)
	var last error
	for {
		select {
		case <-s.done:
			tail := logTail(s.logFile, logOff, 15)
			if strings.Contains(tail, "Address already in use") {
				return errPortBusy
			}
			return fmt.Errorf("redis-server exited at start (%s):\n%s", s.cmdline(), tail)
		default:
		}
		// A bare PING first: a go-redis client that failed to dial waits
		// before it dials again.
		info, err := map[string]string(nil), s.ping()
		if err == nil {
			c := s.client(redis.Options{MaxRetries: -1, PoolSize: 1})
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			info, err = redisInfo(pctx, c, "server")
			cancel()
			_ = c.Close()
		}
		if err == nil {
			if info["process_id"] == strconv.Itoa(s.cmd.Process.Pid) {
				return nil
			}
			err = fmt.Errorf("%s answered by pid %s, not ours", s.sock(), info["process_id"])
		}
		last = err
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server did not answer within %v: %v\n%s", serverStartTimeout, last, logTail(s.logFile, logOff, 15))
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// ping sends one PING on a new connection to the Unix socket.
func (s *stormServer) ping() error {
	c, err := net.DialTimeout("unix", s.sock(), time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

// restartTimes are the moments of one restart.
type restartTimes struct {
	shutdown time.Time // SHUTDOWN NOSAVE sent
	exited   time.Time // the old server's process has exited
	spawned  time.Time // the new one was started
	up       time.Time // it answered as itself
}

// restartEmpty stops the server with SHUTDOWN NOSAVE (SIGKILL if it does not
// exit) and starts it again, empty, on the same port.
func (s *stormServer) restartEmpty(ctx context.Context) (restartTimes, error) {
	var t restartTimes
	// A client of its own that never retries: a retried SHUTDOWN could reach
	// the new server.
	c := s.client(redis.Options{MaxRetries: -1, DialerRetries: 1, PoolSize: 1})
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := c.Ping(pctx).Err() // connect before the clock starts
	if err == nil {
		t.shutdown = time.Now()
		err = c.ShutdownNoSave(pctx).Err() // nil: the server closed the connection, as it should
	}
	cancel()
	_ = c.Close()
	if err != nil {
		return t, fmt.Errorf("SHUTDOWN NOSAVE: %w", err)
	}
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.kill()
	}
	t.exited = time.Now()
	deadline := time.Now().Add(serverStartTimeout)
	for {
		t.spawned = time.Now()
		err = s.start(ctx)
		if !errors.Is(err, errPortBusy) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // wait for the port to be released
	}
	t.up = time.Now()
	return t, err
}

func (s *stormServer) running() bool {
	if s.done == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// kill SIGKILLs the server and waits for it.
func (s *stormServer) kill() {
	if !s.running() {
		return
	}
	_ = killGroup(s.cmd.Process)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
	}
}

// close ends the server and removes its directory.
func (s *stormServer) close() {
	s.kill()
	_ = os.RemoveAll(s.dir)
}

func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logTail returns the last n lines of path from offset from.
func logTail(path string, from int64, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	defer f.Close()
	if _, err := f.Seek(from, 0); err != nil {
		return ""
	}
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// redisInfo returns one INFO section as a map.
func redisInfo(ctx context.Context, c redis.UniversalClient, section string) (map[string]string, error) {
	s, err := c.Info(ctx, section).Result()
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			m[k] = v
		}
	}
	return m, nil
}
