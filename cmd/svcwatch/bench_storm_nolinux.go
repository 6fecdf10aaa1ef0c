//go:build !linux

package main

import (
	"syscall"
	"time"
)

func setPdeathsig(*syscall.SysProcAttr) {}

// memAvailable is unknown off Linux: the storm's memory guard is off.
func memAvailable() uint64 { return 0 }

func listenDrops() int64 { return -1 }

func machineBusy() time.Duration { return -1 }
