package main

import (
	"encoding/json"
	"os"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/svcwatch/svcwatch/internal/redistest"
)

// TestBenchStorm runs the storm with 20 processes against its own
// redis-server, restarted empty in the middle, and checks that the report
// says every view converged with no false removal, and that nothing is left
// running.
func TestBenchStorm(t *testing.T) {
	redistest.Require(t) // the storm runs redis-server from PATH
	noEnvAuth(t)
	before := runtime.NumGoroutine()
	out, errOut, code := runCmd(t, "bench", "-storm", "20", "-storm-idle", "1s", "-storm-settle", "1s")
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	for _, want := range []string{
		`(?m)^  settings   library defaults \(-ttl not given\): ttl 10s`,
		`(?m)^  every view holds all 20 +\d[\d.]*(µs|ms|s) \(per view`,
		`(?m)^  every process registered again +\d[\d.]*(µs|ms|s) `,
		`(?m)^  every view equals Redis +\d[\d.]*(µs|ms|s) `,
		`(?m)^  false removals +0 `,
		`(?m)^ +then all 20 views still equal Redis$`,
		`(?m)^  full reads +\d+ \(Stats\(\)\.FullLoads\); re-registrations \d+$`,
		`(?m)^Stop: all 20 stopped`,
		`(?m)^Result: ok: every view converged, after the start and after the restart; false removals 0$`,
	} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("report does not match %s\n%s", want, out)
		}
	}
	for _, phase := range []string{"storm: idle window", "storm: restarting redis-server empty"} {
		if !strings.Contains(errOut, phase) {
			t.Errorf("no progress line %q on stderr:\n%s", phase, errOut)
		}
	}
	// The server is gone with its directory, and so are the watchers.
	if m := regexp.MustCompile(`--dir (\S+)`).FindStringSubmatch(out); m == nil {
		t.Errorf("no server directory in the report")
	} else if _, err := os.Stat(m[1]); !os.IsNotExist(err) {
		t.Errorf("server directory %s left behind (stat: %v)", m[1], err)
	}
	deadline := time.Now().Add(waitTimeout)
	for runtime.NumGoroutine() > before+2 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines left running, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestBenchStormJSON checks the machine-readable verdict, with -ttl given.
func TestBenchStormJSON(t *testing.T) {
	redistest.Require(t)
	noEnvAuth(t)
	out, errOut, code := runCmd(t, "-json", "bench", "-storm", "5", "-ttl", "2s", "-storm-idle", "0s", "-storm-settle", "500ms")
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	var rep stormReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !rep.Converged || rep.FalseRemovals != 0 || rep.Stopped != "" || rep.N != 5 || rep.TTLms != 2000 ||
		!strings.HasPrefix(rep.Settings, "-ttl 2s") || rep.Restart.Converge == nil || rep.Restart.Converge.ConvergedS < 0 ||
		rep.Start.Events.Adds != 5*4 || rep.Idle.NA == "" {
		t.Errorf("report %+v\n%s", rep, out)
	}
}

func TestBenchStormUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-addr", "127.0.0.1:1", "bench", "-storm", "10"}, "refuses -addr"},
		{[]string{"-sentinel-master", "m", "bench", "-storm", "10"}, "refuses -addr"},
		{[]string{"bench", "-storm-idle", "1s"}, "-storm-idle needs -storm N"},
		{[]string{"bench", "-storm", "10", "-watchers", "5"}, "-watchers does not apply to -storm"},
		{[]string{"bench", "-storm", "-1"}, "must not be negative"},
		{[]string{"bench", "-storm", "10", "-storm-parallel", "0"}, "-storm-parallel at least 1"},
		{[]string{"bench", "-storm", "10", "-ttl", "10ms"}, "-ttl must be at least 50ms"},
	} {
		out, errOut, code := runCmd(t, c.args...)
		if code != 2 || !strings.Contains(errOut, c.want) || out != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want 2 and %q", c.args, code, out, errOut, c.want)
		}
	}
	_, errOut, code := runCmd(t, "bench", "-h")
	if code != 0 || !strings.Contains(errOut, "-storm N") || !strings.Contains(errOut, "-storm-redis-server") {
		t.Errorf("bench -h: exit %d\n%s", code, errOut)
	}
}

// TestBenchStormNoServer: a binary that is not there stops the storm at its
// start, with exit 1 and the reason.
func TestBenchStormNoServer(t *testing.T) {
	out, errOut, code := runCmd(t, "bench", "-storm", "3", "-storm-redis-server", "/nonexistent/redis-server")
	if code != 1 || !strings.Contains(errOut, "stopped during starting redis-server") || !strings.Contains(out, "Result: STOPPED") {
		t.Errorf("exit %d\nstdout %s\nstderr %s", code, out, errOut)
	}
}
