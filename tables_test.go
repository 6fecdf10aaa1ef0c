package svcwatch

// Tables over time: prefixes, Unwatch, the catalog and retention, on every
// backend of the suite.

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch/protocol"
)

// watcherNode starts a watch-only watcher with no table of its own.
func (b *backend) watcherNode(t *testing.T, opts ...Option) *node {
	t.Helper()
	n, err := b.startNode(t, Instance{}, append([]Option{WatchOnly()}, opts...)...)
	if err != nil {
		t.Fatalf("start watcher: %v", err)
	}
	return n
}

// keyPrefix is the key prefix the backend's watchers use.
func (b *backend) keyPrefix() string {
	c := defaultConfig()
	for _, o := range b.opts {
		o(&c)
	}
	return c.KeyPrefix
}

// flushed waits until n's handler has seen every event queued so far.
func flushed(t *testing.T, n *node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := n.w.b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestUnderPrefix(t *testing.T) {
	cases := []struct {
		table, prefix string
		want          bool
	}{
		{"mygame/prod/20190510/game", "mygame/prod", true},
		{"mygame/prod/20190510/game", "mygame/prod/", true},
		{"mygame/prod", "mygame/prod", true},
		{"mygame/production/20190510/game", "mygame/prod", false},
		{"mygame/prod/20190510/game", "mygame/prod/2019", false},
		{"mygame/prod/20190510/game", "mygame/prod/20190510/game/x", false},
		{"other/prod/v1/game", "mygame/prod", false},
		{"mygame/prod/v1", "", false},
	}
	for _, c := range cases {
		if got := UnderPrefix(c.table, c.prefix); got != c.want {
			t.Errorf("UnderPrefix(%q, %q) = %v, want %v", c.table, c.prefix, got, c.want)
		}
	}
}

func TestWatchPrefixBadInput(t *testing.T) {
	b := miniBackend(t)
	n := b.watcherNode(t)
	ctx := context.Background()
	for _, p := range []string{"", "/", "a b", "a{b}"} {
		if err := n.w.WatchPrefix(ctx, p); !errors.Is(err, ErrInvalid) {
			t.Errorf("WatchPrefix(%q) = %v, want ErrInvalid", p, err)
		}
		if err := n.w.UnwatchPrefix(ctx, p); !errors.Is(err, ErrInvalid) {
			t.Errorf("UnwatchPrefix(%q) = %v, want ErrInvalid", p, err)
		}
	}
	if err := n.w.Unwatch(ctx, "bad table"); !errors.Is(err, ErrInvalid) {
		t.Errorf("Unwatch(bad) = %v, want ErrInvalid", err)
	}
}

func TestWatchPrefixWholeSegments(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		checkLeaks(t)
		b.newNode(t, "pfx/prod/v1/game", "g1")
		b.newNode(t, "pfx/prod/v2/gate", "t1")
		b.newNode(t, "pfx/production/v1/game", "x1")
		b.newNode(t, "other/prod/v1/game", "y1")
		w := b.watcherNode(t)
		if err := w.w.WatchPrefix(context.Background(), "pfx/prod"); err != nil {
			t.Fatal(err)
		}
		// Loaded and delivered when WatchPrefix returns.
		if got := strings.Join(w.w.Tables(), ","); got != "pfx/prod/v1/game,pfx/prod/v2/gate" {
			t.Errorf("Tables() = %s", got)
		}
		if got := ids(w.w.Services("pfx/prod/v1/game")); got != "g1" {
			t.Errorf("v1/game = %s, want g1", got)
		}
		if !w.rec.has("add", "g1") || !w.rec.has("add", "t1") {
			t.Errorf("OnAdd not delivered before WatchPrefix returned: %s", w.rec)
		}
		if w.rec.has("add", "x1") || w.rec.has("add", "y1") {
			t.Errorf("tables outside the prefix were watched: %s", w.rec)
		}
		// A prefix given before Start works the same.
		pre, err := NewRedisServiceWatcher(b.client(t), Instance{}, append([]Option{WatchOnly(), WithLogger(quietLogger())}, b.opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		if err := pre.WatchPrefix(context.Background(), "pfx/prod/v2/"); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if err := pre.Start(ctx); err != nil {
			t.Fatal(err)
		}
		defer stopNode(t, pre)
		if got := strings.Join(pre.Tables(), ","); got != "pfx/prod/v2/gate" {
			t.Errorf("prefix given before Start: Tables() = %s", got)
		}
		if got := ids(pre.Services("pfx/prod/v2/gate")); got != "t1" {
			t.Errorf("prefix given before Start: v2/gate = %s", got)
		}
	})
}

// TestWatchPrefixFindsNewTableByPush runs the prefix watcher on a clock that
// never moves: no scan ever fires, so only the catalog's announcement can
// bring the new table.
func TestWatchPrefixFindsNewTableByPush(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		checkLeaks(t)
		b.newNode(t, "roll/prod/v1/game", "g1")
		w := b.watcherNode(t, withClock(newFakeClock()))
		if err := w.w.WatchPrefix(context.Background(), "roll/prod"); err != nil {
			t.Fatal(err)
		}
		b.newNode(t, "roll/prod/v2/game", "g2")
		eventually(t, "the new table's peer", func() bool { return w.rec.has("add", "g2") })
		if got := strings.Join(w.w.Tables(), ","); got != "roll/prod/v1/game,roll/prod/v2/game" {
			t.Errorf("Tables() = %s", got)
		}
		// A table outside the prefix is not watched.
		b.newNode(t, "roll/staging/v2/game", "s2")
		b.newNode(t, "roll/prod/v3/game", "g3")
		eventually(t, "the third table's peer", func() bool { return w.rec.has("add", "g3") })
		if w.rec.has("add", "s2") {
			t.Errorf("a table outside the prefix was watched: %s", w.rec)
		}
	})
}

