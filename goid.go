package svcwatch

// goid.go: which goroutine is this? Used only so that a handler (or another
// callback on the event goroutine) can call Stop and Watch on its own watcher
// without waiting for itself.

import (
	"bytes"
	"runtime"
	"strconv"
)

// goroutineID parses the current goroutine's number from the header of its
// stack, "goroutine 17 [running]:". ok is false if the runtime ever prints
// another format; goid_test.go pins the format this relies on.
func goroutineID() (id int64, ok bool) {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b, found := bytes.CutPrefix(b, []byte("goroutine "))
	if !found {
		return 0, false
	}
	if i := bytes.IndexByte(b, ' '); i > 0 {
		b = b[:i]
	}
	id, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil || id <= 0 {
		return 0, false
	}
	return id, true
}
