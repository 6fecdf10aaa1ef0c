package main

// run.go: `svcwatch run [flags] -- CMD [ARGS]`, the sidecar, and its flags.
// It registers CMD through the library's public API, keeps it registered
// while CMD lives, serves the local HTTP API (run_http.go, run_wait.go) and
// deregisters when CMD ends, exiting with CMD's status (run_supervise.go).

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/svcwatch/svcwatch"
)

// runOpts are the flags of `svcwatch run`.
type runOpts struct {
	table, id, name, desc string
	meta                  metaFlag
	state                 string
	ttl, keepAlive, grace time.Duration
	health                string
	watch, prefixes       listFlag
	httpAddr              string
	httpPublic            bool
}

// runCommand is `svcwatch run`, listed by commands() in cli.go.
func runCommand() *command {
	o := &runOpts{meta: metaFlag{}}
	return &command{
		name: "run",
		args: "[flags] -- CMD [ARGS]",
		summary: "run CMD registered as -table/-id/-name while it lives, serving it discovery over local HTTP " +
			"(SVCWATCH_HTTP); SIGTERM drains it; exit with CMD's status",
		setFlags: o.register,
		run: func(ctx context.Context, g *globalOpts, fs *flag.FlagSet, out, errOut io.Writer) error {
			code, err := o.supervise(ctx, g, fs.Args(), out, errOut)
			if err == nil && code != 0 {
				return exitStatusError(code) // CMD's status, which the 0/1/2 mapping cannot carry
			}
			return err
		},
	}
}

// register defines the flags of `svcwatch run`; their text is what
// `svcwatch run -h` prints, so it says every default and limit.
func (o *runOpts) register(fs *flag.FlagSet) {
	fs.StringVar(&o.table, "table", "", "`table` to register CMD in (required), e.g. mygame/prod/20190510/battle")
	fs.StringVar(&o.id, "id", "", "instance `id`, unique in the table (required); the same -id and -name again "+
		"(CMD restarted) replaces the old registration at once")
	fs.StringVar(&o.name, "name", "", "the `host:port` peers dial to reach CMD (required)")
	fs.StringVar(&o.desc, "desc", "", "CMD's `description`, usually JSON; PUT /v1/self/desc changes it")
	fs.Var(o.meta, "meta", "`key=value` attribute, repeatable (-meta zone=eu -meta weight=2: twice the keys "+
		"of weight 1 in pick); PUT /v1/self/meta replaces them")
	fs.StringVar(&o.state, "state", "serving", "`state` at registration: serving, or draining to take no new work "+
		`until CMD says PUT /v1/self/state {"state":"serving"}`)
	fs.DurationVar(&o.ttl, "ttl", svcwatch.DefaultTTL, "how long the registration outlives the last heartbeat: "+
		"if the sidecar is killed, peers see CMD removed this much later")
	fs.DurationVar(&o.keepAlive, "keepalive", 0, "heartbeat `interval`, less than -ttl/2 (default -ttl/5)")
	fs.StringVar(&o.health, "health", "", "health check `URL` (http or https), fetched before each heartbeat: "+
		"a 2xx answer within half the keepalive interval is healthy; anything else makes CMD unhealthy at its "+
		"peers (no new work) until the check passes again")
	fs.Var(&o.watch, "watch", "another `table` the HTTP API serves, repeatable; CMD's own table is always served")
	fs.Var(&o.prefixes, "watch-prefix", "serve every table under `prefix` (whole path segments: game/prod covers "+
		"game/prod/v2/battle), now and as they appear; repeatable")
	fs.StringVar(&o.httpAddr, "http", "127.0.0.1:0", "`address` of the local HTTP API, given to CMD as "+
		"SVCWATCH_HTTP (with SVCWATCH_TABLE and SVCWATCH_ID); port 0 picks a free port. Endpoints (JSON): "+
		"GET /v1/tables/{table} {\"index\":N,\"instances\":[...]}, with ?index=N&wait=30s to wait until it "+
		"changes (at most 5m); GET /v1/tables; GET /v1/pick/{table}?key=K; GET /v1/self; GET /v1/stats; "+
		"PUT /v1/self/state {\"state\":\"draining\"}; PUT /v1/self/meta {\"k\":\"v\"}; PUT /v1/self/desc (raw body)")
	fs.BoolVar(&o.httpPublic, "http-public", false, "allow a -http address that is not loopback: whoever reaches "+
		"it can drain CMD or rewrite its meta and desc")
	fs.DurationVar(&o.grace, "grace", 30*time.Second, "on SIGTERM or SIGINT: how long CMD has to exit after "+
		"the signal is forwarded to it, before it is killed")
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error {
	*l = append(*l, s)
	return nil
}

// metaFlag is the repeatable -meta key=value.
type metaFlag map[string]string

func (m metaFlag) String() string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		keys[i] = k + "=" + m[k]
	}
	return strings.Join(keys, ",")
}

func (m metaFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q is not key=value", s)
	}
	if _, dup := m[k]; dup {
		return fmt.Errorf("key %q given twice", k)
	}
	m[k] = v
	return nil
}

// instance is the Instance the flags describe.
func (o *runOpts) instance() (svcwatch.Instance, error) {
	var missing []string
	for _, f := range []struct{ name, val string }{{"-table", o.table}, {"-id", o.id}, {"-name", o.name}} {
		if f.val == "" {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return svcwatch.Instance{}, usagef("%s required", strings.Join(missing, ", "))
	}
	st, err := parseState(o.state)
	if err != nil || st == svcwatch.Unhealthy {
		return svcwatch.Instance{}, usagef("-state %q: serving or draining", o.state)
	}
	var meta map[string]string
	if len(o.meta) > 0 {
		meta = o.meta
	}
	return svcwatch.Instance{Table: o.table, ID: o.id, Name: o.name, Desc: o.desc, Meta: meta, State: st}, nil
}

// keepAliveOrDefault is the heartbeat interval the watcher will use.
func (o *runOpts) keepAliveOrDefault() time.Duration {
	if o.keepAlive > 0 {
		return o.keepAlive
	}
	return o.ttl / 5
}

// httpHealthCheck is the WithHealthCheck check of -health: a GET of url
// whose answer is 2xx. It never goes through a proxy (the URL is CMD's own)
// and keeps no connection between checks, so no goroutine of it outlives a
// check.
func httpHealthCheck(url string) func(ctx context.Context) error {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.DisableKeepAlives = true
	client := &http.Client{Transport: tr}
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("svcwatch: health check: %w", err)
		}
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("svcwatch: health check: %w", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode > 299 {
			return fmt.Errorf("svcwatch: health check GET %s answered %s", url, resp.Status)
		}
		return nil
	}
}