// dropCatalogTouch makes a client's catalog additions vanish, as if the
// catalog write and its announcement were lost.
type dropCatalogTouch struct{}

func (dropCatalogTouch) DialHook(next redis.DialHook) redis.DialHook { return next }
func (dropCatalogTouch) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if isCatalogTouch(cmd) {
			cmd.(*redis.Cmd).SetVal([]interface{}{int64(0), int64(0)})
			return nil
		}
		return next(ctx, cmd)
	}
}
func (dropCatalogTouch) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func isCatalogTouch(cmd redis.Cmder) bool {
	args := cmd.Args()
	if len(args) < 2 {
		return false
	}
	s, _ := args[1].(string)
	return s == scriptCatalogTouch.Hash() || s == protocol.CatalogTouch
}

func TestWatchPrefixFindsNewTableByScan(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		checkLeaks(t)
		w := b.watcherNode(t)
		if err := w.w.WatchPrefix(context.Background(), "lost/prod"); err != nil {
			t.Fatal(err)
		}
		// g2 registers, but its catalog call is lost; the catalog gets the
		// table later without an announcement (a message lost in a reconnect).
		c := b.client(t)
		c.AddHook(dropCatalogTouch{})
		self := Instance{Table: "lost/prod/v2/game", ID: "g2", Name: "127.0.0.1:2"}
		g2, err := NewRedisServiceWatcher(c, self, append([]Option{WithTTL(b.ttl), WithKeepAliveInterval(b.keepAlive),
			WithLogger(quietLogger())}, b.opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if err := g2.Start(ctx); err != nil {
			t.Fatal(err)
		}
		defer stopNode(t, g2)
		raw := b.client(t)
		cat := protocol.Catalog(b.keyPrefix())
		if err := raw.ZAdd(ctx, cat.Tables, redis.Z{Score: float64(time.Now().UnixMilli()), Member: self.Table}).Err(); err != nil {
			t.Fatal(err)
		}
		if err := raw.Incr(ctx, cat.Rev).Err(); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the scan to find the table", func() bool { return w.rec.has("add", "g2") })
	})
}

