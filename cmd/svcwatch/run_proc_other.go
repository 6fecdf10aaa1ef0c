//go:build !unix

package main

// run_proc_other.go: `svcwatch run` needs process groups and signals to
// supervise CMD, which it has on Unix only.

import (
	"errors"
	"os"
	"syscall"
)

const runSupported = false

var (
	runStopSignals    = []os.Signal{os.Interrupt}
	runForwardSignals []os.Signal
	runKillSignal     = os.Kill
)

func runSysProcAttr() *syscall.SysProcAttr     { return nil }
func signalGroup(pid int, sig os.Signal) error { return errors.New("not supported on this OS") }
func exitStatus(ps *os.ProcessState) int       { return ps.ExitCode() }
func signalStatus(sig os.Signal) int           { return 1 }
