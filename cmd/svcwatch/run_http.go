package main

// run_http.go: the local HTTP API of `svcwatch run`, which gives CMD
// discovery with plain HTTP. Every answer is JSON; every refusal is a 4xx (or
// a 503 while Redis cannot be reached) with {"error": "..."}. It reads the
// watcher's local view only: no request costs Redis a round trip, except the
// PUTs, which write self's record.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/svcwatch/svcwatch"
)

// Body limits: a Desc and a Meta are within the library's size limit, and a
// state is a few bytes.
const (
	maxDescBody  = svcwatch.DefaultMaxDescSize
	maxStateBody = 1 << 10
)

// sidecarWatcher is what the API uses of the watcher.
type sidecarWatcher interface {
	Self() svcwatch.Instance
	Services(table string) []svcwatch.Instance
	Pick(table, key string) (svcwatch.Instance, bool)
	Tables() []string
	Stats() svcwatch.Stats
	SetState(ctx context.Context, s svcwatch.State) error
	SetMeta(ctx context.Context, meta map[string]string) error
	SetDesc(ctx context.Context, desc string) error
}

// runInstance is one instance as the API shows it (DESIGN.md: table, id,
// name, desc, meta, state, incarnation, registered_at).
type runInstance struct {
	Table       string            `json:"table"`
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Desc        string            `json:"desc"`
	Meta        map[string]string `json:"meta"`  // {} when none
	State       string            `json:"state"` // "serving", "draining" or "unhealthy"
	Incarnation string            `json:"incarnation"`
	// RegisteredAt is RFC 3339 with milliseconds, Redis server time; "" for
	// self while not registered.
	RegisteredAt string `json:"registered_at"`
}

func runInstanceOf(in svcwatch.Instance) runInstance {
	r := runInstance{Table: in.Table, ID: in.ID, Name: in.Name, Desc: in.Desc, Meta: jsonMeta(in.Meta),
		State: in.State.String(), Incarnation: in.Incarnation}
	if !in.RegisteredAt.IsZero() {
		r.RegisteredAt = in.RegisteredAt.UTC().Format(timeFormat)
	}
	return r
}

// runTable is the answer of GET /v1/tables/{table}.
type runTable struct {
	Index     uint64        `json:"index"`
	Instances []runInstance `json:"instances"` // sorted by id; [] when none
}

// runStats is the answer of GET /v1/stats.
type runStats struct {
	Registered      bool     `json:"registered"` // Redis confirmed self's registration within one TTL
	Connected       bool     `json:"connected"`  // the last Redis round trip succeeded
	State           string   `json:"state"`      // as peers see it
	Heartbeats      uint64   `json:"heartbeats"`
	Reregistrations uint64   `json:"reregistrations"`
	Tables          []string `json:"tables"`   // the tables served now, sorted
	Prefixes        []string `json:"prefixes"` // -watch-prefix
	Waiters         int64    `json:"waiters"`  // blocking queries waiting now
}

// runAPI serves the endpoints. Its methods are safe for concurrent use.
type runAPI struct {
	w          sidecarWatcher
	idx        *tableIndexes
	table      string   // self's
	prefixes   []string // -watch-prefix, as the watcher's Prefixes gives them
	setTimeout time.Duration
	// started is set when the watcher's Start returned: from then on a table
	// under a watched prefix that has no instance is known to be empty,
	// rather than not loaded yet.
	started atomic.Bool

	selfMu   sync.Mutex
	lastSelf svcwatch.Instance
}

func newRunAPI(w sidecarWatcher, idx *tableIndexes, table string, prefixes []string, setTimeout time.Duration) *runAPI {
	return &runAPI{w: w, idx: idx, table: table, prefixes: prefixes, setTimeout: setTimeout}
}

// noteSelf bumps self's table when self changed. Changes of self raise no
// event (a watcher never reports itself), so the sidecar calls this after its
// own writes and on a short local poll, which catches the health check's
// verdicts and the registration.
func (a *runAPI) noteSelf() {
	a.selfMu.Lock()
	s := a.w.Self() // under selfMu: an older Self never replaces a newer one
	changed := !sameInstance(s, a.lastSelf)
	a.lastSelf = s
	a.selfMu.Unlock()
	if changed {
		a.idx.bump(a.table)
	}
}

func sameInstance(a, b svcwatch.Instance) bool {
	return a.Table == b.Table && a.ID == b.ID && a.Name == b.Name && a.Desc == b.Desc && a.State == b.State &&
		a.Incarnation == b.Incarnation && a.RegisteredAt.Equal(b.RegisteredAt) && maps.Equal(a.Meta, b.Meta)
}

