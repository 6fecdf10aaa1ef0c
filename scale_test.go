package svcwatch

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch/internal/redistest"
	"github.com/svcwatch/svcwatch/protocol"
)

// Large tables: 10,000 instances in one table, three real watchers; one add and
// one remove reach every watcher by push, without a full read.

// scaleDesc is a realistic 100-byte Desc.
var scaleDesc = func() string {
	d := `{"zone":3,"max":5000,"load":17,"ver":"20190510","pad":"`
	return d + strings.Repeat("x", 100-len(d)-2) + `"}`
}()

// fillTable writes n valid records straight into a table, the way n
// registrations would have left it (records, deadlines a day ahead, epoch,
// revision n, the latest change's token), in pipelines of 1000, publishing
// nothing. IDs are inst-00000 ...
func fillTable(tb testing.TB, c redis.UniversalClient, prefix, table string, n int, desc string) {
	tb.Helper()
	ctx := context.Background()
	now := time.Now()
	deadline := float64(now.Add(24 * time.Hour).UnixMilli())
	keys := protocol.TableKeys(prefix, table)
	const batch = 1000
	for start := 0; start < n; start += batch {
		end := min(start+batch, n)
		fields := make([]any, 0, 2*(end-start))
		members := make([]redis.Z, 0, end-start)
		for i := start; i < end; i++ {
			id := fmt.Sprintf("inst-%05d", i)
			rec := protocol.Record{Inc: newToken(), Name: fmt.Sprintf("10.%d.%d.%d:7000", i>>16, (i>>8)&255, i&255),
				Desc: desc, Reg: now.UnixMilli(), TTL: time.Hour.Milliseconds()}.Encode()
			fields = append(fields, id, rec)
			members = append(members, redis.Z{Score: deadline, Member: id})
		}
		pipe := c.Pipeline()
		pipe.HSet(ctx, keys.Inst, fields...)
		pipe.ZAdd(ctx, keys.Exp, members...)
		if _, err := pipe.Exec(ctx); err != nil {
			tb.Fatalf("fill %s: %v", table, err)
		}
	}
	epoch := newToken()
	pipe := c.Pipeline()
	pipe.Set(ctx, keys.Epoch, epoch, 0)
	pipe.Set(ctx, keys.Rev, n, 0)
	pipe.HSet(ctx, keys.Meta, "tok", fmt.Sprintf("%s.%d", epoch, n)) // the latest change's token
	if _, err := pipe.Exec(ctx); err != nil {
		tb.Fatalf("fill %s: %v", table, err)
	}
}

// tally is a light Handler for large tables: it counts events per op and keeps
// those of the IDs that do not start with "inst-" (the filled ones).
type tally struct {
	mu     sync.Mutex
	counts map[string]int
	named  []string // "op id"
}

func (h *tally) note(op, id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.counts == nil {
		h.counts = map[string]int{}
	}
	h.counts[op]++
	if !strings.HasPrefix(id, "inst-") {
		h.named = append(h.named, op+" "+id)
	}
}

func (h *tally) OnAdd(inst Instance)        { h.note("add", inst.ID) }
func (h *tally) OnUpdate(old, cur Instance) { h.note("update", cur.ID) }
func (h *tally) OnRemove(inst Instance)     { h.note("remove", inst.ID) }

func (h *tally) has(ev string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range h.named {
		if e == ev {
			return true
		}
	}
	return false
}

func (h *tally) count(op string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.counts[op]
}

func TestScale10k(t *testing.T) {
	checkLeaks(t)
	const n = 10000
	const table = "bingqiu/kaifa/20190510/scale"
	b, srv := faultBackend(t, redistest.ServerOptions{})
	b.ttl, b.keepAlive = 2*time.Second, 400*time.Millisecond
	filled := time.Now()
	fillTable(t, srv.Client(t), DefaultKeyPrefix, table, n, scaleDesc)
	t.Logf("filled %d records in %v", n, time.Since(filled).Round(time.Millisecond))

	// The suite's recorder keeps every event and sleeps in each; a tally is
	// lighter for 10,000 adds.
	type scaleNode struct {
		w *RedisServiceWatcher
		h *tally
	}
	start := func(id string) scaleNode {
		h := &tally{}
		began := time.Now()
		w, err := NewRedisServiceWatcher(b.client(t), Instance{Table: table, ID: id, Name: "127.0.0.1:" + id},
			WithTTL(b.ttl), WithKeepAliveInterval(b.keepAlive), WithHandler(h), WithLogger(quietLogger()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { stopNode(t, w) })
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if err := w.Start(ctx); err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
		t.Logf("watcher %s started (registered, %d instances read, %d adds delivered) in %v",
			id, len(w.Services(table)), h.count("add"), time.Since(began).Round(time.Millisecond))
		return scaleNode{w, h}
	}
	var nodes []scaleNode
	for _, id := range []string{"a", "b", "c"} {
		nodes = append(nodes, start(id))
	}
	for _, nd := range nodes {
		eventually(t, nd.w.Self().ID+" sees every instance", func() bool {
			return len(nd.w.Services(table)) == n+3 && nd.h.count("add") == n+2
		})
	}
	loads := make([]uint64, len(nodes))
	for i, nd := range nodes {
		loads[i] = nd.w.Stats().FullLoads
	}

	began := time.Now()
	d := start("d")
	for _, nd := range nodes {
		eventually(t, "the add at "+nd.w.Self().ID, func() bool { return nd.h.has("add d") })
	}
	t.Logf("one add reached all three %v after its Start began (Start itself reads the table)", time.Since(began).Round(time.Millisecond))
	began = time.Now()
	stopNode(t, d.w)
	for _, nd := range nodes {
		eventually(t, "the remove at "+nd.w.Self().ID, func() bool { return nd.h.has("remove d") })
	}
	t.Logf("one remove reached all three %v after Stop began", time.Since(began).Round(time.Millisecond))

	for i, nd := range nodes {
		self := nd.w.Self().ID
		if got := nd.w.Stats().FullLoads; got != loads[i] {
			t.Errorf("%s read the whole table %d more times for one add and one remove", self, got-loads[i])
		}
		if got := len(nd.w.Services(table)); got != n+3 {
			t.Errorf("%s holds %d instances, want %d", self, got, n+3)
		}
		if nd.h.count("remove") != 1 || nd.h.count("update") != 0 || nd.h.count("add") != n+3 {
			t.Errorf("%s: events %v, want %d adds and one remove", self, nd.h.counts, n+3)
		}
		for _, other := range []string{"a", "b", "c"} {
			if other != self && !nd.h.has("add "+other) {
				t.Errorf("%s never saw %s: %v", self, other, nd.h.named)
			}
		}
	}
}
