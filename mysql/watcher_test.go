package mysql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/svcwatch/svcwatch"
	"github.com/svcwatch/svcwatch/protocol"
)

func TestRegisterSeeDeregister(t *testing.T) {
	d := newTestDB(t)
	table := "game/prod/v1/gate"
	var ev events
	a := startWatcher(t, d.db, svcwatch.Instance{Table: table, ID: "a", Name: "10.0.0.1:1"},
		fast(svcwatch.WithHandler(ev.handler()))...)
	b := startWatcher(t, d.db, svcwatch.Instance{Table: table, ID: "b", Name: "10.0.0.2:1", Desc: `{"zone":"eu"}`,
		Meta: map[string]string{"weight": "3"}, State: svcwatch.Draining}, fast()...)

	eventually(t, 5*time.Second, "a sees b", func() bool { return ev.has("add b") })
	got, ok := a.Lookup(table, "b")
	if !ok || got.Name != "10.0.0.2:1" || got.Desc != `{"zone":"eu"}` || got.Meta["weight"] != "3" ||
		got.State != svcwatch.Draining || got.Incarnation != b.Self().Incarnation || !got.RegisteredAt.Equal(b.Self().RegisteredAt) {
		t.Fatalf("a's view of b = %+v, want b's self %+v", got, b.Self())
	}
	if ids := instanceIDs(a.Services(table)); ids != "a,b" {
		t.Fatalf("Services = %s, want a,b", ids)
	}
	// The stored record is the protocol's: another reader decodes it alike.
	var rec []byte
	if err := d.db.QueryRow("SELECT rec FROM svcwatch_instances WHERE tbl = ? AND id = 'b'", table).Scan(&rec); err != nil {
		t.Fatal(err)
	}
	if r, err := protocol.DecodeRecord(string(rec)); err != nil || r.Name != "10.0.0.2:1" || r.State != "draining" {
		t.Fatalf("stored record %s: %+v, %v", rec, r, err)
	}

	if err := b.SetDesc(context.Background(), `{"zone":"us"}`); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, `a sees b's new desc`, func() bool { return ev.has(`update b {"zone":"us"}`) })

	before := d.revision(t, table).rev
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if after := d.revision(t, table).rev; after != before+1 {
		t.Fatalf("revision after deregister = %d, want %d", after, before+1)
	}
	eventually(t, 5*time.Second, "a sees b go", func() bool { return ev.has("remove b") })
	if n := d.rows(t, table); n != 1 {
		t.Fatalf("%d rows left, want 1 (a)", n)
	}
	for _, e := range ev.list() {
		if e == "add a" || e == "remove a" {
			t.Fatalf("a was told about itself: %v", ev.list())
		}
	}
	if st := a.Stats(); !st.Connected || !st.Registered || st.Heartbeats == 0 {
		t.Fatalf("a's stats = %+v", st)
	}
}

func instanceIDs(insts []svcwatch.Instance) string {
	s := ""
	for i, inst := range insts {
		if i > 0 {
			s += ","
		}
		s += inst.ID
	}
	return s
}

// A process that stops heartbeating without deregistering is reaped by the
// others' scans once its deadline has passed by the database's clock.
func TestCrashExpires(t *testing.T) {
	d := newTestDB(t)
	table := "t/crash"
	var ev events
	startWatcher(t, d.db, svcwatch.Instance{Table: table}, fast(svcwatch.WatchOnly(), svcwatch.WithHandler(ev.handler()))...)
	b, err := NewMySQLServiceWatcher(d.db, svcwatch.Instance{Table: table, ID: "b", Name: "h:1"}, fast()...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "b seen", func() bool { return ev.has("add b") })
	rev := d.revision(t, table).rev
	if err := b.crash(ctx); err != nil {
		t.Fatal(err)
	}
	crashed := time.Now()
	if n := d.rows(t, table); n != 1 {
		t.Fatalf("a crash deregistered: %d rows", n)
	}
	eventually(t, 10*time.Second, "b removed", func() bool { return ev.has("remove b") })
	t.Logf("crash detected after %v (TTL 1s, keepalive 200ms, scan 100ms)", time.Since(crashed).Round(time.Millisecond))
	if since := time.Since(crashed); since < 600*time.Millisecond {
		t.Fatalf("removed %v after the crash, before its deadline (TTL 1s after its last heartbeat)", since)
	}
	if n := d.rows(t, table); n != 0 {
		t.Fatalf("%d rows left after the reap", n)
	}
	if got := d.revision(t, table).rev; got != rev+1 {
		t.Fatalf("revision %d after the reap, want %d", got, rev+1)
	}
}