// withSelf returns in, or the watcher's own Self when in is this very
// incarnation: Self already shows a change the sidecar wrote, which the view
// shows once Redis echoes it back, so CMD reads its own writes.
func (a *runAPI) withSelf(in svcwatch.Instance, self svcwatch.Instance) svcwatch.Instance {
	if in.Table == self.Table && in.ID == self.ID && in.Incarnation == self.Incarnation && self.Incarnation != "" {
		return self
	}
	return in
}

// covered reports whether a watched prefix covers table (whole segments).
func (a *runAPI) covered(table string) bool {
	for _, p := range a.prefixes {
		if svcwatch.UnderPrefix(table, p) {
			return true
		}
	}
	return false
}

// serves reports whether table is served: watched, or under a watched prefix.
func (a *runAPI) serves(table string) bool {
	return a.covered(table) || slices.Contains(a.w.Tables(), table)
}

// view returns the instances of a served table and whether it is loaded.
func (a *runAPI) view(table string) ([]svcwatch.Instance, bool) {
	insts := a.w.Services(table)
	if insts == nil {
		// Under a watched prefix and not found after Start: no instance yet.
		return nil, a.started.Load() && a.covered(table)
	}
	if table == a.table {
		self := a.w.Self()
		for i := range insts {
			insts[i] = a.withSelf(insts[i], self)
		}
	}
	return insts, true
}

func (a *runAPI) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	switch {
	case p == "/v1/tables":
		if allow(rw, r, http.MethodGet) && query(rw, r) != nil {
			reply(rw, http.StatusOK, map[string][]string{"tables": a.w.Tables()})
		}
	case strings.HasPrefix(p, "/v1/tables/"):
		if allow(rw, r, http.MethodGet) {
			a.getTable(rw, r, strings.TrimPrefix(p, "/v1/tables/"))
		}
	case strings.HasPrefix(p, "/v1/pick/"):
		if allow(rw, r, http.MethodGet) {
			a.pick(rw, r, strings.TrimPrefix(p, "/v1/pick/"))
		}
	case p == "/v1/self":
		if allow(rw, r, http.MethodGet) && query(rw, r) != nil {
			reply(rw, http.StatusOK, runInstanceOf(a.w.Self()))
		}
	case p == "/v1/self/state":
		if allow(rw, r, http.MethodPut) && query(rw, r) != nil {
			a.putState(rw, r)
		}
	case p == "/v1/self/meta":
		if allow(rw, r, http.MethodPut) && query(rw, r) != nil {
			a.putMeta(rw, r)
		}
	case p == "/v1/self/desc":
		if allow(rw, r, http.MethodPut) && query(rw, r) != nil {
			a.putDesc(rw, r)
		}
	case p == "/v1/stats":
		if allow(rw, r, http.MethodGet) && query(rw, r) != nil {
			a.stats(rw)
		}
	default:
		replyError(rw, http.StatusNotFound, "no such endpoint %s (see `svcwatch run -h`)", p)
	}
}

// getTable answers GET /v1/tables/{table}[?index=N&wait=D]. With wait (or
// index), it blocks until the table's index differs from N (N = 0: until the
// table is loaded), for at most wait (default and cap maxWait). An index
// greater than the current one (the client's comes from an earlier sidecar)
// answers at once, so the client starts over.
func (a *runAPI) getTable(rw http.ResponseWriter, r *http.Request, table string) {
	q := query(rw, r, "index", "wait")
	if q == nil || !validTable(rw, table) {
		return
	}
	var index uint64
	blocking := false
	if s, ok := q["index"]; ok {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			replyError(rw, http.StatusBadRequest, "index %q is not a non-negative integer", s)
			return
		}
		index, blocking = n, true
	}
	wait := maxWait
	if s, ok := q["wait"]; ok {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			replyError(rw, http.StatusBadRequest, "wait %q is not a duration such as 30s or 5m", s)
			return
		}
		wait, blocking = min(d, maxWait), true
	}
	if !a.serves(table) {
		replyError(rw, http.StatusNotFound, "table %s is not watched by this sidecar (add -watch %s or a -watch-prefix)", table, table)
		return
	}
	waited := false
	for {
		// The index first, then the view: the view is at least as new as the
		// index, so a change is never missed, at worst answered twice.
		n, changed := a.idx.current(table)
		insts, loaded := a.view(table)
		if loaded && n == 0 {
			a.idx.loaded(table)
			continue
		}
		if blocking && !waited && (!loaded || n == index) && !a.idx.isClosed() {
			waited = true
			a.idx.wait(r.Context(), changed, wait)
			if r.Context().Err() != nil {
				return // the client left
			}
			continue
		}
		if !loaded {
			notLoaded(rw, table)
			return
		}
		rw.Header().Set("X-Svcwatch-Index", strconv.FormatUint(n, 10))
		out := runTable{Index: n, Instances: make([]runInstance, 0, len(insts))}
		for _, in := range insts {
			out.Instances = append(out.Instances, runInstanceOf(in))
		}
		reply(rw, http.StatusOK, out)
		return
	}
}