func TestUnwatch(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		checkLeaks(t)
		const own, other, under = "uw/prod/v1/gate", "uw/prod/v1/game", "uw/prod/v1/chat"
		b.newNode(t, other, "g1")
		b.newNode(t, other, "g2")
		b.newNode(t, under, "c1")
		a := b.newNode(t, own, "a", WithTables(other))
		ctx := context.Background()
		if got := ids(a.w.Services(other)); got != "g1,g2" {
			t.Fatalf("before Unwatch: %s", got)
		}
		if err := a.w.Unwatch(ctx, other); err != nil {
			t.Fatal(err)
		}
		// OnRemove delivered before Unwatch returned; the table is gone.
		if !a.rec.has("remove", "g1") || !a.rec.has("remove", "g2") {
			t.Errorf("Unwatch did not deliver OnRemove: %s", a.rec)
		}
		if s := a.w.Services(other); s != nil {
			t.Errorf("Services after Unwatch = %v", s)
		}
		if got := strings.Join(a.w.Tables(), ","); got != own {
			t.Errorf("Tables() = %s", got)
		}
		// Later changes of the table are not reported.
		b.newNode(t, other, "g3")
		if err := a.w.Watch(ctx, under); err != nil { // a round trip later
			t.Fatal(err)
		}
		flushed(t, a)
		if a.rec.has("add", "g3") {
			t.Errorf("a change of an unwatched table was reported: %s", a.rec)
		}
		// Self's own table cannot be unwatched; an unwatched table is a no-op.
		if err := a.w.Unwatch(ctx, own); !errors.Is(err, ErrInvalid) {
			t.Errorf("Unwatch(own table) = %v, want ErrInvalid", err)
		}
		if err := a.w.Unwatch(ctx, "uw/never/watched"); err != nil {
			t.Errorf("Unwatch(not watched) = %v", err)
		}
		// Watched by name and by prefix: stays until both are undone.
		if err := a.w.WatchPrefix(ctx, "uw/prod"); err != nil {
			t.Fatal(err)
		}
		if err := a.w.Unwatch(ctx, under); err != nil {
			t.Fatal(err)
		}
		if got := ids(a.w.Services(under)); got != "c1" {
			t.Errorf("a table under a watched prefix was dropped by Unwatch: %q", got)
		}
		if a.rec.has("remove", "c1") {
			t.Errorf("OnRemove for a table still watched: %s", a.rec)
		}
		// The prefix also brought back the unwatched table.
		if got := ids(a.w.Services(other)); got != "g1,g2,g3" {
			t.Errorf("prefix did not watch %s: %q", other, got)
		}
		if err := a.w.UnwatchPrefix(ctx, "uw/prod"); err != nil {
			t.Fatal(err)
		}
		if !a.rec.has("remove", "c1") || a.w.Services(under) != nil {
			t.Errorf("UnwatchPrefix kept %s: %s", under, a.rec)
		}
		if got := strings.Join(a.w.Tables(), ","); got != own {
			t.Errorf("Tables() after UnwatchPrefix = %s", got)
		}
		if err := a.w.UnwatchPrefix(ctx, "uw/prod"); err != nil {
			t.Errorf("UnwatchPrefix twice = %v", err)
		}
		// Watching again loads the table afresh.
		if err := a.w.Watch(ctx, other); err != nil {
			t.Fatal(err)
		}
		if got := ids(a.w.Services(other)); got != "g1,g2,g3" {
			t.Errorf("Watch after Unwatch: %q", got)
		}
	})
}

