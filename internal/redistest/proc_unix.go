//go:build unix && !linux

package redistest

import "syscall"

const procSupported = true

const (
	sigKill = syscall.SIGKILL
	sigStop = syscall.SIGSTOP
	sigCont = syscall.SIGCONT
)

// sysProcAttr puts the server in its own process group, so signals sent to
// the test's group (Ctrl-C) do not reach it and ours reach only it and its
// children.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// signalGroup sends sig to the process group led by pid (the server and
// any child it forked).
func signalGroup(pid int, sig syscall.Signal) error {
	return syscall.Kill(-pid, sig)
}

// waitStopped is a no-op where there is no portable way to observe it.
func waitStopped(pid int) error { return nil }
