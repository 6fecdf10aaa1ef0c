package svcwatch

import (
	"context"
	"testing"

	"github.com/svcwatch/svcwatch/protocol"
)

// A change published while a watcher's first read of the table is under way
// reaches it (kept and applied after the read), not only at the next read.
func TestChangeDuringFirstLoadIsKept(t *testing.T) {
	checkLeaks(t)
	b := miniBackend(t)
	b.newNode(t, gameTable, "a")
	c := b.client(t)
	w, err := NewRedisServiceWatcher(c, Instance{Table: gameTable}, WatchOnly(), WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	ts := w.syncFor(gameTable)
	w.mu.Unlock()

	// The next change after what Redis holds now, as the scripts would
	// publish it, arrives before the read's answer is applied.
	ctx := context.Background()
	keys := protocol.TableKeys(DefaultKeyPrefix, gameTable)
	epoch := c.Get(ctx, keys.Epoch).Val()
	rev, _ := c.Get(ctx, keys.Rev).Int64()
	tok := c.HGet(ctx, keys.Meta, "tok").Val()
	rec := protocol.Record{Inc: "b1", Name: "127.0.0.1:b", Reg: 1, TTL: 1000}.Encode()
	msg := protocol.Message{Epoch: epoch, Rev: rev + 1, Prev: tok, Tok: epoch + ".x", Op: protocol.OpAdd, ID: "b", Rec: rec}
	w.applyMessage(gameTable, msg.Encode())

	if err := w.loadTable(ctx, ts); err != nil {
		t.Fatal(err)
	}
	if got := ids(w.Services(gameTable)); got != "a,b" {
		t.Errorf("after the read: %s, want a,b (the change made during the read kept)", got)
	}
	w.mu.Lock()
	pos := ts.rev
	w.mu.Unlock()
	if pos != rev+1 {
		t.Errorf("position %d after the read, want %d", pos, rev+1)
	}
}
