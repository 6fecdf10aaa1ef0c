package main

// log.go: the story's output, one line per event: "+0.41s  gate-1    text", with
// the time since the start of the run (the format of examples/gamecluster).

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// printer writes the story. Lines from concurrent goroutines are serialised, and
// their timestamps taken in the order they are printed.
type printer struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
	quiet bool // events are no longer printed (the final shutdown)
}

func newPrinter(w io.Writer) *printer { return &printer{w: w, start: time.Now()} }

// line prints one line for name, even when muted.
func (pr *printer) line(name, format string, args ...any) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.printLocked(name, fmt.Sprintf(format, args...))
}

// event prints one line for name unless events are muted.
func (pr *printer) event(name, msg string) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if !pr.quiet {
		pr.printLocked(name, msg)
	}
}

// story prints a line of the narrator (run).
func (pr *printer) story(format string, args ...any) { pr.line("main", format, args...) }

// mute stops printing events; the narrator's lines still print.
func (pr *printer) mute() {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.quiet = true
}

func (pr *printer) printLocked(name, msg string) {
	ts := fmt.Sprintf("+%.2fs", time.Since(pr.start).Seconds())
	fmt.Fprintf(pr.w, "%-7s %-9s %s\n", ts, name, msg)
}

// libLog is a slog.Handler that prints the library's warnings and errors as
// lines of the process that logged them; the tests fail on "[error]".
type libLog struct {
	say   func(msg string)
	attrs string
}

func newLibLogger(say func(msg string)) *slog.Logger { return slog.New(&libLog{say: say}) }

func (h *libLog) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (h *libLog) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "[%s] %s%s", strings.ToLower(r.Level.String()), r.Message, h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	h.say(b.String())
	return nil
}

func (h *libLog) WithAttrs(attrs []slog.Attr) slog.Handler {
	s := h.attrs
	for _, a := range attrs {
		s += fmt.Sprintf(" %s=%v", a.Key, a.Value)
	}
	return &libLog{say: h.say, attrs: s}
}

func (h *libLog) WithGroup(string) slog.Handler { return h }
