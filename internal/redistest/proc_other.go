//go:build !unix

package redistest

import (
	"errors"
	"syscall"
)

// procSupported is false: Require skips (or fails) on this OS.
const procSupported = false

const (
	sigKill = syscall.Signal(9)
	sigStop = syscall.Signal(19)
	sigCont = syscall.Signal(18)
)

func sysProcAttr() *syscall.SysProcAttr { return nil }

func signalGroup(pid int, sig syscall.Signal) error {
	return errors.New("redistest: signals are not supported on this OS")
}

func waitStopped(pid int) error { return nil }