// Deadlines come from the database's UTC clock: a session time zone far from
// UTC changes nothing.
func TestDeadlineByDatabaseClock(t *testing.T) {
	d := newTestDB(t)
	cfg := d.cfg.Clone()
	cfg.Params = map[string]string{"time_zone": "'+09:00'"}
	db := openDB(t, cfg)
	var tz string
	if err := db.QueryRow("SELECT @@session.time_zone").Scan(&tz); err != nil || tz != "+09:00" {
		t.Fatalf("session time zone %q, %v", tz, err)
	}
	startWatcher(t, db, svcwatch.Instance{Table: "t/clock", ID: "a", Name: "h:1"},
		svcwatch.WithTTL(time.Minute), svcwatch.WithLogger(quietLogger()))
	var left int64 // deadline minus the server's Unix time, which no time zone moves
	err := d.db.QueryRow("SELECT deadline_ms - UNIX_TIMESTAMP() * 1000 FROM svcwatch_instances WHERE tbl = 't/clock'").Scan(&left)
	if err != nil {
		t.Fatal(err)
	}
	if left < 55_000 || left > 61_000 {
		t.Fatalf("deadline is %d ms ahead of the server's clock, want about one TTL (60000)", left)
	}
}

// When nothing changes, heartbeats write no revision, scans read no table,
// and a process costs a few statements per second.
func TestIdleCostsLittle(t *testing.T) {
	d := newTestDB(t)
	table := "t/idle"
	db, cnt := d.countingDB(t)
	opts := []svcwatch.Option{svcwatch.WithTTL(time.Second), svcwatch.WithKeepAliveInterval(200 * time.Millisecond),
		svcwatch.WithScanInterval(250 * time.Millisecond), svcwatch.WithLogger(quietLogger())}
	startWatcher(t, d.db, svcwatch.Instance{Table: table, ID: "peer", Name: "h:2"}, opts...)
	w := startWatcher(t, db, svcwatch.Instance{Table: table, ID: "w", Name: "h:1"}, opts...)
	rev := d.revision(t, table)
	loads, stmts, txs := w.Stats().FullLoads, cnt.stmts.Load(), cnt.txs.Load()
	began := time.Now()
	eventually(t, 10*time.Second, "2 s of idling", func() bool {
		return time.Since(began) > 2*time.Second && w.Stats().Heartbeats >= 8
	})
	elapsed := time.Since(began)
	if got := d.revision(t, table); got != rev {
		t.Fatalf("revision moved while idle: %+v -> %+v", rev, got)
	}
	if got := w.Stats().FullLoads; got != loads {
		t.Fatalf("%d full reads while idle", got-loads)
	}
	if n := cnt.txs.Load() - txs; n != 0 {
		t.Fatalf("%d transactions while idle", n)
	}
	n := cnt.stmts.Load() - stmts
	perSec := float64(n) / elapsed.Seconds()
	// 5 heartbeats a second, and a scan every 225 to 250 ms that writes the
	// guard row when it is older than a tenth of the TTL (here: nearly
	// always, as the peer scans as seldom): at most 5 + 2 x 4.5 a second.
	t.Logf("idle: %d statements in %v: %.1f/s (keepalive 200ms, scan 250ms)", n, elapsed.Round(time.Millisecond), perSec)
	if perSec > 15 {
		t.Fatalf("%.1f statements/s while idle, want at most 14", perSec)
	}
}

// Expired instances are reaped a batch at a time, each batch one transaction
// with one revision bump.
func TestReapInBatches(t *testing.T) {
	d := newTestDB(t)
	table := "t/reap"
	w, err := NewMySQLServiceWatcher(d.db, svcwatch.Instance{Table: table}, steady(svcwatch.WatchOnly())...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.ensureSchema(ctx); err != nil {
		t.Fatal(err)
	}
	// 40 processes that died long ago, as their rows were left.
	const dead = 40
	tx, err := d.db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec("INSERT INTO svcwatch_revisions (tbl, rev, epoch, changed_ms) VALUES (?, 40, 'e', 0)", table); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < dead; i++ {
		id := fmt.Sprintf("p%02d", i)
		rec := protocol.Record{Inc: "i" + id, Name: "h:" + id, Reg: 1, TTL: 1000}.Encode()
		_, err := tx.Exec("INSERT INTO svcwatch_instances VALUES (?, ?, ?, ?, ?, 1000)", table, id, "i"+id, rec, 1000+i)
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	var ev events
	w, err = NewMySQLServiceWatcher(d.db, svcwatch.Instance{Table: table},
		steady(svcwatch.WatchOnly(), svcwatch.WithHandler(ev.handler()))...)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Stop(context.Background()) })
	eventually(t, 10*time.Second, "every dead row reaped", func() bool { return d.rows(t, table) == 0 })
	if got := d.revision(t, table).rev; got != 40+(dead+reapLimit-1)/reapLimit {
		t.Fatalf("revision %d after reaping %d rows, want %d: one bump per batch of %d", got, dead, 40+(dead+reapLimit-1)/reapLimit, reapLimit)
	}
	eventually(t, 5*time.Second, "the view empty", func() bool { return len(w.Services(table)) == 0 })
	removes := 0
	for _, e := range ev.list() {
		if len(e) > 6 && e[:6] == "remove" {
			removes++
		}
	}
	if removes != dead {
		t.Fatalf("%d removes, want %d", removes, dead)
	}
}

