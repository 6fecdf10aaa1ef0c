package etcd

// faults_test.go: etcd's own faults, made for real on an embedded server: the
// server stopped and started again, a compaction while a watcher is cut off,
// a lease that expires while its process is partitioned; and what is stored.

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/svcwatch/svcwatch"
	"github.com/svcwatch/svcwatch/protocol"
)

const table = "mygame/prod/20190510/game"

// The server stops for longer than the TTL and starts again on its data:
// nobody alive is reported removed (etcd extends every lease when a leader
// takes over), Stats shows the outage, and changes flow again afterwards.
func TestServerRestart(t *testing.T) {
	checkGoroutines(t)
	srv := startServer(t)
	a := startNode(t, srv.addr(), table, "a")
	b := startNode(t, srv.addr(), table, "b")
	w := startNode(t, srv.addr(), table, "")
	for _, n := range []*node{a, b, w} {
		sees(t, n, table, "a,b")
	}
	// Steady state: each process renews its lease over its keepalive
	// stream. (A server draining for a graceful stop accepts no new stream,
	// so a process that had not renewed yet would expire meanwhile.)
	for _, n := range []*node{a, b} {
		eventually(t, "a heartbeat of "+n.w.Self().ID, func() bool { return n.w.Stats().Heartbeats > 0 })
	}

	srv.stop()
	eventually(t, "a to see etcd gone", func() bool { return !a.w.Stats().Connected })
	time.Sleep(2 * time.Second) // the outage must outlast the TTL (1s); nothing to poll for
	if len(w.w.Services(table)) != 2 || a.rec.count("remove") != 0 || w.rec.count("remove") != 0 {
		t.Fatalf("the view changed while etcd was down: w sees %s; events at w: %s", ids(w.w.Services(table)), w.rec)
	}
	srv.restart()

	eventually(t, "a to heartbeat again", func() bool { return a.w.Stats().Connected && a.w.Stats().Registered })
	c := startNode(t, srv.addr(), table, "c")
	for _, n := range []*node{a, b, c, w} {
		sees(t, n, table, "a,b,c")
	}
	mark := b.w.Stats().Heartbeats
	eventually(t, "b's heartbeats", func() bool { return b.w.Stats().Heartbeats > mark+3 })
	for _, n := range []*node{a, b, w} {
		if n.rec.count("remove") != 0 {
			t.Errorf("%s heard a live process removed: %s", n.w.Self().Key(), n.rec)
		}
	}
	if err := b.w.SetDesc(ctxT(t), "after"); err != nil {
		t.Fatalf("SetDesc after the restart: %v", err)
	}
	eventually(t, "w to see b's new desc", func() bool { i, _ := w.w.Lookup(table, "b"); return i.Desc == "after" })
}

