package svcwatch

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/svcwatch/svcwatch/protocol"
)

func TestBadInputIsErrInvalid(t *testing.T) {
	mr := miniredis.RunT(t)
	client := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer client.Close()
	ok := Instance{Table: "g/e/v/game", ID: "1", Name: "127.0.0.1:7000"}
	with := func(f func(*Instance)) Instance { i := ok; f(&i); return i }
	var nilClient *redis.Client
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": mr.Addr()}})
	defer ring.Close()

	cases := []struct {
		name   string
		client redis.UniversalClient
		self   Instance
		opts   []Option
		want   string // in the message
	}{
		{"nil client", nil, ok, nil, "nil redis client"},
		{"typed nil client", nilClient, ok, nil, "nil redis client"},
		{"ring", ring, ok, nil, "Ring"},
		{"empty table", client, with(func(i *Instance) { i.Table = "" }), nil, "table is empty"},
		{"oversized table", client, with(func(i *Instance) { i.Table = strings.Repeat("t", maxTableLen+1) }), nil, "over the limit"},
		{"brace in table", client, with(func(i *Instance) { i.Table = "g/{x}/v" }), nil, "hash tag"},
		{"space in table", client, with(func(i *Instance) { i.Table = "g/e v" }), nil, "white space"},
		{"newline in table", client, with(func(i *Instance) { i.Table = "g/e\nv" }), nil, "white space or a control"},
		{"control char in table", client, with(func(i *Instance) { i.Table = "g/e\x01v" }), nil, "control"},
		{"empty id", client, with(func(i *Instance) { i.ID = "" }), nil, "id is empty"},
		{"oversized id", client, with(func(i *Instance) { i.ID = strings.Repeat("i", maxIDLen+1) }), nil, "over the limit"},
		{"slash in id", client, with(func(i *Instance) { i.ID = "a/b" }), nil, "'/'"},
		{"brace in id", client, with(func(i *Instance) { i.ID = "a}" }), nil, "hash tag"},
		{"tab in id", client, with(func(i *Instance) { i.ID = "a\tb" }), nil, "white space"},
		{"empty name", client, with(func(i *Instance) { i.Name = "" }), nil, "name is empty"},
		{"space in name", client, with(func(i *Instance) { i.Name = "host 1:2" }), nil, "white space"},
		{"oversized desc", client, with(func(i *Instance) { i.Desc = strings.Repeat("d", DefaultMaxDescSize+1) }), nil, "desc is"},
		{"desc over a custom limit", client, with(func(i *Instance) { i.Desc = "12345" }), []Option{WithMaxDescSize(4)}, "desc is 5 bytes"},
		{"invalid utf-8 desc", client, with(func(i *Instance) { i.Desc = "\xff" }), nil, "UTF-8"},
		{"ttl not above twice keepalive", client, ok, []Option{WithTTL(time.Second), WithKeepAliveInterval(500 * time.Millisecond)}, "more than twice"},
		{"zero ttl", client, ok, []Option{WithTTL(0)}, "not positive"},
		{"negative keepalive", client, ok, []Option{WithKeepAliveInterval(-time.Second)}, "not positive"},
		{"scan not under half the ttl", client, ok, []Option{WithScanInterval(5 * time.Second)}, "scan interval"},
		{"bad prefix", client, ok, []Option{WithKeyPrefix("a b")}, "key prefix"},
		{"empty prefix", client, ok, []Option{WithKeyPrefix("")}, "key prefix is empty"},
		{"nil handler", client, ok, []Option{WithHandler(nil)}, "nil handler"},
		{"bad extra table", client, ok, []Option{WithTables("ok/table", "bad{")}, "hash tag"},
		{"retention too short", client, ok, []Option{WithTableRetention(time.Millisecond)}, "table retention"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w, err := NewRedisServiceWatcher(c.client, c.self, c.opts...)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want one wrapping ErrInvalid", err)
			}
			if w != nil {
				t.Error("a watcher was returned with the error")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("err %q does not say %q", err, c.want)
			}
		})
	}

	t.Run("methods", func(t *testing.T) {
		w, err := NewRedisServiceWatcher(client, ok)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop(context.Background())
		ctx := context.Background()
		if err := w.Watch(ctx, "bad table"); !errors.Is(err, ErrInvalid) {
			t.Errorf("Watch(bad) = %v", err)
		}
		if err := w.SetDesc(ctx, strings.Repeat("x", DefaultMaxDescSize+1)); !errors.Is(err, ErrInvalid) {
			t.Errorf("SetDesc(oversized) = %v", err)
		}
	})

	t.Run("every problem at once", func(t *testing.T) {
		bad := Instance{Table: "g/{x}", ID: "a/b", Name: ""}
		_, err := NewRedisServiceWatcher(nil, bad, WithTTL(0), WithHandler(nil), WithKeyPrefix("a b"), WithTables("t t"))
		if !errors.Is(err, ErrInvalid) {
			t.Fatalf("err = %v", err)
		}
		for _, want := range []string{"nil redis client", "TTL 0s is not positive", "nil handler", "key prefix", "hash tag", `table "t t"`} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("err %q does not say %q", err, want)
			}
		}
	})

	t.Run("nil loggers keep the default", func(t *testing.T) {
		w, err := NewRedisServiceWatcher(client, ok, WithLogger(nil))
		if err != nil {
			t.Fatalf("WithLogger(nil): %v", err)
		}
		if w.log == nil {
			t.Error("no logger")
		}
		m := NewConnManager(func(context.Context, Instance) (io.Closer, error) { return nil, errors.New("unused") }, WithConnLogger(nil))
		defer m.Close()
		if m.cfg.logger == nil {
			t.Error("ConnManager has no logger")
		}
	})

	t.Run("watch-only ignores id and name", func(t *testing.T) {
		w, err := NewRedisServiceWatcher(client, Instance{Table: "g/e/v/game", ID: "bad/id"}, WatchOnly())
		if err != nil {
			t.Fatalf("watch-only with a junk ID: %v", err)
		}
		if w.Self().ID != "" {
			t.Errorf("watch-only Self = %+v", w.Self())
		}
	})
}

