package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// command is one subcommand.
type command struct {
	name     string
	args     string // synopsis of its arguments
	summary  string
	setFlags func(fs *flag.FlagSet) // nil: no flags of its own
	run      func(ctx context.Context, g *globalOpts, fs *flag.FlagSet, out, errOut io.Writer) error
}

func commands() []*command {
	return []*command{tablesCommand(), lsCommand(), watchCommand(), pickCommand(), benchCommand(), runCommand()}
}

// usageError is bad usage: exit status 2, with the usage on stderr.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// exitStatusError makes the command exit with this status, saying nothing
// (run passes on its child's status this way).
type exitStatusError int

func (e exitStatusError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// run is the whole command without the process around it, so that tests call
// it directly. It returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	g := &globalOpts{}
	fs := flag.NewFlagSet("svcwatch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	g.register(fs)
	fs.Usage = func() { mainUsage(stderr, fs) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2 // flag has printed the error and the usage
	}
	if err := g.finish(fs); err != nil {
		fmt.Fprintf(stderr, "svcwatch: %v\n", err)
		mainUsage(stderr, fs)
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "svcwatch: no command given")
		mainUsage(stderr, fs)
		return 2
	}
	name := fs.Arg(0)
	var cmd *command
	for _, c := range commands() {
		if c.name == name {
			cmd = c
		}
	}
	if cmd == nil {
		fmt.Fprintf(stderr, "svcwatch: unknown command %q\n", name)
		mainUsage(stderr, fs)
		return 2
	}

	cfs := flag.NewFlagSet("svcwatch "+cmd.name, flag.ContinueOnError)
	cfs.SetOutput(stderr)
	if cmd.setFlags != nil {
		cmd.setFlags(cfs)
	}
	cfs.Usage = func() { commandUsage(stderr, cmd, cfs) }
	if err := cfs.Parse(fs.Args()[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	err := cmd.run(ctx, g, cfs, stdout, stderr)
	var ue usageError
	var es exitStatusError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &es):
		return int(es)
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "svcwatch %s: %v\n", cmd.name, err)
		commandUsage(stderr, cmd, cfs)
		return 2
	default:
		msg := err.Error()
		if !strings.HasPrefix(msg, "svcwatch: ") { // library errors carry it already
			msg = "svcwatch: " + msg
		}
		fmt.Fprintln(stderr, msg)
		return 1
	}
}

func mainUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, `Usage: svcwatch [flags] <command> [command flags] [args]

Inspect and benchmark svcwatch service discovery on Redis.

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-22s %s\n", strings.TrimSpace(c.name+" "+c.args), c.summary)
	}
	fmt.Fprintf(w, "\nFlags (before the command):\n")
	fs.PrintDefaults()
	fmt.Fprintf(w, "\nRun 'svcwatch <command> -h' for a command's flags. Exit status: 0 ok, 1 error, 2 bad usage.\n")
}

func commandUsage(w io.Writer, c *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: svcwatch [global flags] %s\n\n%s\n", strings.TrimSpace(c.name+" "+c.args), c.summary)
	hasFlags := false
	fs.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		fmt.Fprintf(w, "\nFlags:\n")
		fs.PrintDefaults()
	}
	fmt.Fprintf(w, "\nRun 'svcwatch -h' for the global flags (address, authentication, prefix, -json).\n")
}

// isTerminal reports whether w is a terminal, where progress lines may be
// redrawn in place.
func isTerminal(w io.Writer) bool {
	if l, ok := w.(*lockedWriter); ok {
		w = l.w
	}
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
