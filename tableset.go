package svcwatch

// tableset.go: which tables a watcher watches and why: by name (self's table,
// WithTables, Watch) or because a watched prefix covers a table found in the
// store. A table stays watched while either reason holds. Pure bookkeeping
// under ServiceWatcher.mu; the backend does the store's part.

import (
	"fmt"
	"sort"
	"strings"
)

// tableSet is guarded by ServiceWatcher.mu.
type tableSet struct {
	named    map[string]bool // watched by name
	found    map[string]bool // found under a watched prefix (and still covered)
	prefixes map[string]bool // normalised: no trailing '/'
}

func newTableSet() tableSet {
	return tableSet{named: make(map[string]bool), found: make(map[string]bool), prefixes: make(map[string]bool)}
}

func (s *tableSet) watched(table string) bool { return s.named[table] || s.found[table] }

// covers reports whether a watched prefix covers table.
func (s *tableSet) covers(table string) bool {
	for p := range s.prefixes {
		if UnderPrefix(table, p) {
			return true
		}
	}
	return false
}

// sorted returns the watched tables in order.
func (s *tableSet) sorted() []string {
	out := make([]string, 0, len(s.named)+len(s.found))
	for t := range s.named {
		out = append(out, t)
	}
	for t := range s.found {
		if !s.named[t] {
			out = append(out, t)
		}
	}
	sort.Strings(out)
	return out
}

// UnderPrefix reports whether table lies under prefix by whole path segments:
// "mygame/prod" covers "mygame/prod" and "mygame/prod/20190510/game", not
// "mygame/production/game". A trailing '/' of prefix is ignored.
func UnderPrefix(table, prefix string) bool {
	prefix = strings.TrimRight(prefix, "/")
	if prefix == "" {
		return false
	}
	rest, ok := strings.CutPrefix(table, prefix)
	return ok && (rest == "" || rest[0] == '/')
}

// checkPrefix checks a prefix as WatchPrefix takes it and returns it without
// trailing slashes.
func checkPrefix(prefix string) (string, error) {
	if err := checkName("prefix", prefix, maxTableLen, true); err != nil {
		return "", err
	}
	p := strings.TrimRight(prefix, "/")
	if p == "" {
		return "", fmt.Errorf("%w: prefix %q has no path segment", ErrInvalid, prefix)
	}
	return p, nil
}
