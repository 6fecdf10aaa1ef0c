//go:build unix

package main

// bench_storm_unix.go: what the storm asks of the OS on Unix: the file
// descriptor limit, this process's CPU time, and the kill of the redis-server
// child's process group (run_proc_unix.go's runSysProcAttr makes the group).

import (
	"os"
	"syscall"
	"time"
)

const stormSupported = true

// raiseNoFile raises this process's RLIMIT_NOFILE soft limit to the hard
// limit. It returns the soft limit before and after, and the hard limit.
func raiseNoFile() (before, after, hard uint64, err error) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, 0, 0, err
	}
	before, hard = uint64(r.Cur), uint64(r.Max)
	if r.Cur < r.Max {
		r.Cur = r.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
			return before, before, hard, err
		}
	}
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return before, before, hard, err
	}
	return before, uint64(r.Cur), hard, nil
}

// processCPU is the CPU time (user + system) this process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// killGroup SIGKILLs the child's process group (redis-server and anything
// it forked).
func killGroup(p *os.Process) error { return syscall.Kill(-p.Pid, syscall.SIGKILL) }
