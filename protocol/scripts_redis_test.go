package protocol

// The replies PROTOCOL.md gives for the collection and catalog scripts (6.3,
// 6.10 to 6.13), checked on a real redis-server, every call made as a user
// with the minimum ACL of PROTOCOL.md 3.3.

import (
	"context"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch/internal/redistest"
)

// minimumACL is PROTOCOL.md 3.3's minimum: the client's commands and the
// commands the scripts call, on the keys and channels of the prefix.
const minimumACL = "user app on >pw ~svcwatch:* &svcwatch:* -@all +evalsha +eval +subscribe +unsubscribe +ping " +
	"+get +zrange +time +exists +set +del +incr +hget +hset +hsetnx +hdel +hexists +hlen +hgetall " +
	"+zadd +zrem +zscore +zcard +zcount +zrangebyscore +publish"

func TestScriptsOnRedis(t *testing.T) {
	srv := redistest.StartServer(t, redistest.ServerOptions{ACL: []string{minimumACL}})
	c := srv.Client(t, func(o *redis.Options) { o.Username, o.Password = "app", "pw" })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cat := Catalog("svcwatch")
	ps := c.Subscribe(ctx, cat.Channel)
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil { // the confirmation
		t.Fatal(err)
	}
	announced := func() CatalogMessage {
		t.Helper()
		m, err := ps.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		cm, err := DecodeCatalogMessage(m.Payload)
		if err != nil {
			t.Fatal(err)
		}
		return cm
	}
	run := func(src string, keys []string, args ...any) any {
		t.Helper()
		v, err := redis.NewScript(src).Run(ctx, c, keys, args...).Result()
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return v
	}
	table := func(name string, src string, extra ...any) any {
		t.Helper()
		k := TableKeys("svcwatch", name)
		silence, reap := any(int64(5000)), any(16)
		if src == GC {
			silence, reap = int64(1)<<40, 1000
		}
		return run(src, k.Script(), append([]any{k.Channel, silence, reap, strconv.FormatInt(time.Now().UnixNano(), 16)}, extra...)...)
	}
	keysOf := func(name string) int64 {
		k := TableKeys("svcwatch", name)
		n, _ := srv.Do(t, "EXISTS", k.Inst, k.Exp, k.Rev, k.Epoch, k.Meta).(int64)
		return n
	}
	register := func(name, id string, ttl int) {
		t.Helper()
		if r := table(name, Register, id, "inc-"+id, "h:1", "", ttl, 1, 0, "v1", "", ""); !reflect.DeepEqual(r, []any{"ok", r.([]any)[1]}) {
			t.Fatalf("register: %v", r)
		}
	}

	// An absent table: reading it answers nothing and leaves it absent.
	const T = "mygame/prod/game"
	if r := table(T, Check); !reflect.DeepEqual(r, []any{"", int64(0), ""}) {
		t.Errorf("check of an absent table = %v", r)
	}
	if r := table(T, GC, 86400000); !reflect.DeepEqual(r, []any{"gone"}) {
		t.Errorf("gc of an absent table = %v", r)
	}
	if n := keysOf(T); n != 0 {
		t.Errorf("reading an absent table left %d keys", n)
	}

	// catalog_touch: added and announced once; then only the score moves, upwards.
	if r := run(CatalogTouch, cat.Script(), cat.Channel, T, ""); !reflect.DeepEqual(r, []any{int64(1), int64(1)}) {
		t.Errorf("first touch = %v, want [1 1]", r)
	}
	if m := announced(); m != (CatalogMessage{Op: CatalogAdd, Table: T, Rev: 1}) {
		t.Errorf("announcement %+v", m)
	}
	first := c.ZScore(ctx, cat.Tables, T).Val()
	if r := run(CatalogTouch, cat.Script(), cat.Channel, T, "1000"); !reflect.DeepEqual(r, []any{int64(0), int64(1)}) {
		t.Errorf("second touch = %v, want [0 1]", r)
	}
	if s := c.ZScore(ctx, cat.Tables, T).Val(); s != first {
		t.Errorf("a touch lowered the score from %v to %v", first, s)
	}

	// catalog_due names the tables older than the retention, oldest first;
	// catalog_drop removes one only at the score it read.
	const old = "mygame/prod/old"
	run(CatalogTouch, cat.Script(), cat.Channel, old, "1000")
	if m := announced(); m != (CatalogMessage{Op: CatalogAdd, Table: old, Rev: 2}) {
		t.Errorf("announcement %+v", m)
	}
	if r := run(CatalogDue, []string{cat.Tables}, 60000, 16); !reflect.DeepEqual(r, []any{old, "1000"}) {
		t.Errorf("due = %v, want only %s", r, old)
	}
	if r := run(CatalogDrop, cat.Script(), cat.Channel, old, "999"); r != int64(0) {
		t.Errorf("drop below the score = %v, want 0 (a touch came after the read)", r)
	}
	if r := run(CatalogDrop, cat.Script(), cat.Channel, old, "1000"); r != int64(1) {
		t.Errorf("drop at the score = %v, want 1", r)
	}
	if m := announced(); m != (CatalogMessage{Op: CatalogDel, Table: old, Rev: 3}) {
		t.Errorf("announcement %+v", m)
	}
	if r := run(CatalogDrop, cat.Script(), cat.Channel, old, "1000"); r != int64(0) {
		t.Errorf("second drop = %v, want 0", r)
	}

	// gc: live while a deadline is ahead; empty since the last record went;
	// collected after the retention, with every key; then gone.
	register(T, "game-1", 10000)
	if r := table(T, GC, 1); !reflect.DeepEqual(r, []any{"live"}) {
		t.Errorf("gc of a live table = %v", r)
	}
	epoch := srv.Do(t, "GET", TableKeys("svcwatch", T).Epoch)
	if r := table(T, Deregister, "game-1", "inc-game-1"); r != int64(1) {
		t.Fatalf("deregister = %v", r)
	}
	since, _ := strconv.ParseInt(srv.Do(t, "HGET", TableKeys("svcwatch", T).Meta, "empty").(string), 10, 64)
	if r := table(T, GC, 86400000); !reflect.DeepEqual(r, []any{"empty", since}) {
		t.Errorf("gc of a table emptied at %d = %v", since, r)
	}
	deadline := time.Now().Add(10 * time.Second)
	for r := table(T, GC, 1); !reflect.DeepEqual(r, []any{"collected"}); r = table(T, GC, 1) {
		if !reflect.DeepEqual(r, []any{"empty", since}) || time.Now().After(deadline) {
			t.Fatalf("gc with a retention of 1 ms = %v", r)
		}
	}
	if n := keysOf(T); n != 0 {
		t.Errorf("a collected table kept %d keys", n)
	}
	if r := table(T, GC, 1); !reflect.DeepEqual(r, []any{"gone"}) {
		t.Errorf("gc of a collected table = %v", r)
	}
	// Re-created: a new epoch, revision 1.
	register(T, "game-1", 10000)
	if e := srv.Do(t, "GET", TableKeys("svcwatch", T).Epoch); e == epoch || srv.Do(t, "GET", TableKeys("svcwatch", T).Rev) != "1" {
		t.Errorf("re-created table: epoch %v (was %v), revision %v", e, epoch, srv.Do(t, "GET", TableKeys("svcwatch", T).Rev))
	}

	// gc reaps what nobody reaped, up to its limit per call.
	const dead = "mygame/prod/dead"
	register(dead, "a", 60000)
	register(dead, "b", 60000)
	k := TableKeys("svcwatch", dead)
	// Both die at once, long ago by server time (a register with a short TTL
	// would reap the first while registering the second).
	srv.Do(t, "ZADD", k.Exp, 1, "a", 1, "b")
	limited := func() any {
		return run(GC, k.Script(), k.Channel, int64(1)<<40, 1, "tok"+strconv.FormatInt(time.Now().UnixNano(), 16), 86400000)
	}
	if r := limited(); !reflect.DeepEqual(r, []any{"reaping"}) {
		t.Errorf("gc with 2 expired entries and a reap limit of 1 = %v, want [reaping]", r)
	}
	if r := limited(); len(r.([]any)) != 2 || r.([]any)[0] != "empty" {
		t.Errorf("gc after the last expired entry = %v, want [empty since]", r)
	}
}