// pick answers GET /v1/pick/{table}?key=K: the serving instance that owns K,
// as every watcher's Pick chooses it.
func (a *runAPI) pick(rw http.ResponseWriter, r *http.Request, table string) {
	q := query(rw, r, "key")
	if q == nil || !validTable(rw, table) {
		return
	}
	key, ok := q["key"]
	if !ok || key == "" {
		replyError(rw, http.StatusBadRequest, "pick needs a key: /v1/pick/%s?key=K", table)
		return
	}
	if !a.serves(table) {
		replyError(rw, http.StatusNotFound, "table %s is not watched by this sidecar (add -watch %s or a -watch-prefix)", table, table)
		return
	}
	if in, ok := a.w.Pick(table, key); ok {
		reply(rw, http.StatusOK, runInstanceOf(a.withSelf(in, a.w.Self())))
		return
	}
	if _, loaded := a.view(table); !loaded {
		notLoaded(rw, table)
		return
	}
	replyError(rw, http.StatusServiceUnavailable, "no serving instance in table %s", table)
}

func (a *runAPI) stats(rw http.ResponseWriter) {
	s := a.w.Stats()
	reply(rw, http.StatusOK, runStats{
		Registered: s.Registered, Connected: s.Connected, State: s.State.String(),
		Heartbeats: s.Heartbeats, Reregistrations: s.Reregistrations,
		Tables: a.w.Tables(), Prefixes: append([]string{}, a.prefixes...), Waiters: a.idx.waiters.Load(),
	})
}

// putState answers PUT /v1/self/state {"state":"draining"}.
func (a *runAPI) putState(rw http.ResponseWriter, r *http.Request) {
	var body struct {
		State *string `json:"state"`
	}
	if !decodeBody(rw, r, maxStateBody, &body) {
		return
	}
	if body.State == nil {
		replyError(rw, http.StatusBadRequest, `the body needs a state: {"state":"draining"}`)
		return
	}
	s, err := parseState(*body.State)
	if err != nil {
		replyError(rw, http.StatusBadRequest, "%v", err)
		return
	}
	a.set(rw, r, func(ctx context.Context) error { return a.w.SetState(ctx, s) })
}

// putMeta answers PUT /v1/self/meta with a JSON object of strings, which
// replaces self's Meta ({} removes it).
func (a *runAPI) putMeta(rw http.ResponseWriter, r *http.Request) {
	var raw json.RawMessage
	if !decodeBody(rw, r, maxDescBody, &raw) {
		return
	}
	var meta map[string]string
	if len(raw) == 0 || raw[0] != '{' {
		replyError(rw, http.StatusBadRequest, `the body must be a JSON object of strings, e.g. {"zone":"eu","weight":"2"}`)
		return
	}
	if err := json.Unmarshal(raw, &meta); err != nil {
		replyError(rw, http.StatusBadRequest, `the body must be a JSON object of strings, e.g. {"zone":"eu","weight":"2"}: %v`, err)
		return
	}
	a.set(rw, r, func(ctx context.Context) error { return a.w.SetMeta(ctx, meta) })
}

// putDesc answers PUT /v1/self/desc; the body is the raw Desc.
func (a *runAPI) putDesc(rw http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(http.MaxBytesReader(rw, r.Body, maxDescBody))
	if err != nil {
		bodyError(rw, err)
		return
	}
	a.set(rw, r, func(ctx context.Context) error { return a.w.SetDesc(ctx, string(b)) })
}