// Restart vs duplicate, as register.lua decides it.
func TestDuplicateVersusRestart(t *testing.T) {
	d := newTestDB(t)
	table := "t/dup"
	var ev events
	startWatcher(t, d.db, svcwatch.Instance{Table: table}, fast(svcwatch.WatchOnly(), svcwatch.WithHandler(ev.handler()))...)
	lost := make(chan error, 1)
	first := startWatcher(t, d.db, svcwatch.Instance{Table: table, ID: "x", Name: "h:1"},
		fast(svcwatch.WithOnRegistrationLost(func(_ svcwatch.Instance, err error) { lost <- err }))...)
	eventually(t, 5*time.Second, "x seen", func() bool { return ev.has("add x") })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Another address: a second process claiming the ID.
	dup, err := NewMySQLServiceWatcher(d.db, svcwatch.Instance{Table: table, ID: "x", Name: "h:2"}, fast()...)
	if err != nil {
		t.Fatal(err)
	}
	if err := dup.Start(ctx); !errors.Is(err, svcwatch.ErrDuplicateID) {
		t.Fatalf("Start of a duplicate = %v, want ErrDuplicateID", err)
	}
	// Same address, restart replacement off: a duplicate too.
	noRe, err := NewMySQLServiceWatcher(d.db, svcwatch.Instance{Table: table, ID: "x", Name: "h:1"},
		fast(svcwatch.WithoutRestartReplace())...)
	if err != nil {
		t.Fatal(err)
	}
	if err := noRe.Start(ctx); !errors.Is(err, svcwatch.ErrDuplicateID) {
		t.Fatalf("Start without restart replacement = %v, want ErrDuplicateID", err)
	}
	if got, ok := first.Lookup(table, "x"); !ok || got.Incarnation != first.Self().Incarnation {
		t.Fatal("the holder was touched")
	}
	if len(ev.list()) != 1 {
		t.Fatalf("duplicates made events: %v", ev.list())
	}
	// Same address: a restart replaces the old incarnation at once.
	restarted := startWatcher(t, d.db, svcwatch.Instance{Table: table, ID: "x", Name: "h:1"}, fast()...)
	eventually(t, 5*time.Second, "remove then add", func() bool { return len(ev.list()) == 3 })
	if got := ev.list(); got[1] != "remove x" || got[2] != "add x" {
		t.Fatalf("events %v, want add x, remove x, add x", got)
	}
	select {
	case err := <-lost:
		if !errors.Is(err, svcwatch.ErrReplaced) {
			t.Fatalf("the replaced incarnation was told %v, want ErrReplaced", err)
		}
	case <-ctx.Done():
		t.Fatal("the replaced incarnation was never told")
	}
	if first.Stats().Registered {
		t.Fatal("the replaced incarnation still says it is registered")
	}
	if got, _ := restarted.Lookup(table, "x"); got.Incarnation != restarted.Self().Incarnation {
		t.Fatalf("holder %q, want the restarted incarnation %q", got.Incarnation, restarted.Self().Incarnation)
	}
}

