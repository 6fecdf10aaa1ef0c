package main

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/svcwatch/svcwatch"
)

// benchReport is everything bench measured; -json prints it as is.
type benchReport struct {
	Target      string  `json:"target"`
	Server      string  `json:"server"`
	Miniredis   bool    `json:"miniredis,omitempty"`
	Table       string  `json:"table"`
	Prefix      string  `json:"prefix"`
	Watchers    int     `json:"watchers"`
	Rounds      int     `json:"rounds"`
	TTLms       float64 `json:"ttl_ms"`
	KeepAliveMs float64 `json:"keepalive_ms"`
	ScanMs      float64 `json:"scan_ms"`
	GOMAXPROCS  int     `json:"gomaxprocs"`

	Propagation propagationReport `json:"propagation"`
	Floor       latencyPair       `json:"floor"`
	NewTables   newTablesReport   `json:"new_tables"`
	Crash       crashReport       `json:"crash"`
	Poll        pollReport        `json:"poll_baseline"`
	Idle        idleReport        `json:"idle"`
}

// propagationReport: from the register (deregister) script call being sent to
// OnAdd (OnRemove) at the watchers; "each" is every receipt, "all" the last
// watcher's per event.
type propagationReport struct {
	StartCall  dist `json:"start_call"` // Start() itself: subscribe, register, load
	AddEach    dist `json:"add_each"`
	AddAll     dist `json:"add_all"`
	RemoveEach dist `json:"remove_each"`
	RemoveAll  dist `json:"remove_all"`
	// At one bare PubSub on the table's channel: Redis and the network alone.
	ProbeAdd    dist `json:"probe_add"`
	ProbeRemove dist `json:"probe_remove"`
}

type latencyPair struct {
	Each dist `json:"each"`
	All  dist `json:"all"`
}

type crashReport struct {
	Method  string  `json:"method"`
	Each    dist    `json:"each"`
	All     dist    `json:"all"`
	BoundMs float64 `json:"bound_ms"` // the design's promise: TTL + 1 s
}

type pollReport struct {
	IntervalMs float64 `json:"interval_ms"`
	Rounds     int     `json:"rounds"`
	Each       dist    `json:"each"`
	All        dist    `json:"all"`
}

type idleReport struct {
	NA      string  `json:"na,omitempty"` // why it was not measured
	Procs   int     `json:"procs"`
	WindowS float64 `json:"window_s"`
	// Per idle process per second.
	RoundTripsPerProcPerSec float64       `json:"round_trips_per_proc_per_s"`
	Expected                float64       `json:"expected_round_trips_per_proc_per_s"`
	InScriptPerProcPerSec   float64       `json:"in_script_commands_per_proc_per_s"`
	ServerUsecPerProcPerSec float64       `json:"server_usec_per_proc_per_s"`
	Commands                []idleCommand `json:"commands"`
}

type idleCommand struct {
	Command       string  `json:"command"`
	Calls         int64   `json:"calls"`
	PerProcPerSec float64 `json:"per_proc_per_s"`
	UsecPerCall   float64 `json:"usec_per_call"`
	RoundTrip     bool    `json:"round_trip"` // sent by a client; otherwise run inside a script
}