// A watcher is cut off; meanwhile peers change and etcd compacts past the
// revision its watch stood at. When it is back, its watch cannot resume:
// it reads the table again, and its view converges with the right events.
func TestCompactionDuringDisconnect(t *testing.T) {
	checkGoroutines(t)
	srv := startServer(t)
	px := startProxy(t, srv.addr())
	long := []svcwatch.Option{svcwatch.WithTTL(5 * time.Second), svcwatch.WithKeepAliveInterval(200 * time.Millisecond)}
	w := startNode(t, px.addr(), table, "w", long...)
	gone := startNode(t, srv.addr(), table, "gone")
	z := startNode(t, srv.addr(), table, "z")
	sees(t, w, table, "gone,w,z")
	loads := w.w.Stats().FullLoads

	px.partition()
	eventually(t, "w to notice the partition", func() bool { return !w.w.Stats().Connected })
	if err := gone.w.Stop(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	startNode(t, srv.addr(), table, "x")
	if err := z.w.SetDesc(ctxT(t), "moved"); err != nil {
		t.Fatal(err)
	}
	admin := newClient(t, srv.addr())
	resp, err := admin.Get(ctxT(t), "any")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Compact(ctxT(t), resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact: %v", err)
	}
	px.heal()

	sees(t, w, table, "w,x,z")
	eventually(t, "w to see z's new desc", func() bool { i, _ := w.w.Lookup(table, "z"); return i.Desc == "moved" })
	if w.w.Stats().FullLoads <= loads {
		t.Errorf("FullLoads %d: the table was not read again after the compaction", w.w.Stats().FullLoads)
	}
	if w.rec.count("remove gone@") != 1 || w.rec.count("add x@") != 1 || w.rec.count("update z") != 1 {
		t.Errorf("events at w = %s; want one remove of gone, one add of x, one update of z", w.rec)
	}
	// The cut-off watcher's own registration outlived the partition (TTL 5s).
	if z.rec.count("remove w@") != 0 || !w.w.Stats().Registered {
		t.Errorf("w was removed while cut off for less than its TTL; z heard %s", z.rec)
	}
	// And its watch works again.
	startNode(t, srv.addr(), table, "y")
	sees(t, w, table, "w,x,y,z")
}

// A process is partitioned from etcd for longer than its TTL: its lease
// expires and peers remove it; it keeps its own view meanwhile. When the
// partition heals, it registers again (same incarnation) and peers add it back.
func TestLeaseExpiresWhilePartitioned(t *testing.T) {
	checkGoroutines(t)
	srv := startServer(t)
	px := startProxy(t, srv.addr())
	lost := make(chan error, 1)
	p := startNode(t, px.addr(), table, "p", svcwatch.WithOnRegistrationLost(func(_ svcwatch.Instance, err error) { lost <- err }))
	q := startNode(t, srv.addr(), table, "q")
	sees(t, p, table, "p,q")
	sees(t, q, table, "p,q")
	inc := p.w.Self().Incarnation

	px.partition()
	began := time.Now()
	eventually(t, "q to hear p expire", func() bool { return q.rec.count("remove p@") == 1 })
	t.Logf("the partitioned process was removed at its peer %v after the partition (TTL 1s)", time.Since(began).Round(time.Millisecond))
	eventually(t, "p to know it is not registered", func() bool {
		st := p.w.Stats()
		return !st.Registered && !st.Connected
	})
	if p.rec.count("remove") != 0 || ids(p.w.Services(table)) != "p,q" {
		t.Errorf("the partitioned process changed its view: %s; events %s", ids(p.w.Services(table)), p.rec)
	}

	px.heal()
	eventually(t, "q to see p back", func() bool { return q.rec.count("add p@"+inc) == 2 }, func() string { return q.rec.String() })
	eventually(t, "p registered again", func() bool { return p.w.Stats().Registered })
	if n := p.w.Stats().Reregistrations; n == 0 {
		t.Errorf("Reregistrations = 0 after the lease was lost")
	}
	if got := p.w.Self().Incarnation; got != inc {
		t.Errorf("incarnation changed from %s to %s: a re-registration keeps it", inc, got)
	}
	select {
	case err := <-lost:
		t.Errorf("WithOnRegistrationLost called: %v", err)
	default:
	}
	// Changes flow both ways again.
	startNode(t, srv.addr(), table, "r")
	sees(t, p, table, "p,q,r")
}

// While a process is partitioned and its lease expired, another process takes
// its ID (another address). When the partition heals, the first one stands
// down with ErrDuplicateID instead of fighting.
func TestIDTakenWhilePartitioned(t *testing.T) {
	checkGoroutines(t)
	srv := startServer(t)
	px := startProxy(t, srv.addr())
	lost := make(chan error, 1)
	p := startNode(t, px.addr(), table, "p", svcwatch.WithOnRegistrationLost(func(_ svcwatch.Instance, err error) { lost <- err }))
	q := startNode(t, srv.addr(), table, "q")
	sees(t, q, table, "p,q")
	px.partition()
	eventually(t, "q to hear p expire", func() bool { return q.rec.count("remove p@") == 1 })

	rec := &recorder{}
	cli := newClient(t, srv.addr())
	other, err := NewEtcdServiceWatcher(cli, svcwatch.Instance{Table: table, ID: "p", Name: "10.9.0.2:p"},
		append([]svcwatch.Option{svcwatch.WithHandler(rec), svcwatch.WithLogger(quietLogger())}, fast...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Stop(context.Background()) })
	if err := other.Start(ctxT(t)); err != nil {
		t.Fatalf("start the second holder: %v", err)
	}
	px.heal()
	select {
	case err := <-lost:
		if !errors.Is(err, svcwatch.ErrDuplicateID) {
			t.Errorf("WithOnRegistrationLost got %v, want ErrDuplicateID", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("the partitioned process did not stand down")
	}
	i, _ := q.w.Lookup(table, "p")
	if i.Name != "10.9.0.2:p" || i.Incarnation != other.Self().Incarnation {
		t.Errorf("q sees p at %s@%s; want the second holder", i.Name, i.Incarnation)
	}
	if p.w.Stats().Registered {
		t.Errorf("the stood-down process says it is registered")
	}
}

// What is stored is the Redis record's JSON, under prefix/table/id, attached
// to a lease of the TTL; unreadable records and the keys of nested tables are
// not reported; the rest of the table works.
func TestStoredRecordsAndForeignData(t *testing.T) {
	checkGoroutines(t)
	srv := startServer(t)
	admin := newClient(t, srv.addr())
	ctx := ctxT(t)
	if _, err := admin.Put(ctx, "svcwatch/"+table+"/bad", "{not json"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Put(ctx, "svcwatch/"+table+"/nested/n1", protocol.Record{Inc: "i", Name: "h:1"}.Encode()); err != nil {
		t.Fatal(err)
	}
	a := startNode(t, srv.addr(), table, "a", svcwatch.WithTTL(3*time.Second))
	if err := a.w.SetMeta(ctx, map[string]string{"zone": "1"}); err != nil {
		t.Fatal(err)
	}
	if err := a.w.SetState(ctx, svcwatch.Draining); err != nil {
		t.Fatal(err)
	}
	w := startNode(t, srv.addr(), table, "")
	if err := w.w.Watch(ctx, table+"/nested"); err != nil {
		t.Fatal(err)
	}
	sees(t, w, table, "a")
	sees(t, w, table+"/nested", "n1")
	if _, err := admin.Put(ctx, "svcwatch/"+table+"/bad2", "[]"); err != nil {
		t.Fatal(err)
	}
	startNode(t, srv.addr(), table, "b")
	sees(t, w, table, "a,b")

	resp, err := admin.Get(ctx, "svcwatch/"+table+"/a")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get a's key: %v, %d keys", err, len(resp.Kvs))
	}
	r, err := protocol.DecodeRecord(string(resp.Kvs[0].Value))
	self := a.w.Self()
	if err != nil || r.Inc != self.Incarnation || r.Name != self.Name || r.Meta["zone"] != "1" ||
		r.State != protocol.StateDraining || r.TTL != 3000 || r.Reg != self.RegisteredAt.UnixMilli() || r.Ver == "" {
		t.Errorf("stored record %+v (%v); self %+v", r, err, self)
	}
	ttl, err := admin.TimeToLive(ctx, clientv3.LeaseID(resp.Kvs[0].Lease))
	if err != nil || ttl.GrantedTTL != 3 {
		t.Errorf("a's key lease: %+v, %v; want a lease of 3s", ttl, err)
	}
}
