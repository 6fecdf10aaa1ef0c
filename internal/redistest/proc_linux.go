//go:build linux

package redistest

import (
	"fmt"
	"os"
	"strings"
	"syscall"
)

const procSupported = true

const (
	sigKill = syscall.SIGKILL
	sigStop = syscall.SIGSTOP
	sigCont = syscall.SIGCONT
)

// sysProcAttr puts the server in its own process group, so signals sent to
// the test's group (Ctrl-C) do not reach it and ours reach only it and its
// children, and asks the kernel to SIGKILL it should the test binary die
// without running cleanups (e.g. on a -timeout panic). Pdeathsig fires when
// the OS thread that started the process exits; the Go runtime only ends
// threads of goroutines that exit while holding runtime.LockOSThread.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// signalGroup sends sig to the process group led by pid (the server and
// any child it forked).
func signalGroup(pid int, sig syscall.Signal) error {
	return syscall.Kill(-pid, sig)
}

// waitStopped polls /proc until pid is in the stopped state.
func waitStopped(pid int) error {
	return poll(waitTimeout, func() error {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return err
		}
		// Format: pid (comm) state ...; comm may contain spaces.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || i+2 >= len(s) {
			return fmt.Errorf("unexpected /proc stat %q", s)
		}
		if st := s[i+2]; st != 'T' && st != 't' {
			return fmt.Errorf("process %d in state %c, not stopped", pid, st)
		}
		return nil
	})
}