func TestDefaults(t *testing.T) {
	_, b, err := NewServiceWatcher(Instance{Table: "t", ID: "1", Name: "h:1"})
	if err != nil {
		t.Fatal(err)
	}
	c := b.Config()
	if c.TTL != 10*time.Second || c.KeepAlive != 2*time.Second || c.ScanInterval != 4*time.Second || c.KeyPrefix != "svcwatch" || c.MaxDescSize != 64<<10 {
		t.Errorf("defaults: ttl %v keepalive %v scan %v prefix %q maxDesc %d", c.TTL, c.KeepAlive, c.ScanInterval, c.KeyPrefix, c.MaxDescSize)
	}
	// A short TTL brings the scan down with it, under TTL/2.
	_, b, err = NewServiceWatcher(Instance{Table: "t", ID: "1", Name: "h:1"}, WithTTL(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if c := b.Config(); c.KeepAlive != 200*time.Millisecond || c.ScanInterval != 400*time.Millisecond {
		t.Errorf("at TTL 1s: keepalive %v scan %v", c.KeepAlive, c.ScanInterval)
	}
}

func TestPath(t *testing.T) {
	if got := Path("bingqiu_yn_dl", "kaifa", "20190510", "appServer"); got != "bingqiu_yn_dl/kaifa/20190510/appServer" {
		t.Errorf("Path = %q", got)
	}
	i := Instance{Table: "a/b", ID: "7"}
	if i.Key() != "a/b/7" {
		t.Errorf("Key = %q", i.Key())
	}
	if err := (Instance{Desc: "not json"}).Decode(&struct{}{}); err == nil {
		t.Error("Decode of bad JSON succeeded")
	}
}

func TestBackendChecks(t *testing.T) {
	_, b, err := NewServiceWatcher(Instance{Table: "g/e/v/game", ID: "a", Name: "h:1"}, WithMaxDescSize(16))
	if err != nil {
		t.Fatal(err)
	}
	rec := protocol.Record{Inc: "i1", Ver: "v1", Name: "h:2", Desc: "{}", Reg: 1000, TTL: 1000}.Encode()
	inst, err := b.DecodeRecord("g/e/v/game", "b", rec)
	if err != nil || inst.Name != "h:2" || inst.Incarnation != "i1" || inst.RegisteredAt.UnixMilli() != 1000 {
		t.Errorf("DecodeRecord = %+v, %v", inst, err)
	}
	big := protocol.Record{Inc: "i1", Name: "h:2", Desc: strings.Repeat("x", 17)}.Encode()
	if _, err := b.DecodeRecord("g/e/v/game", "b", big); !errors.Is(err, protocol.ErrBadData) {
		t.Errorf("DecodeRecord(oversized) = %v, want ErrBadData", err)
	}
}
