package svcwatch

// options.go: the watcher's options, their defaults and the one validate() that
// checks them with self. Options only record values; every check is in
// validate, which reports every problem at once. Runs on the constructor's
// goroutine only.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Option configures a watcher; see the With* functions. Every backend takes the
// same options.
type Option func(*config)

// Defaults of the options.
const (
	DefaultTTL         = 10 * time.Second
	DefaultScanEvery   = 4 * time.Second
	DefaultResync      = time.Minute
	DefaultKeyPrefix   = "svcwatch"
	DefaultMaxDescSize = 64 << 10
	DefaultRetention   = 24 * time.Hour
	// MinRetention is the shortest table retention accepted (tests and demos).
	MinRetention = time.Second
)

// Config is a watcher's settings after defaults were filled in. A backend reads
// it through Backend.Config; applications set it with Options.
type Config struct {
	TTL            time.Duration // how long a registration lives without a heartbeat
	KeepAlive      time.Duration // heartbeat period, less than TTL/2
	ScanInterval   time.Duration // safety-net scan period, less than TTL/2
	ResyncInterval time.Duration // anti-entropy: every table is read in full this often
	KeyPrefix      string        // prefix of every key and channel (Redis) or path (other stores)
	Logger         *slog.Logger  // never nil
	Handlers       []Handler     // called by the core's event goroutine, in this order
	Tables         []string      // watched from Start besides self's table
	WatchOnly      bool          // register nothing
	MaxDescSize    int           // largest Desc accepted or read
	RestartReplace bool          // a live holder with the same Name is replaced (a restart)
	TableRetention time.Duration // an emptied table's keys and catalog entry are collected after this
}

// config is what the options write: the public settings and the seams.
type config struct {
	Config
	onLost func(self Instance, err error)
	health func(ctx context.Context) error
	clock  clock

	// Values as given, kept for validate: zero means "not given" for these.
	keepAliveSet, scanSet bool
	nilHandler            bool
}

func defaultConfig() config {
	return config{
		Config: Config{
			TTL:            DefaultTTL,
			ResyncInterval: DefaultResync,
			KeyPrefix:      DefaultKeyPrefix,
			Logger:         slog.Default(),
			MaxDescSize:    DefaultMaxDescSize,
			RestartReplace: true,
			TableRetention: DefaultRetention,
		},
		clock: systemClock{},
	}
}

// WithTTL sets how long a registration lives without a heartbeat; a process that
// is killed is removed at its peers about this long after its last heartbeat.
// Default 10s. It must be more than twice the keepalive interval.
func WithTTL(d time.Duration) Option {
	return func(c *config) { c.TTL = d }
}

// WithKeepAliveInterval sets how often the heartbeat runs. Default TTL/5 (2s at
// the default TTL); it must be less than TTL/2, so that one lost heartbeat never
// expires a live process.
func WithKeepAliveInterval(d time.Duration) Option {
	return func(c *config) { c.KeepAlive, c.keepAliveSet = d, true }
}

// WithScanInterval sets how often the safety-net scan reads each watched table's
// revision, reloading the table only when it moved. Default 4s, or 2/5 of the TTL
// when that is shorter; it must be less than TTL/2 (see the mass-expiry guard in
// the README).
func WithScanInterval(d time.Duration) Option {
	return func(c *config) { c.ScanInterval, c.scanSet = d, true }
}

// WithResyncInterval sets how often the watcher reads each watched table in
// full even though nothing says it changed: the anti-entropy bound. Whatever
// happened to Redis's data or to the messages, a watcher's view equals Redis
// at most this long (plus one read) later. Default 1 minute, spread at random
// over [3/4, 1] of it per read so that watchers do not read together. A full
// read of a 1,000-instance table costs Redis about 1 ms; see the README for
// the cost at scale.
func WithResyncInterval(d time.Duration) Option {
	return func(c *config) { c.ResyncInterval = d }
}

// WithKeyPrefix sets the prefix of every Redis key and channel the watcher uses.
// Default "svcwatch". An ACL for the watcher needs `~prefix:*` and `&prefix:*`.
func WithKeyPrefix(p string) Option {
	return func(c *config) { c.KeyPrefix = p }
}

// WithLogger sets the logger. Default slog.Default(); nil keeps the default.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		if l != nil {
			c.Logger = l
		}
	}
}

