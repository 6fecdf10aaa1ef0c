//go:build unix

package main

// run_proc_unix.go: what `svcwatch run` asks of the OS to supervise CMD: its
// own process group, the signals it forwards, and how CMD ended.

import (
	"errors"
	"os"
	"syscall"
)

const runSupported = true

// runStopSignals drain the instance and then stop CMD; runForwardSignals are
// passed on to CMD as they are (a reload, a thread dump).
var (
	runStopSignals    = []os.Signal{syscall.SIGINT, syscall.SIGTERM}
	runForwardSignals = []os.Signal{syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}
)

// runKillSignal is what CMD gets when -grace runs out.
var runKillSignal os.Signal = syscall.SIGKILL

// runSysProcAttr puts CMD in a process group of its own, so that a signal
// sent by the sidecar reaches whatever CMD started too (a shell script's
// server), and a terminal's Ctrl-C reaches CMD once, through the sidecar,
// rather than twice. On Linux the kernel also kills CMD if the sidecar dies
// (setPdeathsig).
func runSysProcAttr() *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true}
	setPdeathsig(a)
	return a
}

// signalGroup sends sig to CMD's process group; a group already gone is no
// error.
func signalGroup(pid int, sig os.Signal) error {
	s, ok := sig.(syscall.Signal)
	if !ok {
		return errors.New("not a Unix signal")
	}
	if err := syscall.Kill(-pid, s); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}

// exitStatus is a shell's status of an ended process: its exit code, or
// 128+N when signal N killed it.
func exitStatus(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// signalStatus is the status of a process killed by sig: 128+N.
func signalStatus(sig os.Signal) int {
	if s, ok := sig.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return 1
}
