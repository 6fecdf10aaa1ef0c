package mysql

// db_test.go: what the tests share: a database of their own on the MariaDB
// (or MySQL) of the machine, a pool that counts the statements it runs, a
// TCP proxy that cuts the database off, and polling.

import (
	"context"
	"crypto/rand"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/svcwatch/svcwatch"
)

// adminDSN is where the tests find the server: SVCWATCH_MYSQL_DSN, or root
// without a password on 127.0.0.1:3306 (what these machines and CI start).
func adminDSN() string {
	if dsn := os.Getenv("SVCWATCH_MYSQL_DSN"); dsn != "" {
		return dsn
	}
	return "root@tcp(127.0.0.1:3306)/"
}

// testDB is one test's database.
type testDB struct {
	name string
	cfg  *mysql.Config // DSN of the database, interpolateParams on
	db   *sql.DB       // a pool on it
}

// newTestDB creates a database of the test's own (svcwatch_test_<random>)
// and drops it at cleanup. Without a server it skips the test, unless
// SVCWATCH_REQUIRE_DB=1 (CI), which makes it fail.
func newTestDB(t testing.TB) *testDB {
	t.Helper()
	cfg, err := mysql.ParseDSN(adminDSN())
	if err != nil {
		t.Fatalf("SVCWATCH_MYSQL_DSN: %v", err)
	}
	cfg.Timeout = 2 * time.Second
	admin, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := admin.PingContext(ctx); err != nil {
		admin.Close()
		msg := fmt.Sprintf("no MySQL/MariaDB at %s (%v): start one (e.g. start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd) or set SVCWATCH_MYSQL_DSN", cfg.Addr, err)
		if os.Getenv("SVCWATCH_REQUIRE_DB") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "svcwatch_test_" + hex.EncodeToString(b[:])
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		admin.Close()
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
		admin.Close()
	})
	cfg.DBName = name
	cfg.InterpolateParams = true
	return &testDB{name: name, cfg: cfg, db: openDB(t, cfg)}
}

// openDB opens a pool on cfg, closed at cleanup.
func openDB(t testing.TB, cfg *mysql.Config) *sql.DB {
	t.Helper()
	c, err := mysql.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	return db
}

// countingDB opens a pool whose statements are counted.
func (d *testDB) countingDB(t testing.TB) (*sql.DB, *counter) {
	t.Helper()
	c, err := mysql.NewConnector(d.cfg)
	if err != nil {
		t.Fatal(err)
	}
	cnt := &counter{}
	db := sql.OpenDB(countingConnector{c, cnt})
	t.Cleanup(func() { db.Close() })
	return db, cnt
}

// counter counts what a pool sent: statements (each one round trip with
// interpolateParams) and transactions (BEGIN costs two more round trips with
// an isolation level, COMMIT or ROLLBACK one).
type counter struct{ stmts, txs atomic.Int64 }

type countingConnector struct {
	driver.Connector
	n *counter
}

func (c countingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &countingConn{conn, c.n}, nil
}

// countingConn passes every interface database/sql looks for on to the
// driver's connection, counting statements and transactions.
type countingConn struct {
	driver.Conn
	n *counter
}

func (c *countingConn) ExecContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Result, error) {
	r, err := c.Conn.(driver.ExecerContext).ExecContext(ctx, q, args)
	if !errors.Is(err, driver.ErrSkip) {
		c.n.stmts.Add(1)
	}
	return r, err
}

func (c *countingConn) QueryContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Rows, error) {
	r, err := c.Conn.(driver.QueryerContext).QueryContext(ctx, q, args)
	if !errors.Is(err, driver.ErrSkip) {
		c.n.stmts.Add(1)
	}
	return r, err
}

func (c *countingConn) PrepareContext(ctx context.Context, q string) (driver.Stmt, error) {
	return c.Conn.(driver.ConnPrepareContext).PrepareContext(ctx, q)
}

func (c *countingConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	c.n.txs.Add(1)
	return c.Conn.(driver.ConnBeginTx).BeginTx(ctx, opts)
}