// WithHandler adds a handler of discovery events; it may be given more than once,
// and handlers are called in the order given. A nil handler is an error.
func WithHandler(h Handler) Option {
	return func(c *config) {
		if h == nil {
			c.nilHandler = true
			return
		}
		c.Handlers = append(c.Handlers, h)
	}
}

// WithTables adds tables to watch from Start, besides self.Table (which is always
// watched).
func WithTables(tables ...string) Option {
	return func(c *config) { c.Tables = append(c.Tables, tables...) }
}

// WatchOnly makes a watcher that registers nothing and only watches (tools,
// gateways). Its self Instance needs only Table, which it watches; with an
// empty Table it watches only what WithTables, Watch and WatchPrefix give.
func WatchOnly() Option {
	return func(c *config) { c.WatchOnly = true }
}

// WithMaxDescSize sets the largest Desc accepted, in bytes; records larger than it
// found in Redis are skipped. Default 64 KiB.
func WithMaxDescSize(n int) Option {
	return func(c *config) { c.MaxDescSize = n }
}

// WithoutRestartReplace turns off replacement of a live incarnation that has the
// same ID and the same Name. By default such a Start is taken as a restart of that
// process, which cannot still be listening at its address, and replaces the old
// incarnation at once. Turn it off where many processes advertise one address
// (e.g. behind NAT): then any live holder of the ID makes Start fail with
// ErrDuplicateID.
func WithoutRestartReplace() Option {
	return func(c *config) { c.RestartReplace = false }
}

// WithOnRegistrationLost sets a callback run when this process's registration is
// lost for good: err wraps ErrReplaced when a newer incarnation took the ID (the
// watcher stands down and stops heartbeating), or ErrDuplicateID when, after Redis
// lost its data, another process took the ID first. It runs on the watcher's
// event goroutine, like the handlers (after the events queued before it), so it
// may call any method of the watcher, Stop included. A registration that Redis
// merely lost is registered again without calling it (see Stats.Reregistrations).
func WithOnRegistrationLost(f func(self Instance, err error)) Option {
	return func(c *config) { c.onLost = f }
}

// WithTableRetention sets how long a table may have no live instance before
// its leftover keys and its catalog entry are collected (by whichever watcher
// notices first, never while a registration exists). Default 24h; at least
// MinRetention (1s). Processes with different retentions do not fight: the
// shortest one collects first. Keep it longer than any Redis outage you want
// a table's registrations to survive untouched.
func WithTableRetention(d time.Duration) Option {
	return func(c *config) { c.TableRetention = d }
}

// withClock replaces the clock that drives the loops' schedules and the view's
// holds (tests).
func withClock(k clock) Option {
	return func(c *config) { c.clock = k }
}

// validate fills the derived defaults and checks the options, self and the
// tables together. It reports every problem at once, each wrapping ErrInvalid.
func (c *config) validate(self Instance) error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...))
	}
	if c.TTL <= 0 {
		bad("TTL %v is not positive", c.TTL)
	}
	if c.keepAliveSet && c.KeepAlive <= 0 {
		bad("keepalive interval %v is not positive", c.KeepAlive)
	}
	if c.scanSet && c.ScanInterval <= 0 {
		bad("scan interval %v is not positive", c.ScanInterval)
	}
	if c.ResyncInterval <= 0 {
		bad("resync interval %v is not positive", c.ResyncInterval)
	}
	if c.TableRetention < MinRetention {
		bad("table retention %v is under the minimum of %v", c.TableRetention, MinRetention)
	}
	if c.MaxDescSize <= 0 {
		bad("max desc size %d is not positive", c.MaxDescSize)
	}
	if c.nilHandler {
		bad("nil handler")
	}
	if err := checkName("key prefix", c.KeyPrefix, maxTableLen, false); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		if !c.keepAliveSet {
			c.KeepAlive = c.TTL / 5
		}
		if !c.scanSet {
			c.ScanInterval = min(DefaultScanEvery, c.TTL*2/5)
		}
		if c.TTL <= 2*c.KeepAlive {
			bad("TTL %v must be more than twice the keepalive interval %v", c.TTL, c.KeepAlive)
		}
		if 2*c.ScanInterval >= c.TTL {
			bad("scan interval %v must be less than half the TTL %v", c.ScanInterval, c.TTL)
		}
	}
	if err := checkSelf(self, c.WatchOnly, c.MaxDescSize); err != nil {
		errs = append(errs, err)
	}
	for _, t := range c.Tables {
		if err := checkTable(t); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