// The mass-expiry guard: after nobody reached the database for longer than
// half a TTL, deadlines that passed meanwhile are pushed out, not reaped.
func TestGuardAfterSilence(t *testing.T) {
	d := newTestDB(t)
	table := "t/guard"
	var ev events
	w := startWatcher(t, d.db, svcwatch.Instance{Table: table}, steady(svcwatch.WatchOnly(), svcwatch.WithHandler(ev.handler()))...)
	// A process whose deadline passed while the database was out of reach,
	// with a TTL long enough that it stays pushed out for the whole test.
	rec := protocol.Record{Inc: "i1", Name: "h:1", Reg: 1, TTL: 60_000}.Encode()
	// insert writes an expired row, and makes it look as if nobody had
	// reached the database for ten minutes (in one transaction, so that no
	// scan sees one without the other).
	insert := func(id string, silence bool) {
		t.Helper()
		err := w.inTx(context.Background(), func(tx *sql.Tx) error {
			if err := w.lockTable(context.Background(), tx, table); err != nil {
				return err
			}
			if _, err := tx.Exec("INSERT INTO svcwatch_instances VALUES (?, ?, 'i1', ?, 0, 60000)", table, id, rec); err != nil {
				return err
			}
			if silence {
				if _, err := tx.Exec("UPDATE svcwatch_guard SET last_ms = last_ms - 600000, guard_ms = 0"); err != nil {
					return err
				}
			}
			return w.bump(context.Background(), tx, table)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// Without a silence, an expired row is reaped.
	insert("dead", false)
	eventually(t, 5*time.Second, "dead reaped", func() bool { return d.rows(t, table) == 0 })
	// After one, it is pushed out by its TTL instead.
	insert("alive", true)
	eventually(t, 5*time.Second, "alive seen", func() bool { return ev.has("add alive") })
	eventually(t, 5*time.Second, "the deadline pushed out", func() bool {
		var ahead int64
		err := d.db.QueryRow("SELECT deadline_ms - UNIX_TIMESTAMP() * 1000 FROM svcwatch_instances WHERE id = 'alive'").Scan(&ahead)
		return err == nil && ahead > 50_000
	})
	mark := time.Now().Add(300 * time.Millisecond) // three scans later
	eventually(t, 5*time.Second, "more scans", func() bool { return w.Stats().LastSync.After(mark) })
	if ev.has("remove alive") || d.rows(t, table) != 1 {
		t.Fatalf("a process was reaped after a silence: %v", ev.list())
	}
}

// A table that has had no instance for longer than the retention loses its
// revision row; a watcher of it keeps working, and sees it come back.
func TestCollectEmptiedTable(t *testing.T) {
	d := newTestDB(t)
	table := "t/collect"
	var ev events
	w := startWatcher(t, d.db, svcwatch.Instance{Table: "t/other"}, fast(svcwatch.WatchOnly(), svcwatch.WithTables(table),
		svcwatch.WithTableRetention(time.Second), svcwatch.WithResyncInterval(200*time.Millisecond),
		svcwatch.WithHandler(ev.handler()))...)
	p := startWatcher(t, d.db, svcwatch.Instance{Table: table, ID: "p", Name: "h:1"}, fast()...)
	eventually(t, 5*time.Second, "p seen", func() bool { return ev.has("add p") })
	if err := p.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "p gone", func() bool { return ev.has("remove p") })
	epoch := d.revision(t, table).epoch
	eventually(t, 10*time.Second, "the revision row collected", func() bool { return d.revision(t, table) == position{} })
	startWatcher(t, d.db, svcwatch.Instance{Table: table, ID: "q", Name: "h:2"}, fast()...)
	eventually(t, 5*time.Second, "q seen", func() bool { return ev.has("add q") })
	if got := d.revision(t, table).epoch; got == epoch {
		t.Fatal("the table came back under its old epoch")
	}
	if ids := instanceIDs(w.Services(table)); ids != "q" {
		t.Fatalf("Services = %s, want q", ids)
	}
}

// A prefix is whole path segments, and LIKE's wildcards in it are literal.
func TestPrefixIsLiteral(t *testing.T) {
	d := newTestDB(t)
	startWatcher(t, d.db, svcwatch.Instance{Table: "g_1/prod/a", ID: "in", Name: "h:1"}, fast()...)
	startWatcher(t, d.db, svcwatch.Instance{Table: "gx1/prod/a", ID: "wildcard", Name: "h:2"}, fast()...)
	startWatcher(t, d.db, svcwatch.Instance{Table: "g_1/production/a", ID: "segment", Name: "h:3"}, fast()...)
	var ev events
	w := startWatcher(t, d.db, svcwatch.Instance{}, fast(svcwatch.WatchOnly(), svcwatch.WithHandler(ev.handler()))...)
	if err := w.WatchPrefix(context.Background(), "g_1/prod/"); err != nil {
		t.Fatal(err)
	}
	if got := ev.list(); len(got) != 1 || got[0] != "add in" {
		t.Fatalf("events %v, want only add in", got)
	}
	startWatcher(t, d.db, svcwatch.Instance{Table: "g_1/prod/b", ID: "later", Name: "h:4"}, fast()...)
	eventually(t, 5*time.Second, "a later table found", func() bool { return ev.has("add later") })
	if got := w.Tables(); fmt.Sprint(got) != "[g_1/prod/a g_1/prod/b]" {
		t.Fatalf("Tables = %v", got)
	}

	// The escape character and '%' are literal too.
	startWatcher(t, d.db, svcwatch.Instance{Table: "p%!/x/a", ID: "pct", Name: "h:5"}, fast()...)
	startWatcher(t, d.db, svcwatch.Instance{Table: "pzz/x/a", ID: "notpct", Name: "h:6"}, fast()...)
	var ev2 events
	w2 := startWatcher(t, d.db, svcwatch.Instance{}, fast(svcwatch.WatchOnly(), svcwatch.WithHandler(ev2.handler()))...)
	if err := w2.WatchPrefix(context.Background(), "p%!/x"); err != nil {
		t.Fatal(err)
	}
	if got := ev2.list(); len(got) != 1 || got[0] != "add pct" {
		t.Fatalf("events %v, want only add pct", got)
	}
}

// A database user that may not create tables runs on tables made
// beforehand.
func TestWithoutCreatePrivilege(t *testing.T) {
	d := newTestDB(t)
	// The tables, made by someone who may.
	startWatcher(t, d.db, svcwatch.Instance{Table: "t/priv", ID: "admin", Name: "h:0"}, fast()...)
	user := "svcw_" + d.name[len("svcwatch_test_"):]
	// Both hosts: a fresh install's anonymous ''@'localhost' would shadow '%'.
	for _, host := range []string{"%", "localhost"} {
		account := "'" + user + "'@'" + host + "'"
		for _, stmt := range []string{
			"CREATE USER " + account + " IDENTIFIED BY 'pw'",
			"GRANT SELECT, INSERT, UPDATE, DELETE ON " + d.name + ".* TO " + account,
		} {
			if _, err := d.db.Exec(stmt); err != nil {
				t.Fatalf("%s: %v", stmt, err)
			}
		}
		t.Cleanup(func() { _, _ = d.db.Exec("DROP USER IF EXISTS " + account) })
	}
	cfg := d.cfg.Clone()
	cfg.User, cfg.Passwd = user, "pw"
	db := openDB(t, cfg)
	if _, err := db.Exec("CREATE TABLE IF NOT EXISTS svcwatch_guard (x INT PRIMARY KEY)"); err == nil {
		t.Fatal("the user may create tables; the test proves nothing")
	}
	var ev events
	startWatcher(t, db, svcwatch.Instance{Table: "t/priv", ID: "app", Name: "h:1"}, fast(svcwatch.WithHandler(ev.handler()))...)
	eventually(t, 5*time.Second, "the admin seen", func() bool { return ev.has("add admin") })
}

// A database that does not answer: Start keeps trying until its context ends.
func TestStartWithoutDatabase(t *testing.T) {
	cfg := mysql.NewConfig()
	cfg.Net, cfg.Addr, cfg.Timeout = "tcp", "127.0.0.1:1", 200*time.Millisecond
	db := openDB(t, cfg)
	w, err := NewMySQLServiceWatcher(db, svcwatch.Instance{Table: "t", ID: "a", Name: "h:1"}, fast()...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := w.Start(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Start = %v, want the context's deadline", err)
	}
	if w.Stats().Connected {
		t.Fatal("Stats says connected")
	}
	if err := w.Start(context.Background()); !errors.Is(err, svcwatch.ErrStopped) {
		t.Fatalf("Start after a failed Start = %v, want ErrStopped", err)
	}
}

func TestBadArguments(t *testing.T) {
	if _, err := NewMySQLServiceWatcher(nil, svcwatch.Instance{Table: "t", ID: "a", Name: "h:1"}); !errors.Is(err, svcwatch.ErrInvalid) {
		t.Fatalf("nil db: %v", err)
	}
	cfg := mysql.NewConfig()
	db := openDB(t, cfg)
	for _, p := range []string{"a-b", "a.b", "x`y", "", "012345678901234567890123456789012345678901234567890"} {
		_, err := NewMySQLServiceWatcher(db, svcwatch.Instance{Table: "t", ID: "a", Name: "h:1"}, svcwatch.WithKeyPrefix(p))
		if !errors.Is(err, svcwatch.ErrInvalid) {
			t.Errorf("prefix %q: %v", p, err)
		}
	}
}
