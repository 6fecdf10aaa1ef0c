package svcwatch

import (
	"regexp"
	"runtime"
	"testing"
)

// TestGoroutineIDStackFormat pins the stack header goroutineID parses: if a Go
// release changes it, this fails instead of handlers' Stop silently waiting.
func TestGoroutineIDStackFormat(t *testing.T) {
	var buf [64]byte
	head := string(buf[:runtime.Stack(buf[:], false)])
	if !regexp.MustCompile(`^goroutine [1-9][0-9]* \[`).MatchString(head) {
		t.Fatalf("stack header changed: %q", head)
	}
	id, ok := goroutineID()
	if !ok || id <= 0 {
		t.Fatalf("goroutineID() = %d, %v", id, ok)
	}
	if again, _ := goroutineID(); again != id {
		t.Errorf("same goroutine, two ids: %d then %d", id, again)
	}
	other := make(chan int64)
	go func() { o, _ := goroutineID(); other <- o }()
	if o := <-other; o == id || o <= 0 {
		t.Errorf("another goroutine got id %d (this one %d)", o, id)
	}
}
