package svcwatch

// conn_options.go: ConnManager's options and their defaults. Options only
// record values; NewConnManager fills the defaults.

import (
	"io"
	"log/slog"
	"time"
)

type connConfig struct {
	dialTimeout  time.Duration
	backoff      backoff
	filter       func(inst Instance) bool
	onConnect    func(inst Instance, c io.Closer)
	onDisconnect func(inst Instance, err error)
	logger       *slog.Logger
	clock        clock // redial backoff and connection age
}

// ConnOption configures a ConnManager; see NewConnManager.
type ConnOption func(*connConfig)

// WithDialTimeout bounds each dial attempt: the ctx passed to the dial function
// expires after d. The default is 5s. d <= 0 disables the timeout; a dial then
// ends only when the peer is removed or the manager closed.
func WithDialTimeout(d time.Duration) ConnOption {
	return func(c *connConfig) { c.dialTimeout = d }
}

// WithBackoff sets the delay before a redial, after a failed dial or an
// Invalidate. The delay starts at min and doubles per consecutive failure up to
// max, with equal jitter (a random value in [step/2, step]) so that peers
// restarted together do not redial in lockstep. The default is 100ms to 10s.
// A value <= 0 keeps its default; a max below min is raised to min.
func WithBackoff(min, max time.Duration) ConnOption {
	return func(c *connConfig) {
		if min > 0 {
			c.backoff.min = min
		}
		if max > 0 {
			c.backoff.max = max
		}
	}
}

// WithConnFilter selects the instances to connect to; rejected instances are
// never dialed. It is called on every OnAdd and OnUpdate, outside any lock, so
// an update that makes a peer rejected closes its connection and one that makes
// it accepted dials it. It must be fast and must not block. A panic in f is
// recovered by the watcher like a Handler's, and that event leaves the manager
// as it was. By default every instance is accepted.
//
// In a full mesh, where each pair of peers needs a single connection, let only
// the lower ID dial:
//
//	svcwatch.WithConnFilter(func(p svcwatch.Instance) bool { return self.ID < p.ID })
func WithConnFilter(f func(inst Instance) bool) ConnOption {
	return func(c *connConfig) { c.filter = f }
}

// WithOnConnect sets a hook called with each new connection (the C returned by
// dial, as an io.Closer) before Get can return it, so the hook may set it up,
// e.g. send a handshake. It is called from the peer's dial goroutine and must
// not block long: the peer's removal and Close wait for it. It must not call
// Close. Each OnConnect is followed by exactly one OnDisconnect for that
// connection. A panic in f is recovered and logged with its stack: the
// connection is treated as invalidated by the hook (never published, closed),
// OnDisconnect still gets it with an error wrapping both ErrConnPanicked and
// ErrConnInvalidated, and the peer is redialed after a backoff. Default: none.
func WithOnConnect(f func(inst Instance, c io.Closer)) ConnOption {
	return func(c *connConfig) { c.onConnect = f }
}

// WithOnDisconnect sets a hook called after a connection that was passed to
// OnConnect has been closed. err is ErrConnInvalidated when Invalidate closed
// it, and nil when the peer was removed, filtered out or updated to a new Name
// or Incarnation, or the manager was closed. If OnConnect panicked, err wraps
// ErrConnPanicked and ErrConnInvalidated (test with errors.Is). It is called
// from the peer's dial goroutine and must not block long; it must not call
// Close. A panic in f is recovered and logged with its stack, and the manager
// goes on as if f had returned. Default: none.
func WithOnDisconnect(f func(inst Instance, err error)) ConnOption {
	return func(c *connConfig) { c.onDisconnect = f }
}

// WithConnLogger sets the logger for dial failures and connection changes.
// Default: slog.Default() at construction; nil keeps the default.
func WithConnLogger(l *slog.Logger) ConnOption {
	return func(c *connConfig) { c.logger = l }
}