// set runs one write of self and answers with self, or with the error:
// 400 for a bad value, 409 when another incarnation took the ID, 503 when
// Redis does not answer or the sidecar is stopping.
func (a *runAPI) set(rw http.ResponseWriter, r *http.Request, write func(context.Context) error) {
	ctx, cancel := context.WithTimeout(r.Context(), a.setTimeout)
	defer cancel()
	err := write(ctx)
	switch {
	case err == nil:
		a.noteSelf()
		reply(rw, http.StatusOK, runInstanceOf(a.w.Self()))
	case errors.Is(err, svcwatch.ErrInvalid):
		replyError(rw, http.StatusBadRequest, "%v", err)
	case errors.Is(err, svcwatch.ErrReplaced):
		replyError(rw, http.StatusConflict, "%v", err)
	default:
		replyError(rw, http.StatusServiceUnavailable, "%v", err)
	}
}

// parseState reads a State by its name.
func parseState(s string) (svcwatch.State, error) {
	for _, st := range []svcwatch.State{svcwatch.Serving, svcwatch.Draining, svcwatch.Unhealthy} {
		if s == st.String() {
			return st, nil
		}
	}
	return 0, fmt.Errorf("state %q is not serving, draining or unhealthy", s)
}

// allow answers 405 unless the request's method is method (GET allows HEAD).
func allow(rw http.ResponseWriter, r *http.Request, method string) bool {
	if r.Method == method || (method == http.MethodGet && r.Method == http.MethodHead) {
		return true
	}
	rw.Header().Set("Allow", method)
	replyError(rw, http.StatusMethodNotAllowed, "%s %s: use %s", r.Method, r.URL.Path, method)
	return false
}

// query returns the query parameters, or answers 400 and returns nil when one
// is unknown, repeated or unreadable: a typo must not pass for a default.
func query(rw http.ResponseWriter, r *http.Request, known ...string) map[string]string {
	vals, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		replyError(rw, http.StatusBadRequest, "bad query: %v", err)
		return nil
	}
	out := make(map[string]string, len(vals))
	for k, v := range vals {
		if !slices.Contains(known, k) {
			replyError(rw, http.StatusBadRequest, "unknown query parameter %q", k)
			return nil
		}
		if len(v) != 1 {
			replyError(rw, http.StatusBadRequest, "query parameter %q given %d times", k, len(v))
			return nil
		}
		out[k] = v[0]
	}
	return out
}

func validTable(rw http.ResponseWriter, table string) bool {
	if err := checkTableArg(table); err != nil {
		replyError(rw, http.StatusBadRequest, "%v", err)
		return false
	}
	return true
}

// decodeBody reads one JSON value of at most limit bytes into v, or answers
// 400 (413 when too large).
func decodeBody(rw http.ResponseWriter, r *http.Request, limit int64, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(rw, r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		bodyError(rw, err)
		return false
	}
	if _, err := dec.Token(); err != io.EOF {
		replyError(rw, http.StatusBadRequest, "the body has data after its JSON value")
		return false
	}
	return true
}

func bodyError(rw http.ResponseWriter, err error) {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		replyError(rw, http.StatusRequestEntityTooLarge, "the body is over the limit of %d bytes", tooBig.Limit)
		return
	}
	replyError(rw, http.StatusBadRequest, "unreadable body: %v", err)
}

// notLoaded answers for a table not loaded yet, with index 0: a query with
// index 0 waits for the load.
func notLoaded(rw http.ResponseWriter, table string) {
	rw.Header().Set("X-Svcwatch-Index", "0")
	rw.Header().Set("Retry-After", "1")
	replyError(rw, http.StatusServiceUnavailable,
		"table %s is not loaded yet: Redis has not answered since the sidecar started (retry, or wait with ?index=0&wait=30s)", table)
}

func reply(rw http.ResponseWriter, status int, v any) {
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(status)
	enc := json.NewEncoder(rw)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // the client may have left; nothing to do about it
}

func replyError(rw http.ResponseWriter, status int, format string, args ...any) {
	reply(rw, status, map[string]string{"error": fmt.Sprintf(format, args...)})
}

// listenHTTP binds the API's address: loopback only, unless public.
func listenHTTP(addr string, public bool) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, usagef("-http %q: %v", addr, err)
	}
	if !public && !isLoopbackHost(host) {
		return nil, usagef("-http %q is not a loopback address; add -http-public to serve the API there "+
			"(whoever reaches it can drain CMD)", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("run: -http %s: %w", addr, err)
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); !public && (!ok || !tcp.IP.IsLoopback()) {
		_ = ln.Close()
		return nil, usagef("-http %q bound %s, which is not loopback; add -http-public to serve the API there", addr, ln.Addr())
	}
	return ln, nil
}

func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
