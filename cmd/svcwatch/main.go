// Command svcwatch inspects and benchmarks svcwatch service discovery on
// Redis, and registers processes that link no client.
//
//	svcwatch [global flags] tables              the catalog's tables, how long empty ones have been empty
//	svcwatch [global flags] ls [-wide] TABLE    the instances of one table
//	svcwatch [global flags] watch [-prefix P]... [TABLE...]  discovery events until interrupted
//	svcwatch [global flags] pick TABLE KEY...   the instance that owns each key (Pick; -n N: PickN)
//	svcwatch [global flags] bench [flags]       latency, crash detection and idle cost
//	svcwatch bench -storm N                     N processes in a full mesh through an empty Redis restart
//	svcwatch [global flags] run [flags] -- CMD [ARGS]  the sidecar: CMD registered, discovery over local HTTP
//
// Run "svcwatch -h" for the flags. Exit status: 0 on success, 1 on a runtime
// error (Redis unreachable, authentication, missing table), 2 on bad usage;
// run exits with CMD's status.
//
// The command line is parsed with the standard library's flag package, one
// FlagSet per subcommand: four subcommands with a few flags each do not justify
// a CLI framework, which would become a dependency of every module that
// requires svcwatch.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// One context for every command: watch runs until it ends, bench cleans up
	// its keys when it ends early.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
