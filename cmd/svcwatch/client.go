package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// dialerRetries: go-redis dials 5 times per attempt by default, which
	// makes a refused connection take 2 s to report; the command's own
	// retries (and the library's) are enough.
	dialerRetries       = 2
	defaultAddr         = "127.0.0.1:6379"
	defaultSentinelAddr = "127.0.0.1:26379"
	pingTimeout         = 3 * time.Second
)

func init() {
	// go-redis logs every failed dial to stderr; the command reports errors
	// itself, once, and says what to fix.
	redis.SetLogger(quietLogger{})
}

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...interface{}) {}

// globalOpts are the flags before the command: where Redis is and how to
// print.
type globalOpts struct {
	addr           string
	sentinelMaster string
	user, password string
	tls            bool
	prefix         string
	json           bool

	addrs   []string
	addrSet bool // -addr was given (bench uses miniredis otherwise)
}

func (g *globalOpts) register(fs *flag.FlagSet) {
	fs.StringVar(&g.addr, "addr", defaultAddr, "Redis `host:port`; several, comma-separated, for a Cluster (seed nodes); the sentinels with -sentinel-master (then "+defaultSentinelAddr+" by default)")
	fs.StringVar(&g.sentinelMaster, "sentinel-master", "", "Sentinel master `name`: connect through the sentinels given by -addr")
	// The defaults come from the environment after parsing, so that -h never
	// prints a password.
	fs.StringVar(&g.user, "user", "", "ACL user `name` (default $REDIS_USERNAME)")
	fs.StringVar(&g.password, "password", "", "`password` (default $REDIS_PASSWORD)")
	fs.BoolVar(&g.tls, "tls", false, "connect with TLS (1.2 or later), verifying the server certificate")
	fs.StringVar(&g.prefix, "prefix", "svcwatch", "key `prefix` of the watchers (their WithKeyPrefix)")
	fs.BoolVar(&g.json, "json", false, "print JSON: an array for tables and ls, one object per line for watch, one object for bench")
}

// finish applies the environment defaults and checks the flags.
func (g *globalOpts) finish(fs *flag.FlagSet) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	g.addrSet = set["addr"] || g.sentinelMaster != ""
	if !set["user"] {
		g.user = os.Getenv("REDIS_USERNAME")
	}
	if !set["password"] {
		g.password = os.Getenv("REDIS_PASSWORD")
	}
	if g.sentinelMaster != "" && !set["addr"] {
		g.addr = defaultSentinelAddr
	}
	for _, a := range strings.Split(g.addr, ",") {
		if a = strings.TrimSpace(a); a != "" {
			if _, _, err := net.SplitHostPort(a); err != nil {
				return fmt.Errorf("-addr %q: %v", a, err)
			}
			g.addrs = append(g.addrs, a)
		}
	}
	if len(g.addrs) == 0 {
		return errors.New("-addr is empty")
	}
	if g.prefix == "" || strings.ContainsAny(g.prefix, "{} \t\r\n") {
		return fmt.Errorf("-prefix %q: empty, or contains braces or white space", g.prefix)
	}
	return nil
}

// cluster reports whether the addresses are Cluster seed nodes.
func (g *globalOpts) cluster() bool { return g.sentinelMaster == "" && len(g.addrs) > 1 }

// target describes where the client connects, for messages.
func (g *globalOpts) target() string {
	s := strings.Join(g.addrs, ",")
	if g.sentinelMaster != "" {
		return fmt.Sprintf("%s (master %q via sentinels)", s, g.sentinelMaster)
	}
	return s
}

// clientOpts tunes one client; the zero value is a plain client.
type clientOpts struct {
	dialer   func(ctx context.Context, network, addr string) (net.Conn, error)
	poolSize int
	name     string // CLIENT SETNAME, shown by CLIENT LIST
}

func (g *globalOpts) tlsConfig() *tls.Config {
	if !g.tls {
		return nil
	}
	return &tls.Config{MinVersion: tls.VersionTLS12}
}

// newClient builds a client from the flags: a ClusterClient for several
// addresses, a FailoverClient with -sentinel-master, else a Client. Context
// timeouts are enabled so that every deadline of this command holds.
func (g *globalOpts) newClient(o clientOpts) redis.UniversalClient {
	switch {
	case g.sentinelMaster != "":
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: g.sentinelMaster, SentinelAddrs: g.addrs,
			Username: g.user, Password: g.password, TLSConfig: g.tlsConfig(),
			Dialer: o.dialer, PoolSize: o.poolSize, ClientName: o.name,
			ContextTimeoutEnabled: true, DialerRetries: dialerRetries,
		})
	case g.cluster():
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:    g.addrs,
			Username: g.user, Password: g.password, TLSConfig: g.tlsConfig(),
			Dialer: o.dialer, PoolSize: o.poolSize, ClientName: o.name,
			ContextTimeoutEnabled: true, DialerRetries: dialerRetries,
		})
	default:
		return redis.NewClient(&redis.Options{
			Addr:     g.addrs[0],
			Username: g.user, Password: g.password, TLSConfig: g.tlsConfig(),
			Dialer: o.dialer, PoolSize: o.poolSize, ClientName: o.name,
			ContextTimeoutEnabled: true, DialerRetries: dialerRetries,
		})
	}
}

// connect builds the client and checks, within a few seconds, that Redis
// answers; on failure the client is closed and the error says what to fix.
func (g *globalOpts) connect(ctx context.Context) (redis.UniversalClient, error) {
	c := g.newClient(clientOpts{})
	if err := ping(ctx, c, g.target(), g.user); err != nil {
		_ = c.Close()
		switch {
		case g.cluster() && strings.Contains(err.Error(), "cluster support disabled"):
			err = fmt.Errorf("%w (several -addr addresses mean a Redis Cluster; give one for a single server)", err)
		case g.tls && errors.Is(err, context.DeadlineExceeded):
			err = fmt.Errorf("%w (does the server speak TLS?)", err)
		}
		return nil, err
	}
	return c, nil
}

func ping(ctx context.Context, c redis.UniversalClient, target, user string) error {
	pctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	err := c.Ping(pctx).Err()
	switch {
	case err == nil:
		return nil
	case isAuthError(err):
		who := "the default user"
		if user != "" {
			who = fmt.Sprintf("user %q", user)
		}
		return fmt.Errorf("svcwatch: authentication to Redis at %s failed as %s (set -user/-password or REDIS_USERNAME/REDIS_PASSWORD): %v", target, who, err)
	case ctx.Err() != nil:
		return ctx.Err()
	default:
		return fmt.Errorf("svcwatch: cannot reach Redis at %s: %w", target, err)
	}
}

// isAuthError recognises the server's answers to a missing or wrong password,
// which go-redis returns from the connection's HELLO/AUTH.
func isAuthError(err error) bool {
	s := err.Error()
	for _, p := range []string{"WRONGPASS", "NOAUTH", "invalid password", "invalid username-password", "NOPERM"} {
		if strings.Contains(s, p) {
			return true
		}
	}
	return false
}

// checkTableArg refuses names that cannot be a table, before Redis is asked.
func checkTableArg(table string) error {
	if table == "" || strings.ContainsAny(table, "{}") || strings.IndexFunc(table, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
		return usagef("%q is not a table name (a cluster path such as game/prod/v1/gate)", table)
	}
	return nil
}
