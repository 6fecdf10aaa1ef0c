// Package watchertest is the behaviour suite every svcwatch backend runs, as
// testing/fstest is for file systems: Run checks, against a real store, each
// promise of the Watcher contract that does not depend on the store itself:
// events and their order, no events about self, Start and Watch delivering
// the peers already present, restart versus duplicate, Stop, crash
// detection, SetDesc / SetMeta / SetState, Drain, the health check, Pick / PickN, bad input,
// and Unwatch / WatchPrefix / UnwatchPrefix / Tables.
//
// A backend's test builds a Factory for one store and calls Run:
//
//	func TestWatchertest(t *testing.T) {
//		cli := startStore(t)
//		watchertest.Run(t, watchertest.Factory{
//			New: func(t testing.TB, self svcwatch.Instance, opts ...svcwatch.Option) (svcwatch.Watcher, error) {
//				return mybackend.New(cli, self, opts...)
//			},
//			Crash: func(t testing.TB, w svcwatch.Watcher) { mybackend.Crash(w) },
//		})
//	}
//
// Every subtest uses tables of its own (derived from its name and a random
// token per Run), so the subtests share one store without seeing each other.
// Waits poll against a generous deadline; nothing asserts how fast the store
// is (latencies are logged with t.Logf instead).
package watchertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/svcwatch/svcwatch"
)

// Factory builds the watchers Run tests, all on one store that they share.
type Factory struct {
	// New builds an unstarted watcher for self. Run passes options that set
	// the TTL and keepalive interval (from the fields below), a handler, a
	// logger and whatever the subtest needs (WatchOnly, WithTables,
	// WithoutRestartReplace, a TTL of its own ...). New may append options of
	// its own (a key prefix, a scan interval) but none that changes the TTL or
	// the keepalive interval. Resources New makes for one watcher (a client, a
	// connection) should be released with t.Cleanup; Run stops the watcher in
	// a cleanup registered after New returns, so it runs before those.
	// Required.
	New func(t testing.TB, self svcwatch.Instance, opts ...svcwatch.Option) (svcwatch.Watcher, error)

	// Crash ends a started watcher the way SIGKILL ends its process: no
	// deregistration, no heartbeat and no event after it returns, and every
	// goroutine of the watcher ended (e.g. by cutting its connection). Run
	// never calls Stop on a crashed watcher. Nil: the subtests about crashed
	// processes are skipped, saying so.
	Crash func(t testing.TB, w svcwatch.Watcher)

	// AdvanceTime moves the store's clock forward by d, for a store whose
	// clock stands still in tests (miniredis). Run calls it in steps of a
	// fifth of the TTL, each after every live watcher heartbeated again. Nil:
	// the store keeps real time and Run waits.
	AdvanceTime func(d time.Duration)

	// TTL and KeepAlive are given to every watcher (WithTTL,
	// WithKeepAliveInterval). Defaults: 1s and 200ms; short, so that crash
	// detection takes about a second.
	TTL, KeepAlive time.Duration

	// NoPrefixes says the backend does not implement WatchPrefix and
	// UnwatchPrefix: their subtests are skipped instead of failed.
	NoPrefixes bool

	// Timeout bounds every wait of the suite (an event to arrive, a Start, a
	// Stop). Default 15s: generous, because CI machines are shared.
	Timeout time.Duration
}

// Run runs the behaviour suite as subtests of t. It fails t at once if the
// Factory lacks New.
func Run(t *testing.T, f Factory) {
	t.Helper()
	if f.New == nil {
		t.Fatal("watchertest: Factory.New is nil")
	}
	if f.TTL == 0 {
		f.TTL = time.Second
	}
	if f.KeepAlive == 0 {
		f.KeepAlive = 200 * time.Millisecond
	}
	if f.Timeout == 0 {
		f.Timeout = 15 * time.Second
	}
	run := newRunToken()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, f, run)
			c.run(h)
		})
	}
}

// cases are the subtests, in the order Run runs them.
var cases = []struct {
	name string
	run  func(h *harness)
}{
	// events.go
	{"Discover", testDiscover},
	{"StartDeliversExistingPeers", testStartDeliversExisting},
	{"WatchDeliversExistingPeers", testWatchDeliversExisting},
	{"WithTables", testWithTables},
	{"WatchOnly", testWatchOnly},
	{"EventOrder", testEventOrder},
	{"HandlerCallsWatcher", testHandlerCallsWatcher},
	{"HandlerPanic", testHandlerPanic},
	// lifecycle.go
	{"Stop", testStop},
	{"NoHandlerAfterStop", testNoHandlerAfterStop},
	{"Restart", testRestart},
	{"Duplicate", testDuplicate},
	{"DuplicateWithoutRestartReplace", testDuplicateWithoutRestartReplace},
	{"Crash", testCrash},
	{"ExpiredHolderReplaced", testExpiredHolderReplaced},
	// self.go
	{"SetDesc", testSetDesc},
	{"SetMeta", testSetMeta},
	{"SetState", testSetState},
	{"SetBeforeStart", testSetBeforeStart},
	{"Drain", testDrain},
	{"DrainWaitFails", testDrainWaitFails},
	{"HealthCheck", testHealthCheck},
	// pick.go
	{"Pick", testPick},
	{"PickSkipsNonServing", testPickSkipsNonServing},
	// input.go
	{"BadInput", testBadInput},
	// tables.go
	{"Unwatch", testUnwatch},
	{"WatchPrefix", testWatchPrefix},
	{"PrefixAndName", testPrefixAndName},
}

// newRunToken returns a random token that keeps one Run's tables apart from
// another's on a store that outlives it.
func newRunToken() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// tableBase turns a test name into a table path of its own: the characters
// a table may not hold become '_'.
func tableBase(run, testName string) string {
	var b strings.Builder
	b.WriteString("wt-" + run + "/")
	for _, r := range testName {
		switch {
		case r == '{' || r == '}' || r == ' ' || r < 0x20 || r == 0x7f:
			b.WriteByte('_')
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// ctx returns a context bounded by the suite's timeout, canceled at cleanup.
func (h *harness) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), h.f.Timeout)
	h.t.Cleanup(cancel)
	return ctx
}