func sortCommands(cs []idleCommand) {
	sort.Slice(cs, func(i, j int) bool {
		if cs[i].RoundTrip != cs[j].RoundTrip {
			return cs[i].RoundTrip
		}
		if cs[i].Calls != cs[j].Calls {
			return cs[i].Calls > cs[j].Calls
		}
		return cs[i].Command < cs[j].Command
	})
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

func msDur(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }

// print writes the report for people.
func (r *benchReport) print(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	all := fmt.Sprintf("all %d", r.Watchers)
	p("svcwatch bench")
	p("  target    %s (%s)", r.Target, r.Server)
	if r.Miniredis {
		p("  WARNING   in-process miniredis: these numbers say little about a real Redis")
	}
	p("  table     %s (prefix %s); its keys are deleted at the end", r.Table, r.Prefix)
	p("  watchers  %d watch-only svcwatch watchers, one client each; %d rounds; GOMAXPROCS %d", r.Watchers, r.Rounds, r.GOMAXPROCS)
	p("  settings  ttl %v, keepalive %v, scan %v", msDur(r.TTLms), msDur(r.KeepAliveMs), msDur(r.ScanMs))
	p("  'each' is every receipt at every watcher; '%s' is, per event, when the last watcher had it.", all)
	p("  The watchers, the floor's subscribers and the new processes all share this one process: on few cores")
	p("  the '%s' tail measures this machine's CPU as much as Redis (GOMAXPROCS above).", all)
	p("")

	p("Propagation: from the register / deregister script call leaving the new process's client to the handler call at the watchers")
	tw := newTable(w)
	row(tw, "register -> OnAdd, each", r.Propagation.AddEach)
	row(tw, "register -> OnAdd, "+all, r.Propagation.AddAll)
	row(tw, "Stop -> OnRemove, each", r.Propagation.RemoveEach)
	row(tw, "Stop -> OnRemove, "+all, r.Propagation.RemoveAll)
	row(tw, "Start() call (subscribe, register, load)", r.Propagation.StartCall)
	row(tw, "register -> message at a bare subscriber", r.Propagation.ProbeAdd)
	row(tw, "Stop -> message at a bare subscriber", r.Propagation.ProbeRemove)
	tw.Flush()
	p("  (the bare subscriber is one go-redis PubSub on the table's channel, in this process: with few watchers it shows what")
	p("  Redis and the network take, the script included; with many it waits for the CPU like the watchers do)")
	p("")

	p("Floor: bare PUBLISH of a %d-byte message to %d go-redis PubSub connections (no library), from the PUBLISH call to ReceiveMessage;", len(floorPad)+len("19|"), r.Watchers)
	p("  one in each propagation round, so that both see the same machine")
	tw = newTable(w)
	row(tw, "publish -> receipt, each", r.Floor.Each)
	row(tw, "publish -> receipt, "+all, r.Floor.All)
	tw.Flush()
	p("Library / floor (register -> OnAdd vs publish -> receipt):")
	p("  each:    p50 %s  p99 %s  max %s", ratio(r.Propagation.AddEach.P50ms, r.Floor.Each.P50ms),
		ratio(r.Propagation.AddEach.P99ms, r.Floor.Each.P99ms), ratio(r.Propagation.AddEach.MaxMs, r.Floor.Each.MaxMs))
	p("  %-7s  p50 %s  p99 %s  max %s", all+":", ratio(r.Propagation.AddAll.P50ms, r.Floor.All.P50ms),
		ratio(r.Propagation.AddAll.P99ms, r.Floor.All.P99ms), ratio(r.Propagation.AddAll.MaxMs, r.Floor.All.MaxMs))
	p("")

	nt := r.NewTables
	p("New tables: %d rounds of the first registration in a table nobody had seen, under the prefix %s that every watcher watches;", nt.Rounds, nt.Prefix)
	p("  from the register call to OnAdd (the catalog's announcement, then subscribe to and load of the new table)")
	tw = newTable(w)
	row(tw, "first register -> OnAdd, each", nt.AddEach)
	row(tw, "first register -> OnAdd, "+all, nt.AddAll)
	row(tw, "floor: publish -> receipt, each", nt.Floor.Each)
	row(tw, "floor: publish -> receipt, "+all, nt.Floor.All)
	row(tw, "Start() call of the new process", nt.StartDur)
	tw.Flush()
	p("  new table / floor: each p50 %s p99 %s; %s p50 %s p99 %s", ratio(nt.AddEach.P50ms, nt.Floor.Each.P50ms), ratio(nt.AddEach.P99ms, nt.Floor.Each.P99ms),
		all, ratio(nt.AddAll.P50ms, nt.Floor.All.P50ms), ratio(nt.AddAll.P99ms, nt.Floor.All.P99ms))
	p("  catalog calls per registration: %.2f (one idempotent call after the register script)", nt.CatalogCallsPerRegistration)
	p("")

	p("Crash detection at ttl %v (keepalive %v), %d crashes", msDur(r.TTLms), msDur(r.KeepAliveMs), r.Rounds)
	p("  method: %s", wrap(r.Crash.Method, 100, "          "))
	tw = newTable(w)
	row(tw, "crash -> OnRemove, each", r.Crash.Each)
	row(tw, "crash -> OnRemove, "+all, r.Crash.All)
	tw.Flush()
	p("  promised: within ttl + 1s = %v", msDur(r.Crash.BoundMs))
	p("")

	p("Polling baseline (the original design): %d pollers, HGETALL of the table every %v from random phases; measured, %d adds",
		r.Watchers, msDur(r.Poll.IntervalMs), r.Poll.Rounds)
	if r.Poll.Rounds > 0 {
		tw = newTable(w)
		row(tw, "register -> seen, each", r.Poll.Each)
		row(tw, "register -> seen, "+all, r.Poll.All)
		tw.Flush()
		n := float64(r.Watchers)
		p("  expected: each ~U(0, %v), p50 ~%v; %s ~%v", msDur(r.Poll.IntervalMs), msDur(r.Poll.IntervalMs/2),
			all, msDur(r.Poll.IntervalMs*n/(n+1)).Round(time.Millisecond))
		p("  polling / library (register -> seen vs register -> OnAdd): each p50 %s; %s p50 %s",
			ratio(r.Poll.Each.P50ms, r.Propagation.AddEach.P50ms), all, ratio(r.Poll.All.P50ms, r.Propagation.AddAll.P50ms))
	}
	p("")

	ka := svcwatch.DefaultTTL / 5
	p("Idle cost: %d registered processes with the library's defaults (ttl %v, keepalive %v, scan %v), counted with INFO commandstats over %.1fs",
		r.Idle.Procs, svcwatch.DefaultTTL, ka, svcwatch.DefaultScanEvery, r.Idle.WindowS)
	if r.Idle.NA != "" {
		p("  n/a: %s", r.Idle.NA)
		return
	}
	p("  (counts every client of the server: run on an otherwise idle Redis)")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "  command\tcalls\tper process/s\tµs/call\t\t")
	for _, c := range r.Idle.Commands {
		kind := "round trip"
		if !c.RoundTrip {
			kind = "inside scripts"
		}
		fmt.Fprintf(tw, "  %s\t%d\t%.3f\t%.1f\t%s\t\n", c.Command, c.Calls, c.PerProcPerSec, c.UsecPerCall, kind)
	}
	tw.Flush()
	p("  round trips per idle process per second: %.3f (the settings predict %.3f: heartbeat %.2f + revision check %.2f + PubSub health-check PING %.2f)",
		r.Idle.RoundTripsPerProcPerSec, r.Idle.Expected, 1/ka.Seconds(), 1/svcwatch.DefaultScanEvery.Seconds(), 1/3.0)
	p("  the catalog adds 2 calls (touch own table, list due tables) per collection pass, every 7.5-10 min at the default")
	p("  retention of %v: about %.4f per process per second, too rare for this window", svcwatch.DefaultRetention, 2/(8.75*60))
	p("  commands run inside scripts per idle process per second: %.3f (not round trips)", r.Idle.InScriptPerProcPerSec)
	p("  server time per idle process: %.1f µs/s", r.Idle.ServerUsecPerProcPerSec)
}

func newTable(w io.Writer) *tabwriter.Writer {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  \tp50\tp99\tmax\tsamples\tmissed")
	return tw
}

func row(tw *tabwriter.Writer, label string, d dist) {
	if d.Samples == 0 {
		fmt.Fprintf(tw, "  %s\t-\t-\t-\t0\t%d\n", label, d.Missed)
		return
	}
	fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%d\t%d\n", label, fmtMs(d.P50ms), fmtMs(d.P99ms), fmtMs(d.MaxMs), d.Samples, d.Missed)
}

// wrap breaks s into lines of at most width, indenting the continuations.
func wrap(s string, width int, indent string) string {
	var b strings.Builder
	n := 0
	for i, word := range strings.Fields(s) {
		if i > 0 {
			if n+1+len(word) > width {
				b.WriteString("\n" + indent)
				n = 0
			} else {
				b.WriteByte(' ')
				n++
			}
		}
		b.WriteString(word)
		n += len(word)
	}
	return b.String()
}
