package svcwatch

// logonce.go: remembering what was logged, so that unreadable data and
// refused calls are logged once, not at every read (Backend.LogOnce). Safe for
// concurrent use.

import "sync"

// logOnceMax bounds what a watcher remembers having logged.
const logOnceMax = 1024

// onceSet remembers keys up to logOnceMax of them; when full it forgets them
// all, so that a flood of distinct junk costs bounded memory (and is logged
// again at most once per logOnceMax items).
type onceSet struct {
	mu   sync.Mutex
	seen map[string]struct{}
}

// first reports whether key was not seen before, and remembers it.
func (s *onceSet) first(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.seen[key]; ok {
		return false
	}
	if s.seen == nil || len(s.seen) >= logOnceMax {
		s.seen = make(map[string]struct{})
	}
	s.seen[key] = struct{}{}
	return true
}

func (s *onceSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen)
}
