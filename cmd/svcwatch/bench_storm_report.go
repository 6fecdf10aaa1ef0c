package main

// bench_storm_report.go: what `bench -storm` measured, and its printout.

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// stormReport is everything the storm measured; -json prints it as is.
// Seconds are wall-clock seconds unless the name says CPU.
type stormReport struct {
	N            int     `json:"n"`
	Server       string  `json:"server"`
	Addr         string  `json:"addr"`
	ServerCmd    string  `json:"server_cmd"`
	Table        string  `json:"table"`
	Prefix       string  `json:"prefix"`
	Settings     string  `json:"settings"`
	TTLms        float64 `json:"ttl_ms"`
	KeepAliveMs  float64 `json:"keepalive_ms"`
	ScanMs       float64 `json:"scan_ms"`
	Parallel     int     `json:"parallel"`
	GOMAXPROCS   int     `json:"gomaxprocs"`
	MaxClients   int     `json:"maxclients"`
	MemBudgetMiB uint64  `json:"mem_budget_mib,omitempty"` // 0: no guard
	NoFile       struct {
		Before uint64 `json:"before"`
		After  uint64 `json:"after"`
		Hard   uint64 `json:"hard"`
		Need   uint64 `json:"need"`
	} `json:"rlimit_nofile"`

	Start   stormStartReport   `json:"start"`
	Idle    stormIdleReport    `json:"idle"`
	Restart stormRestartReport `json:"restart"`
	StopS   float64            `json:"stop_s"`
	Logs    []logLine          `json:"library_logs"`

	// The verdict.
	FalseRemovals    int64    `json:"false_removals"`    // over the whole run until the final stop
	RemovalWatchers  int      `json:"removal_watchers"`  // watchers told at least one
	RemovedProcesses int      `json:"removed_processes"` // distinct processes falsely removed
	RemovalSamples   []string `json:"removal_samples,omitempty"`
	Converged        bool     `json:"converged"` // every view equal to Redis after the start, after the restart and after settling
	Stopped          string   `json:"stopped,omitempty"`

	phase string // what ran last: where a run that stops stopped
}

type stormStartReport struct {
	began      time.Time
	Started    int             `json:"started"`
	Seconds    float64         `json:"seconds"`
	StartCall  dist            `json:"start_call"` // each process's Start()
	Converge   *convergeReport `json:"converge"`   // times from the first Start
	Events     eventReport     `json:"events"`
	RedisCPUS  float64         `json:"redis_cpu_s"` // since the server started
	GoMemMiB   uint64          `json:"go_mem_mib"`
	Goroutines int             `json:"goroutines"`
}

type stormIdleReport struct {
	NA                      string        `json:"na,omitempty"`
	WindowS                 float64       `json:"window_s"`
	RedisCPUS               float64       `json:"redis_cpu_s"`
	RedisCPUPerSecPer1000   float64       `json:"redis_cpu_s_per_s_per_1000_procs"`
	BaselineCPUPerSec       float64       `json:"empty_server_cpu_s_per_s"` // measured before the start
	NetCPUPerSecPer1000     float64       `json:"net_redis_cpu_s_per_s_per_1000_procs"`
	CommandsPerSec          float64       `json:"commands_per_s"`
	CommandsPerSecPerProc   float64       `json:"commands_per_s_per_proc"`
	RoundTripsPerSecPerProc float64       `json:"round_trips_per_s_per_proc"`
	RoundTrips              []idleCommand `json:"round_trips"`
	ProcessCPUPerSec        float64       `json:"bench_process_cpu_s_per_s"`
	OthersCPUPerSec         float64       `json:"other_processes_cpu_s_per_s"` // the rest of the machine; -1 unknown
	Events                  eventReport   `json:"events"`
}

