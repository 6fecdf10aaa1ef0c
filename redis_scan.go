package svcwatch

// redis_scan.go: the safety nets of the sync loop: the scan that asks each
// table for its position every scan interval, the replacement of a
// subscription that delivers nothing, and the anti-entropy full reads. They
// run on the sync goroutine.

import (
	"context"
	mrand "math/rand"
	"time"

	"github.com/redis/go-redis/v9"
)

// resyncDelay is the time to the next anti-entropy read: the resync interval,
// less up to a quarter at random.
func (w *RedisServiceWatcher) resyncDelay() time.Duration {
	d := w.conf.ResyncInterval
	return d - time.Duration(mrand.Int63n(int64(d/4)+1))
}

// resyncAll asks for a full read of every loaded table, so that a view that
// went wrong without any sign heals.
func (w *RedisServiceWatcher) resyncAll() {
	now := w.b.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ts := range w.syncs {
		if ts.loaded {
			ts.scheduleReload(now, "", 0, "", true)
		}
	}
}

// silentMovesMax is how many scans in a row may find a table moved forward
// without any message of it before the subscription is taken for stalled.
const silentMovesMax = 2

// scan asks each loaded table for its (epoch, revision), all in one pipeline, and
// schedules a reload of the tables that moved. An idle table costs one small
// script call per interval, whatever its size. It reports whether the
// subscription looks stalled: a table kept moving and no message came.
func (w *RedisServiceWatcher) scan(ctx context.Context, run *running) (stalled bool) {
	w.mu.Lock()
	var tables []*tableSync
	for _, ts := range w.syncs {
		if ts.loaded {
			tables = append(tables, ts)
		}
	}
	catRev := w.catRev
	w.mu.Unlock()
	prefixes := len(w.b.Prefixes()) > 0
	if len(tables) == 0 && !prefixes {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, w.callTimeout())
	defer cancel()
	pipe := w.client.Pipeline()
	cmds := make([]*redis.Cmd, len(tables))
	for i, ts := range tables {
		cmds[i] = scriptCheck.EvalSha(ctx, pipe, ts.keys.Script(), w.scriptArgs(ts, nil)...)
	}
	var catCmd *redis.StringCmd
	if prefixes {
		// A prefix watcher also asks whether the catalog moved: an
		// announcement it missed shows here.
		catCmd = pipe.Get(ctx, w.cat.Rev)
	}
	_, _ = pipe.Exec(ctx)
	if catCmd != nil {
		rev, err := catCmd.Int64()
		if err == redis.Nil {
			rev, err = 0, nil
		}
		if err == nil && rev != catRev {
			w.requestCatalogRead(run)
		}
	}
	for i, ts := range tables {
		if redis.HasErrorPrefix(cmds[i].Err(), "NOSCRIPT") {
			cmds[i] = w.eval(ctx, scriptCheck, ts)
		}
		res, err := cmds[i].Slice()
		w.noteRoundTrip(err)
		if err != nil || len(res) != 3 {
			continue
		}
		epoch, _ := res[0].(string)
		rev, _ := res[1].(int64)
		tok, _ := res[2].(string)
		w.mu.Lock()
		forward := epoch == ts.epoch && rev > ts.rev
		if forward && !ts.heard {
			ts.silentMoves++
			stalled = stalled || ts.silentMoves >= silentMovesMax
		} else {
			ts.silentMoves = 0
		}
		ts.heard = false
		if epoch != ts.epoch || rev != ts.rev || tok != ts.tok {
			// Messages in flight may close a forward gap before the reload is due;
			// anything else (a new epoch, a revision that went back or that names
			// another change) needs the read.
			if epoch == ts.epoch && !forward {
				ts.diverged = true
			}
			ts.scheduleReload(w.b.Now().Add(w.reloadGap()), epoch, rev, tok, !forward)
		} else {
			w.b.MarkSynced()
		}
		w.mu.Unlock()
	}
	return stalled
}

// resubscribe replaces a subscription that delivers nothing (a middlebox that
// dropped its flow silently, which TCP may take many minutes to notice) with a
// new one on every watched channel. Each confirmation then reads its table
// again, as after any reconnect. It returns the new subscription's messages.
func (w *RedisServiceWatcher) resubscribe(run *running) <-chan interface{} {
	ps, msgs := w.newPubSub(run)
	w.mu.Lock()
	if run.ctx.Err() != nil { // Stop closes run.pubsub after it ends run.ctx
		w.mu.Unlock()
		_ = ps.Close()
		return run.msgs
	}
	old, oldMsgs := run.pubsub, run.msgs
	run.pubsub, run.msgs = ps, msgs
	channels := make([]string, 0, len(w.syncs)+1)
	for _, ts := range w.syncs {
		channels = append(channels, ts.keys.Channel)
		ts.silentMoves = 0
	}
	if run.catSubscribed {
		channels = append(channels, w.cat.Channel)
	}
	w.mu.Unlock()
	w.log.Warn("svcwatch: the subscription delivers nothing while its tables change; subscribing again",
		"tables", len(channels))
	_ = old.Close()
	run.replaced.Add(1)
	run.drains.Add(1)
	go func() { // see syncLoop: the old reader must not block on its channel
		defer run.drains.Done()
		for range oldMsgs {
		}
	}()
	ctx, cancel := context.WithTimeout(run.ctx, w.callTimeout())
	defer cancel()
	// A failure is not fatal: the new subscription subscribes again when it
	// reconnects, and the scan keeps the views current meanwhile.
	_ = ps.Subscribe(ctx, channels...)
	return msgs
}
