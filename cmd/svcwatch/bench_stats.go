package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"sort"
	"sync"
	"time"
)

// tracker collects, for each expected event, the moment each of n receivers
// (watchers, subscribers, pollers) saw it. Receivers capture time.Now() before
// calling note, so waiting for the lock never counts as latency.
type tracker struct {
	n       int
	mu      sync.Mutex
	pending map[string]*arrival
}

// arrival is one expected event.
type arrival struct {
	key   string
	start time.Time // set by the caller: when the cause was sent
	at    []time.Time
	got   int
	done  chan struct{} // closed when all n saw it
}

func newTracker(n int) *tracker { return &tracker{n: n, pending: map[string]*arrival{}} }

// expect registers an event before it is caused, so that no receipt is lost.
func (t *tracker) expect(key string) *arrival {
	a := &arrival{key: key, at: make([]time.Time, t.n), done: make(chan struct{})}
	t.mu.Lock()
	t.pending[key] = a
	t.mu.Unlock()
	return a
}

// note records that receiver i saw key at time at; repeats and unexpected keys
// are ignored.
func (t *tracker) note(i int, key string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	a := t.pending[key]
	if a == nil || !a.at[i].IsZero() {
		return
	}
	a.at[i] = at
	a.got++
	if a.got == t.n {
		close(a.done)
	}
}

// wait waits until every receiver saw a, or timeout, and stops tracking it. It
// returns a's receipt times (zero where missed); the error is ctx's only.
func (t *tracker) wait(ctx context.Context, a *arrival, timeout time.Duration) ([]time.Time, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var err error
	select {
	case <-a.done:
	case <-timer.C:
	case <-ctx.Done():
		err = ctx.Err()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.pending, a.key)
	return append([]time.Time(nil), a.at...), err
}

// series accumulates the latencies of one measurement.
type series struct {
	each   []time.Duration // every receipt
	last   []time.Duration // per event: when the last receiver got it
	missed int             // receipts that never came
	events int
}

func (s *series) add(start time.Time, at []time.Time) {
	s.events++
	var last time.Duration
	complete := true
	for _, t := range at {
		if t.IsZero() {
			s.missed++
			complete = false
			continue
		}
		d := t.Sub(start)
		s.each = append(s.each, d)
		last = max(last, d)
	}
	if complete {
		s.last = append(s.last, last)
	}
}

// dist is a latency distribution as reported.
type dist struct {
	Samples int     `json:"samples"`
	Missed  int     `json:"missed,omitempty"` // receipts (or events) that never came
	P50ms   float64 `json:"p50_ms"`
	P99ms   float64 `json:"p99_ms"`
	MaxMs   float64 `json:"max_ms"`
}

func distOf(ds []time.Duration, missed int) dist {
	d := dist{Samples: len(ds), Missed: missed}
	if len(ds) == 0 {
		return d
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	d.P50ms = ms(percentile(s, 0.50))
	d.P99ms = ms(percentile(s, 0.99))
	d.MaxMs = ms(s[len(s)-1])
	return d
}

func (s *series) eachDist() dist { return distOf(s.each, s.missed) }
func (s *series) lastDist() dist { return distOf(s.last, s.events-len(s.last)) }

// percentile is the nearest-rank percentile of sorted samples.
func percentile(sorted []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func ms(d time.Duration) float64 { return math.Round(float64(d.Microseconds())) / 1000 }

// fmtMs prints milliseconds at a precision that suits their size.
func fmtMs(v float64) string {
	d := time.Duration(v * float64(time.Millisecond))
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", v)
	case d < time.Second:
		return fmt.Sprintf("%.1fms", v)
	default:
		return fmt.Sprintf("%.3fs", v/1000)
	}
}

// ratio prints a/b as "x2.3", or n/a.
func ratio(a, b float64) string {
	if a == 0 || b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("x%.1f", a/b)
}

// progress is the line on stderr that says where a long run is. On a terminal
// it is redrawn in place; elsewhere (logs, tests) only phase changes print.
type progress struct {
	w   io.Writer
	tty bool
}

func (p *progress) phase(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[Kbench: %s", msg)
	} else {
		fmt.Fprintf(p.w, "bench: %s\n", msg)
	}
}

func (p *progress) step(format string, args ...any) {
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[Kbench: %s", fmt.Sprintf(format, args...))
	}
}

func (p *progress) done() {
	if p.tty {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
