package svcwatch

// redis_call.go: the plumbing of the Redis watcher's calls: running a protocol
// script on a table's keys, bounding calls, telling an outage from an error
// reply, retrying, and logging unreadable data once. Runs on whichever
// goroutine makes the call.

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch/protocol"
)

// reapLimit bounds the expired entries one script call removes, so that a call
// stays short however many processes died at once.
const reapLimit = 16

var (
	scriptRegister   = redis.NewScript(protocol.Register)
	scriptHeartbeat  = redis.NewScript(protocol.Heartbeat)
	scriptUpdate     = redis.NewScript(protocol.Update)
	scriptDeregister = redis.NewScript(protocol.Deregister)
	scriptCheck      = redis.NewScript(protocol.Check)
	scriptLoad       = redis.NewScript(protocol.Load)
)

// eval runs a script on the table's keys with the arguments every script takes.
func (w *RedisServiceWatcher) eval(ctx context.Context, s *redis.Script, ts *tableSync, args ...any) *redis.Cmd {
	return s.Run(ctx, w.client, ts.keys.Script(), w.scriptArgs(ts, args)...)
}

func (w *RedisServiceWatcher) scriptArgs(ts *tableSync, args []any) []any {
	return protocol.ScriptArgs(ts.keys, (w.conf.TTL / 2).Milliseconds(), reapLimit, newToken(), args...)
}

// selfSync returns the sync state of self's table.
func (w *RedisServiceWatcher) selfSync() *tableSync {
	table := w.Self().Table
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.syncFor(table)
}

// callTimeout bounds one script call of the loops, so that a Redis that does not
// answer never holds a heartbeat past the next one (with ContextTimeoutEnabled).
func (w *RedisServiceWatcher) callTimeout() time.Duration { return w.conf.KeepAlive }

// noteRoundTrip records whether Redis answered. An error reply (WRONGTYPE,
// NOPERM, a script error) is an answer: it is logged once, not taken for an outage.
func (w *RedisServiceWatcher) noteRoundTrip(err error) {
	var reply redis.Error
	isReply := errors.As(err, &reply) && !errors.Is(err, redis.Nil)
	ok := err == nil || errors.Is(err, redis.Nil) || isReply
	w.b.SetConnected(ok)
	switch {
	case isReply:
		if w.b.LogOnce("reply\x00" + err.Error()) {
			w.log.Error("svcwatch: Redis refused a call", "err", err)
		}
	case ok && w.downLogged.Swap(false):
		w.log.Info("svcwatch: Redis answers again")
	case !ok && !w.downLogged.Swap(true):
		w.log.Warn("svcwatch: Redis does not answer; keeping the last view", "err", err)
	}
	if !ok {
		w.refreshClusterSlots()
	}
}

// refreshClusterSlots asks a ClusterClient to read the slot map again, at most
// once per keepalive interval. go-redis refreshes it on MOVED or every 10 s, but
// not when a dead master refuses connections: without this, watchers of its
// slots would wait out the 10 s after the replica took over.
func (w *RedisServiceWatcher) refreshClusterSlots() {
	cc, ok := w.client.(*redis.ClusterClient)
	if !ok {
		return
	}
	now := w.b.Now().UnixNano()
	last := w.slotsRefreshed.Load()
	if now-last < int64(w.conf.KeepAlive) || !w.slotsRefreshed.CompareAndSwap(last, now) {
		return
	}
	cc.ReloadState(context.Background())
}

// logBadOnce logs unreadable data the first time it is seen: once per table
// and record ID, and once per table for junk messages (id empty).
func (w *RedisServiceWatcher) logBadOnce(table, id string, err error) {
	if w.b.LogOnce(table + "\x00" + id) {
		w.log.Warn("svcwatch: skipping unreadable data", "table", table, "id", id, "err", err)
	}
}