type stormRestartReport struct {
	ShutdownMs       float64         `json:"shutdown_ms"`    // SHUTDOWN NOSAVE sent -> the old server exited
	SpawnToUpMs      float64         `json:"spawn_to_up_ms"` // the new server started -> it answered
	Converge         *convergeReport `json:"converge"`       // times from the new server's start
	Events           eventReport     `json:"events"`         // restart -> convergence
	FalseRemovals    int64           `json:"false_removals"`
	RedisCPUS        float64         `json:"redis_cpu_s"` // restart -> convergence
	Commands         int64           `json:"commands"`
	Publishes        int64           `json:"publishes"`
	NetOutputMiB     float64         `json:"net_output_mib"`
	ProcessCPUPerSec float64         `json:"bench_process_cpu_s_per_s"`   // restart -> convergence
	OthersCPUPerSec  float64         `json:"other_processes_cpu_s_per_s"` // the rest of the machine; -1 unknown
	ListenDrops      int64           `json:"listen_drops"`                // machine-wide TcpExt ListenDrops, restart -> convergence; -1 unknown
	ObserverMs       float64         `json:"bench_reads_ms"`              // server time of the bench's own reads (estimated), included above
	Settle           struct {
		WindowS     float64     `json:"window_s"`
		Events      eventReport `json:"events"`
		RedisCPUS   float64     `json:"redis_cpu_s"`
		ViewsDiffer int         `json:"views_differ"` // -1: Redis itself did not hold all N
	} `json:"after_convergence"`
}

type convergeReport struct {
	RegisteredS       float64 `json:"registered_s"` // HLEN = N; -1: never
	Registered        int64   `json:"registered"`   // the last HLEN
	Registered50S     float64 `json:"registered_50pct_s"`
	Registered90S     float64 `json:"registered_90pct_s"`
	ConvergedS        float64 `json:"converged_s"`   // every view = the live ids in Redis; -1: never
	PerView           dist    `json:"per_view"`      // when each view was first seen equal, checked every 100ms
	PassMs            float64 `json:"check_pass_ms"` // the longest pass of the bench over the views (its resolution)
	Slowest           string  `json:"slowest,omitempty"`
	FirstCheckDiffer  int     `json:"first_check_differ"` // views that differed at the first check once all were registered
	FirstCheckExample string  `json:"first_check_example,omitempty"`
	ViewsNotConverged int     `json:"views_not_converged,omitempty"`
	Example           string  `json:"example,omitempty"`
}

type eventReport struct {
	Adds            int64  `json:"on_add"`
	Updates         int64  `json:"on_update"`
	Removes         int64  `json:"on_remove"`
	FullLoads       uint64 `json:"full_reads"`
	Reregistrations uint64 `json:"reregistrations"`
}

func (e eventReport) total() int64 { return e.Adds + e.Updates + e.Removes }

func (e eventReport) String() string {
	return fmt.Sprintf("%d OnAdd, %d OnUpdate, %d OnRemove", e.Adds, e.Updates, e.Removes)
}

type logLine struct {
	Level   string `json:"level"`
	Message string `json:"message"`
	Count   int64  `json:"count"`
}

// verdict fills Converged.
func (r *stormReport) verdict() {
	r.Converged = r.Stopped == "" &&
		r.Start.Converge != nil && r.Start.Converge.ConvergedS >= 0 &&
		r.Restart.Converge != nil && r.Restart.Converge.ConvergedS >= 0 &&
		r.Restart.Settle.ViewsDiffer == 0
}

func secs(v float64) string {
	if v < 0 {
		return "never"
	}
	return fmtMs(v * 1000)
}

func distLine(d dist) string {
	if d.Samples == 0 {
		return "no samples"
	}
	return fmt.Sprintf("p50 %s  p99 %s  max %s", fmtMs(d.P50ms), fmtMs(d.P99ms), fmtMs(d.MaxMs))
}

// others describes the CPU the rest of the machine used meanwhile.
func others(v float64) string {
	if v < 0 {
		return ""
	}
	return fmt.Sprintf("; the machine's other processes %.2f CPU s/s", v)
}

// firstCheck says what the first check of the views found, when some lagged.
func firstCheck(more func(string, ...any), c *convergeReport) {
	if c.FirstCheckDiffer == 0 {
		return
	}
	slowest := ""
	if c.Slowest != "" {
		slowest = "; the slowest was " + c.Slowest
	}
	more("at the first check, %d views differed, first %s%s", c.FirstCheckDiffer, c.FirstCheckExample, slowest)
}