func (c *countingConn) Ping(ctx context.Context) error { return c.Conn.(driver.Pinger).Ping(ctx) }

func (c *countingConn) ResetSession(ctx context.Context) error {
	return c.Conn.(driver.SessionResetter).ResetSession(ctx)
}

func (c *countingConn) IsValid() bool { return c.Conn.(driver.Validator).IsValid() }

func (c *countingConn) CheckNamedValue(nv *driver.NamedValue) error {
	return c.Conn.(driver.NamedValueChecker).CheckNamedValue(nv)
}

// cutProxy forwards 127.0.0.1:port to the database until Cut, which closes
// every connection (the server rolls back what they had open, as when a
// database restarts) and refuses new ones until Restore.
type cutProxy struct {
	ln     net.Listener
	target string
	down   atomic.Bool
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func startCutProxy(t testing.TB, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

func (p *cutProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.down.Load() {
			c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", p.target, 2*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

func (p *cutProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// cut closes every connection and refuses new ones.
func (p *cutProxy) cut() {
	p.down.Store(true)
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

func (p *cutProxy) restore() { p.down.Store(false) }

func (p *cutProxy) close() {
	p.ln.Close()
	p.cut()
	p.wg.Wait()
}

// eventually polls cond every 10ms until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func quietLogger() *slog.Logger {
	if os.Getenv("DEBUGLOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// events records what a handler was told, in order.
type events struct {
	mu  sync.Mutex
	log []string
}

func (e *events) add(s string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.log = append(e.log, s)
}

func (e *events) list() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.log...)
}

func (e *events) has(s string) bool {
	for _, x := range e.list() {
		if x == s {
			return true
		}
	}
	return false
}

func (e *events) handler() svcwatch.Handler {
	return svcwatch.HandlerFuncs{
		Add:    func(i svcwatch.Instance) { e.add("add " + i.ID) },
		Update: func(_, c svcwatch.Instance) { e.add("update " + c.ID + " " + c.Desc) },
		Remove: func(i svcwatch.Instance) { e.add("remove " + i.ID) },
	}
}

// fast are the options of most tests: a one-second TTL, so that expiry takes
// about a second.
func fast(extra ...svcwatch.Option) []svcwatch.Option {
	return append([]svcwatch.Option{
		svcwatch.WithTTL(time.Second), svcwatch.WithKeepAliveInterval(200 * time.Millisecond),
		svcwatch.WithScanInterval(100 * time.Millisecond), svcwatch.WithLogger(quietLogger()),
	}, extra...)
}

// steady are the options of the tests about reaping and the guard: scans as
// fast as fast's, but a TTL of 10s, so that only a silence of 5s (not a
// machine busy for half a second) sets the guard off.
func steady(extra ...svcwatch.Option) []svcwatch.Option {
	return append([]svcwatch.Option{
		svcwatch.WithTTL(10 * time.Second), svcwatch.WithScanInterval(100 * time.Millisecond),
		svcwatch.WithLogger(quietLogger()),
	}, extra...)
}

// startWatcher builds and starts a watcher, stopped at cleanup.
func startWatcher(t testing.TB, db *sql.DB, self svcwatch.Instance, opts ...svcwatch.Option) *MySQLServiceWatcher {
	t.Helper()
	w, err := NewMySQLServiceWatcher(db, self, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		t.Fatalf("start %s: %v", self.Key(), err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := w.Stop(ctx); err != nil {
			t.Errorf("stop %s: %v", self.Key(), err)
		}
	})
	return w
}

// revision reads a table's revision row (zero when it has none).
func (d *testDB) revision(t testing.TB, table string) position {
	t.Helper()
	var p position
	err := d.db.QueryRow("SELECT epoch, rev FROM svcwatch_revisions WHERE tbl = ?", table).Scan(&p.epoch, &p.rev)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		t.Fatal(err)
	}
	return p
}

// rows counts a table's instance rows.
func (d *testDB) rows(t testing.TB, table string) int {
	t.Helper()
	var n int
	if err := d.db.QueryRow("SELECT COUNT(*) FROM svcwatch_instances WHERE tbl = ?", table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