// tableKeys counts the keys a table has in Redis.
func tableKeys(t *testing.T, c redis.UniversalClient, prefix, table string) int64 {
	t.Helper()
	keys := protocol.TableKeys(prefix, table)
	n, err := c.Exists(context.Background(), keys.All()...).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func inCatalog(t *testing.T, c redis.UniversalClient, prefix, table string) bool {
	t.Helper()
	_, err := c.ZScore(context.Background(), protocol.Catalog(prefix).Tables, table).Result()
	if err != nil && err != redis.Nil {
		t.Fatal(err)
	}
	return err == nil
}

func TestRetentionCollectsEmptiedTables(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		checkLeaks(t)
		const (
			live    = "gc/prod/v2/game"
			emptied = "gc/prod/v1/game"
			crashed = "gc/prod/v0/game"
		)
		prefix := b.keyPrefix()
		raw := b.client(t)
		retention := MinRetention
		opts := []Option{WithTableRetention(retention)}
		l := b.newNode(t, live, "l1", opts...)
		e := b.newNode(t, emptied, "e1", opts...)
		x := b.newNode(t, crashed, "x1", opts...)
		// A watcher of the emptied table by name sees it collected, then re-created.
		watcher := b.watcherNode(t, append(opts, WithTables(emptied))...)
		for _, tb := range []string{live, emptied, crashed} {
			if !inCatalog(t, raw, prefix, tb) {
				t.Fatalf("%s is not in the catalog after its registration", tb)
			}
		}
		// The catalog says the live table showed no sign of life for ages: the
		// collector must ask the table itself, and keep it.
		if err := raw.ZAdd(context.Background(), protocol.Catalog(prefix).Tables, redis.Z{Score: 1, Member: live}).Err(); err != nil {
			t.Fatal(err)
		}
		stopNode(t, e.w)
		crash(t, x.w) // its entry stays until reaped; nobody watches its table
		// Past the crashed entry's TTL and the retention, the live node heartbeating.
		b.advancePastTTL(t, b.ttl+2*retention, l)
		eventually(t, "the emptied and the crashed tables collected", func() bool {
			if b.mr != nil {
				b.advancePastTTL(t, retention/4, l)
			}
			return tableKeys(t, raw, prefix, emptied) == 0 && tableKeys(t, raw, prefix, crashed) == 0 &&
				!inCatalog(t, raw, prefix, emptied) && !inCatalog(t, raw, prefix, crashed)
		})
		if n := tableKeys(t, raw, prefix, live); n == 0 || !inCatalog(t, raw, prefix, live) {
			t.Errorf("the live table lost its keys (%d left) or its catalog entry", n)
		}
		if score, err := raw.ZScore(context.Background(), protocol.Catalog(prefix).Tables, live).Result(); err != nil || score <= 1 {
			t.Errorf("the live table's catalog score was not raised: %v %v", score, err)
		}
		if got := ids(l.w.Services(live)); got != "l1" {
			t.Errorf("live table's view = %q", got)
		}
		// A watcher reading a collected table leaves it without keys.
		flushed(t, watcher)
		if n := tableKeys(t, raw, prefix, emptied); n != 0 {
			t.Errorf("watching a collected table re-created %d keys", n)
		}
		// Re-created: the watcher sees the new peer, with no false event.
		before := len(watcher.rec.events())
		b.newNode(t, emptied, "e2", opts...)
		eventually(t, "the re-created table's peer", func() bool { return watcher.rec.has("add", "e2") })
		flushed(t, watcher)
		if got := watcher.rec.events()[before:]; len(got) != 1 {
			t.Errorf("re-creation gave events %v, want one add", got)
		}
		var ops []string
		for _, ev := range watcher.rec.events() {
			ops = append(ops, ev.op+" "+ev.inst.ID)
		}
		if got := strings.Join(ops, ","); got != "add e1,remove e1,add e2" {
			t.Errorf("events of the emptied table: %s", got)
		}
		if !inCatalog(t, raw, prefix, emptied) {
			t.Error("the re-created table is not in the catalog")
		}
	})
}
