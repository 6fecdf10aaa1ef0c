package svcwatch

import (
	"fmt"
	"log/slog"
	"time"
)

// Option configures a watcher built by NewRedisServiceWatcher.
type Option func(*config)

// Defaults of the options.
const (
	DefaultTTL         = 10 * time.Second
	DefaultScanEvery   = 4 * time.Second
	DefaultKeyPrefix   = "svcwatch"
	DefaultMaxDescSize = 64 << 10
)

type config struct {
	ttl             time.Duration
	keepAlive       time.Duration // 0: ttl/5
	scan            time.Duration // 0: min(DefaultScanEvery, 2*ttl/5)
	prefix          string
	logger          *slog.Logger
	handlers        []Handler
	tables          []string
	watchOnly       bool
	maxDesc         int
	replaceSameName bool
	onLost          func(self Instance, err error)
	clock           clock
	errs            []error // bad option values, reported by the constructor
}

func defaultConfig() config {
	return config{
		ttl:             DefaultTTL,
		prefix:          DefaultKeyPrefix,
		logger:          slog.Default(),
		maxDesc:         DefaultMaxDescSize,
		replaceSameName: true,
		clock:           systemClock{},
	}
}

func (c *config) bad(format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...))
}

// WithTTL sets how long a registration lives without a heartbeat; a process that
// is killed is removed at its peers about this long after its last heartbeat.
// Default 10s. It must be more than twice the keepalive interval.
func WithTTL(d time.Duration) Option {
	return func(c *config) {
		if d <= 0 {
			c.bad("TTL %v is not positive", d)
		}
		c.ttl = d
	}
}

// WithKeepAliveInterval sets how often the heartbeat runs. Default TTL/5 (2s at
// the default TTL); it must be less than TTL/2, so that one lost heartbeat never
// expires a live process.
func WithKeepAliveInterval(d time.Duration) Option {
	return func(c *config) {
		if d <= 0 {
			c.bad("keepalive interval %v is not positive", d)
		}
		c.keepAlive = d
	}
}

// WithScanInterval sets how often the safety-net scan reads each watched table's
// revision, reloading the table only when it moved. Default 4s, or 2/5 of the TTL
// when that is shorter; it must be less than TTL/2 (see the mass-expiry guard in
// the README).
func WithScanInterval(d time.Duration) Option {
	return func(c *config) {
		if d <= 0 {
			c.bad("scan interval %v is not positive", d)
		}
		c.scan = d
	}
}

// WithKeyPrefix sets the prefix of every Redis key and channel the watcher uses.
// Default "svcwatch". An ACL for the watcher needs `~prefix:*` and `&prefix:*`.
func WithKeyPrefix(p string) Option {
	return func(c *config) {
		if err := checkName("key prefix", p, maxTableLen, false); err != nil {
			c.errs = append(c.errs, err)
		}
		c.prefix = p
	}
}

// WithLogger sets the logger. Default slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		if l == nil {
			c.bad("nil logger")
			return
		}
		c.logger = l
	}
}

// WithHandler adds a handler of discovery events; it may be given more than once,
// and handlers are called in the order given.
func WithHandler(h Handler) Option {
	return func(c *config) {
		if h == nil {
			c.bad("nil handler")
			return
		}
		c.handlers = append(c.handlers, h)
	}
}

// WithTables adds tables to watch from Start, besides self.Table (which is always
// watched).
func WithTables(tables ...string) Option {
	return func(c *config) { c.tables = append(c.tables, tables...) }
}

// WatchOnly makes a watcher that registers nothing and only watches (tools,
// gateways). Its self Instance needs only Table.
func WatchOnly() Option {
	return func(c *config) { c.watchOnly = true }
}

// WithMaxDescSize sets the largest Desc accepted, in bytes; records larger than it
// found in Redis are skipped. Default 64 KiB.
func WithMaxDescSize(n int) Option {
	return func(c *config) {
		if n <= 0 {
			c.bad("max desc size %d is not positive", n)
		}
		c.maxDesc = n
	}
}

// WithoutRestartReplace turns off replacement of a live incarnation that has the
// same ID and the same Name. By default such a Start is taken as a restart of that
// process, which cannot still be listening at its address, and replaces the old
// incarnation at once. Turn it off where many processes advertise one address
// (e.g. behind NAT): then any live holder of the ID makes Start fail with
// ErrDuplicateID.
func WithoutRestartReplace() Option {
	return func(c *config) { c.replaceSameName = false }
}

// WithOnRegistrationLost sets a callback run when this process's registration is
// lost for good: err wraps ErrReplaced when a newer incarnation took the ID (the
// watcher stands down and stops heartbeating), or ErrDuplicateID when, after Redis
// lost its data, another process took the ID first. It runs on the heartbeat
// goroutine and must not block. A registration that Redis merely lost is
// registered again without calling it (see Stats.Reregistrations).
func WithOnRegistrationLost(f func(self Instance, err error)) Option {
	return func(c *config) { c.onLost = f }
}

// withClock replaces the local clock (tests).
func withClock(k clock) Option {
	return func(c *config) { c.clock = k }
}

// finish fills derived defaults and checks the options against each other.
func (c *config) finish() error {
	if c.keepAlive == 0 {
		c.keepAlive = c.ttl / 5
	}
	if c.scan == 0 {
		c.scan = DefaultScanEvery
		if s := c.ttl * 2 / 5; s < c.scan {
			c.scan = s
		}
	}
	if len(c.errs) == 0 {
		if c.ttl <= 2*c.keepAlive {
			c.bad("TTL %v must be more than twice the keepalive interval %v", c.ttl, c.keepAlive)
		}
		if 2*c.scan >= c.ttl {
			c.bad("scan interval %v must be less than half the TTL %v", c.scan, c.ttl)
		}
	}
	if len(c.errs) > 0 {
		return c.errs[0]
	}
	return nil
}

// clock is the watcher's local time source; server time comes from Redis.
type clock interface{ Now() time.Time }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }
