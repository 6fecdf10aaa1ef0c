package mysql

import (
	"context"
	"testing"
	"time"

	"github.com/svcwatch/svcwatch"
)

// The database out of reach for everyone for three TTLs (its connections
// cut, new ones refused, as while it restarts): every process keeps its view,
// nobody alive is reported removed or registers again, and a process that
// died during the outage is removed after it.
func TestOutageLongerThanTTL(t *testing.T) {
	d := newTestDB(t)
	proxy := startCutProxy(t, d.cfg.Addr)
	cfg := d.cfg.Clone()
	cfg.Addr, cfg.Timeout = proxy.addr(), 500*time.Millisecond
	table := "t/outage"
	var ev events
	w := startWatcher(t, openDB(t, cfg), svcwatch.Instance{Table: table},
		fast(svcwatch.WatchOnly(), svcwatch.WithHandler(ev.handler()))...)
	// It heartbeats seldom, so that after the outage w's scan (every 100ms)
	// comes first and finds its deadline passed.
	alive := startWatcher(t, openDB(t, cfg), svcwatch.Instance{Table: table, ID: "alive", Name: "h:1"},
		svcwatch.WithTTL(time.Second), svcwatch.WithKeepAliveInterval(450*time.Millisecond), svcwatch.WithLogger(quietLogger()))
	doomed, err := NewMySQLServiceWatcher(openDB(t, cfg), svcwatch.Instance{Table: table, ID: "doomed", Name: "h:2"}, fast()...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := doomed.Start(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "both peers seen", func() bool { return ev.has("add alive") && ev.has("add doomed") })

	proxy.cut()
	if err := doomed.crash(ctx); err != nil { // dies during the outage
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the watcher notices", func() bool { return !w.Stats().Connected })
	time.Sleep(3 * time.Second) // the outage itself: three TTLs, no event to wait for
	if got := ev.list(); len(got) != 2 {
		t.Fatalf("events during the outage: %v", got)
	}
	if ids := instanceIDs(w.Services(table)); ids != "alive,doomed" {
		t.Fatalf("view during the outage: %s, want the last one kept", ids)
	}
	proxy.restore()
	back := time.Now()
	eventually(t, 10*time.Second, "the dead one removed", func() bool { return ev.has("remove doomed") })
	t.Logf("the process that died during the outage was removed %v after the database came back (TTL 1s)",
		time.Since(back).Round(time.Millisecond))
	if ev.has("remove alive") {
		t.Fatalf("a live process was removed: %v", ev.list())
	}
	if n := alive.Stats().Reregistrations; n != 0 {
		t.Fatalf("%d re-registrations: a live process was reaped", n)
	}
	eventually(t, 5*time.Second, "connected again", func() bool {
		return w.Stats().Connected && alive.Stats().Registered
	})
}
