//go:build !unix

package main

import (
	"errors"
	"os"
	"time"
)

// The storm runs a redis-server child and raises the file descriptor limit,
// which it does on Unix only.
const stormSupported = false

func raiseNoFile() (before, after, hard uint64, err error) {
	return 0, 0, 0, errors.New("not supported on this OS")
}
func processCPU() time.Duration     { return 0 }
func killGroup(p *os.Process) error { return p.Kill() }
