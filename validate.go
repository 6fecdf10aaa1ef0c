package svcwatch

// validate.go: the checks of names, Descs and clients that keep bad input out of
// the key layout. Pure functions, called by validate() and by the methods that
// take an argument (Watch, SetDesc).

import (
	"fmt"
	"reflect"
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
	return checkDesc(self.Desc, maxDesc)
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