// print writes the report for people.
func (r *stormReport) print(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	// row prints one measure; more prints a continuation under its value.
	row := func(label, format string, args ...any) {
		fmt.Fprintf(w, "  %-31s %s\n", label, fmt.Sprintf(format, args...))
	}
	more := func(format string, args ...any) { fmt.Fprintf(w, "  %-31s %s\n", "", fmt.Sprintf(format, args...)) }

	p("svcwatch bench -storm %d", r.N)
	if r.Addr != "" {
		p("  server     %s, run by the bench on %s and restarted empty below:", r.Server, r.Addr)
		p("             %s", r.ServerCmd)
	}
	p("  table      %s (prefix %s): every process registers in it and watches it (full mesh)", r.Table, r.Prefix)
	p("  processes  %d in this one OS process, each a RedisServiceWatcher on a go-redis client of its own", r.N)
	p("             (PoolSize 2, MinIdleConns 0, ContextTimeoutEnabled), plus the client's pub/sub connection")
	p("  settings   %s: ttl %v, keepalive %v, scan %v", r.Settings, msDur(r.TTLms), msDur(r.KeepAliveMs), msDur(r.ScanMs))
	guard := "no memory guard (MemAvailable unknown)"
	if r.MemBudgetMiB > 0 {
		guard = fmt.Sprintf("stops at 85%% of %d MiB", r.MemBudgetMiB)
	}
	p("  limits     RLIMIT_NOFILE %d -> %d (hard %d; needs about %d); redis maxclients %d; memory: %s",
		r.NoFile.Before, r.NoFile.After, r.NoFile.Hard, r.NoFile.Need, r.MaxClients, guard)
	p("  machine    GOMAXPROCS %d, shared by the %d processes, the bench and Redis", r.GOMAXPROCS, r.N)
	p("")

	if st := r.Start; st.Started > 0 || st.Seconds > 0 {
		p("Start: %d processes, %d at a time; times from the first Start", r.N, r.Parallel)
		row("all started", "%s (%d started; each Start() %s)", secs(st.Seconds), st.Started, distLine(st.StartCall))
		if c := st.Converge; c != nil {
			row(fmt.Sprintf("all registered (HLEN = %d)", r.N), "%s", secs(c.RegisteredS))
			row(fmt.Sprintf("every view holds all %d", r.N), "%s (per view: %s;", secs(c.ConvergedS), distLine(c.PerView))
			more("views checked every 100ms, a pass over them took up to %s)", fmtMs(c.PassMs))
			firstCheck(more, c)
			if c.Example != "" {
				row("not converged", "%d views, %s", c.ViewsNotConverged, c.Example)
			}
			if c.ConvergedS >= 0 {
				row("events", "%s; %d full reads", st.Events, st.Events.FullLoads)
				row("Redis CPU", "%.3fs since it started", st.RedisCPUS)
				row("this process", "%d MiB from the OS, %d goroutines", st.GoMemMiB, st.Goroutines)
			}
		}
		p("")
	}

	if id := r.Idle; id.NA != "" {
		p("Idle: %s", id.NA)
		p("")
	} else if id.WindowS > 0 && id.RedisCPUS+id.CommandsPerSec > 0 {
		p("Idle: %.1fs, all %d registered and watching, nothing changing (INFO deltas, the whole server)", id.WindowS, r.N)
		row("Redis CPU", "%.4f s/s per 1,000 idle processes = %.2f%% of one core (%.3fs in the window; INFO cpu)",
			id.RedisCPUPerSecPer1000, id.RedisCPUPerSecPer1000*100, id.RedisCPUS)
		if id.BaselineCPUPerSec > 0 {
			more("the empty server alone: %.4f s/s before the start; net of it, %.4f s/s per 1,000 (%.2f%% of a core)",
				id.BaselineCPUPerSec, id.NetCPUPerSecPer1000, id.NetCPUPerSecPer1000*100)
		}
		row("commands", "%.0f/s = %.3f per process per second (INFO stats; commands inside scripts included)", id.CommandsPerSec, id.CommandsPerSecPerProc)
		var rts []string
		for _, c := range id.RoundTrips {
			rts = append(rts, fmt.Sprintf("%s %.3f", strings.ToUpper(c.Command), c.PerProcPerSec))
		}
		row("round trips", "%.3f per process per second (INFO commandstats: %s)", id.RoundTripsPerSecPerProc, strings.Join(rts, ", "))
		row("events", "%s, %d full reads (nothing changed: 0 expected)", id.Events, id.Events.FullLoads)
		row("this process", "%.2f CPU s/s for the %d watchers%s", id.ProcessCPUPerSec, r.N, others(id.OthersCPUPerSec))
		p("")
	}

	if rs := r.Restart; rs.Converge != nil {
		p("Restart: SHUTDOWN NOSAVE, then the same binary on the same port, empty; times from the new server's start")
		row("Redis down", "SHUTDOWN NOSAVE -> exited %s; new server started -> answering %s", fmtMs(rs.ShutdownMs), fmtMs(rs.SpawnToUpMs))
		c := rs.Converge
		row("every process registered again", "%s (half at %s, 90%% at %s; HLEN of the record hash = %d)",
			secs(c.RegisteredS), secs(c.Registered50S), secs(c.Registered90S), r.N)
		row("every view equals Redis", "%s (per view: %s;", secs(c.ConvergedS), distLine(c.PerView))
		more("views checked every 100ms against the live ids in Redis, a pass took up to %s)", fmtMs(c.PassMs))
		firstCheck(more, c)
		if c.Example != "" {
			row("not converged", "%d views, %s", c.ViewsNotConverged, c.Example)
		}
		row("false removals", "%d (OnRemove of processes that never died, from the restart to the end of the window below)", rs.FalseRemovals)
		row("events delivered", "%s = %d handler calls, until convergence", rs.Events, rs.Events.total())
		row("full reads", "%d (Stats().FullLoads); re-registrations %d", rs.Events.FullLoads, rs.Events.Reregistrations)
		if c.ConvergedS >= 0 {
			row("Redis CPU", "%.3fs from the restart to convergence (INFO cpu of the new server)", rs.RedisCPUS)
			more("%d commands (inside scripts included), %d PUBLISH, %.1f MiB sent;", rs.Commands, rs.Publishes, rs.NetOutputMiB)
			more("of which the bench's own HLEN, live-set and INFO reads: about %s of command time", fmtMs(rs.ObserverMs))
			row("this process", "%.2f CPU s/s from the restart to convergence (GOMAXPROCS %d)%s", rs.ProcessCPUPerSec, r.GOMAXPROCS, others(rs.OthersCPUPerSec))
			if rs.ListenDrops >= 0 {
				row("connects dropped", "%d at a full listen queue (TcpExt ListenDrops, machine-wide; SYN retried after 1s, 3s, 7s...)", rs.ListenDrops)
			}
			if rs.Settle.WindowS > 0 {
				differ := fmt.Sprintf("then all %d views still equal Redis", r.N)
				switch {
				case rs.Settle.ViewsDiffer < 0:
					differ = "then Redis no longer held all of them live"
				case rs.Settle.ViewsDiffer > 0:
					differ = fmt.Sprintf("then %d views differ from Redis", rs.Settle.ViewsDiffer)
				}
				row("after convergence", "%.1fs more: %s, %d full reads, Redis CPU %.3fs;", rs.Settle.WindowS, rs.Settle.Events, rs.Settle.Events.FullLoads, rs.Settle.RedisCPUS)
				more("%s", differ)
			}
		}
		p("")
	}
	if len(r.RemovalSamples) > 0 {
		p("False removals: %d over the whole run, told to %d of the %d watchers, about %d distinct processes; the first of each of the first %d:",
			r.FalseRemovals, r.RemovalWatchers, r.N, r.RemovedProcesses, len(r.RemovalSamples))
		for _, s := range r.RemovalSamples {
			p("  %s", s)
		}
		p("")
	}
	if r.StopS > 0 {
		p("Stop: all %d stopped (each deregisters) in %s", r.N, secs(r.StopS))
		p("")
	}
	if len(r.Logs) > 0 {
		p("Library log records, all processes together (counted, not printed):")
		for _, l := range r.Logs {
			p("  %7d  %-5s  %s", l.Count, l.Level, l.Message)
		}
		p("")
	}
	switch {
	case r.Stopped != "":
		p("Result: STOPPED %s", strings.ReplaceAll(r.Stopped, "\n", "\n  "))
	case r.Converged && r.FalseRemovals == 0:
		p("Result: ok: every view converged, after the start and after the restart; false removals 0")
	case r.Converged:
		p("Result: every view converged, after the start and after the restart; but FALSE REMOVALS %d", r.FalseRemovals)
	default:
		p("Result: NOT CONVERGED after settling: %d views differ; false removals %d", r.Restart.Settle.ViewsDiffer, r.FalseRemovals)
	}
}
