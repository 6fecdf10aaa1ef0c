package svcwatch

// validate.go: the checks of names, Descs and clients that keep bad input out of
// the key layout. Pure functions, called by validate() and by the methods that
// take an argument (Watch, SetDesc).

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
)

// Size limits of the names that go into Redis keys and records.
const (
	maxTableLen = 256
	maxIDLen    = 128
	maxNameLen  = 256
)

// checkName rejects what would break the key layout: the hash-tag braces, white
// space, control characters, invalid UTF-8 and, where slash is false, '/'.
func checkName(what, s string, max int, slash bool) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: %s is empty", ErrInvalid, what)
	case len(s) > max:
		return fmt.Errorf("%w: %s is %d bytes, over the limit of %d", ErrInvalid, what, len(s), max)
	case !utf8.ValidString(s):
		return fmt.Errorf("%w: %s %q is not valid UTF-8", ErrInvalid, what, s)
	}
	for _, r := range s {
		switch {
		case r == '{' || r == '}':
			return fmt.Errorf("%w: %s %q contains %q, which would break the Redis hash tag", ErrInvalid, what, s, r)
		case unicode.IsSpace(r) || unicode.IsControl(r):
			return fmt.Errorf("%w: %s %q contains white space or a control character", ErrInvalid, what, s)
		case r == '/' && !slash:
			return fmt.Errorf("%w: %s %q contains '/'", ErrInvalid, what, s)
		}
	}
	return nil
}

func checkTable(table string) error { return checkName("table", table, maxTableLen, true) }

// checkSelf validates the instance a watcher registers (or, watch-only, its table).
func checkSelf(self Instance, watchOnly bool, maxDesc int) error {
	if watchOnly && self.Table == "" {
		return nil // watches only what it is told to
	}
	if err := checkTable(self.Table); err != nil {
		return err
	}
	if watchOnly {
		return nil
	}
	if err := checkName("id", self.ID, maxIDLen, false); err != nil {
		return err
	}
	if err := checkName("name", self.Name, maxNameLen, true); err != nil {
		return err
	}
	if err := checkState(self.State); err != nil {
		return err
	}
	if err := checkDesc(self.Desc, maxDesc); err != nil {
		return err
	}
	return checkMeta(self.Meta, self.Desc, maxDesc)
}

func checkDesc(desc string, max int) error {
	if len(desc) > max {
		return fmt.Errorf("%w: desc is %d bytes, over the limit of %d", ErrInvalid, len(desc), max)
	}
	if !utf8.ValidString(desc) {
		return fmt.Errorf("%w: desc is not valid UTF-8", ErrInvalid)
	}
	return nil
}

// checkClient refuses a nil client (also a typed nil) and *redis.Ring, whose
// pub/sub is routed by the first channel only, so one connection could not carry
// the channels of tables that hash to different shards.
func checkClient(client redis.UniversalClient) error {
	if client == nil {
		return fmt.Errorf("%w: nil redis client", ErrInvalid)
	}
	if v := reflect.ValueOf(client); v.Kind() == reflect.Pointer && v.IsNil() {
		return fmt.Errorf("%w: nil redis client (%T)", ErrInvalid, client)
	}
	if _, ok := client.(*redis.Ring); ok {
		return fmt.Errorf("%w: *redis.Ring is not supported: its pub/sub routes every channel by the first one; use a Client, a FailoverClient or a ClusterClient", ErrInvalid)
	}
	return nil
}

// maxMetaKeys bounds the attributes of one instance.
const maxMetaKeys = 64

// checkMeta checks Meta as SetMeta takes it: at most 64 keys, each non-empty,
// printable UTF-8 without control characters or white space, values valid
// UTF-8, a "weight" that is a non-negative integer, and Desc and Meta together
// within the size limit.
func checkMeta(meta map[string]string, desc string, max int) error {
	if len(meta) > maxMetaKeys {
		return fmt.Errorf("%w: meta has %d keys, over the limit of %d", ErrInvalid, len(meta), maxMetaKeys)
	}
	size := len(desc)
	for k, v := range meta {
		size += len(k) + len(v)
		if k == "" {
			return fmt.Errorf("%w: meta has an empty key", ErrInvalid)
		}
		if !utf8.ValidString(k) || strings.IndexFunc(k, func(r rune) bool { return unicode.IsControl(r) || unicode.IsSpace(r) }) >= 0 {
			return fmt.Errorf("%w: meta key %q is not printable", ErrInvalid, k)
		}
		if !utf8.ValidString(v) {
			return fmt.Errorf("%w: meta value of %q is not valid UTF-8", ErrInvalid, k)
		}
	}
	if w, ok := meta["weight"]; ok {
		if n, err := strconv.Atoi(w); err != nil || n < 0 || strings.TrimSpace(w) != w || (len(w) > 1 && w[0] == '+') {
			return fmt.Errorf("%w: meta weight %q is not a non-negative integer", ErrInvalid, w)
		}
	}
	if size > max {
		return fmt.Errorf("%w: desc and meta are %d bytes, over the limit of %d", ErrInvalid, size, max)
	}
	return nil
}

// checkState refuses a State that is none of Serving, Draining, Unhealthy.
func checkState(s State) error {
	if s > Unhealthy {
		return fmt.Errorf("%w: unknown state %d", ErrInvalid, s)
	}
	return nil
}
