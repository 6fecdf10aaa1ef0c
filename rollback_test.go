package svcwatch

import (
	"context"
	"testing"

	"github.com/svcwatch/svcwatch/internal/redistest"
	"github.com/svcwatch/svcwatch/protocol"
)

// A failover to a replica that missed the latest writes rolls the table back
// under the same epoch, and the next changes reuse revision numbers the
// watchers already hold. The change tokens show the rewritten history: no
// change is missed, and the process whose registration was lost is not reported
// removed (it registers again at its next heartbeat).
func TestFaultHistoryRolledBackUnderSameEpoch(t *testing.T) {
	checkLeaks(t)
	b, srv := faultBackend(t, redistest.ServerOptions{})
	watchers := []*node{b.newNode(t, gameTable, "a"), b.newNode(t, gameTable, "b")}
	converge(t, watchers, gameTable, "a,b")

	// The replica's copy: the table as it is now.
	keys := protocol.TableKeys(DefaultKeyPrefix, gameTable)
	dumps := map[string]string{}
	for _, k := range keys.All() {
		dumps[k] = srv.Do(t, "DUMP", k).(string)
	}
	b.newNode(t, gameTable, "lost") // a write the replica never got
	converge(t, watchers, gameTable, "a,b,lost")

	// The failover: the table goes back to the replica's copy.
	for _, k := range keys.All() {
		srv.Do(t, "RESTORE", k, 0, dumps[k], "REPLACE")
	}
	// A new change takes the revision number that "lost" had.
	b.newNode(t, gameTable, "d")

	all := append(watchers, b.newNode(t, gameTable, "late"))
	converge(t, all, gameTable, "a,b,d,late,lost")
	eventually(t, "lost registered again", func() bool {
		return srv.Client(t).HExists(context.Background(), keys.Inst, "lost").Val()
	})
	noRemoves(t, all, "a", "b", "lost", "d")
}
