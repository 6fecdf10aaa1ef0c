//go:build measure

package etcd

// measure_test.go: the figures of the README's backend table, measured on an
// embedded etcd: the latency of a change, crash detection, and the requests
// an idle process makes. It asserts nothing and takes about half a minute, so
// it is built only when asked: go test -tags measure -run TestMeasure -v .

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/svcwatch/svcwatch"
)

func TestMeasure(t *testing.T) {
	checkGoroutines(t)
	srv := startServer(t)

	t.Run("change latency", func(t *testing.T) {
		const n = 200
		var mu sync.Mutex
		seen := map[string]chan struct{}{}
		arrived := func(key string) chan struct{} {
			mu.Lock()
			defer mu.Unlock()
			if seen[key] == nil {
				seen[key] = make(chan struct{})
			}
			return seen[key]
		}
		h := svcwatch.HandlerFuncs{
			Add:    func(i svcwatch.Instance) { close(arrived("add " + i.ID)) },
			Update: func(_, i svcwatch.Instance) { close(arrived("update " + i.Desc)) },
		}
		startNode(t, srv.addr(), "m/latency", "peer", svcwatch.WithHandler(h))
		var adds, updates []time.Duration
		p := startNode(t, srv.addr(), "m/latency", "p")
		for i := 0; i < n; i++ {
			id := fmt.Sprintf("n%d", i)
			cli := newClient(t, srv.addr())
			w, err := NewEtcdServiceWatcher(cli, svcwatch.Instance{Table: "m/latency", ID: id, Name: "h:" + id}, svcwatch.WithLogger(quietLogger()))
			if err != nil {
				t.Fatal(err)
			}
			began := time.Now()
			if err := w.Start(ctxT(t)); err != nil {
				t.Fatal(err)
			}
			<-arrived("add " + id)
			adds = append(adds, time.Since(began))
			_ = w.Stop(ctxT(t))
			cli.Close()

			desc := fmt.Sprintf("d%d", i)
			began = time.Now()
			if err := p.w.SetDesc(ctxT(t), desc); err != nil {
				t.Fatal(err)
			}
			<-arrived("update " + desc)
			updates = append(updates, time.Since(began))
		}
		t.Logf("Start (register) -> OnAdd at a peer, %d samples: p50 %v, p99 %v", n, pct(adds, 50), pct(adds, 99))
		t.Logf("SetDesc call -> OnUpdate at a peer, %d samples: p50 %v, p99 %v", n, pct(updates, 50), pct(updates, 99))
	})

	t.Run("crash detection", func(t *testing.T) {
		for _, ttl := range []time.Duration{time.Second, 2 * time.Second, 5 * time.Second} {
			var samples []time.Duration
			for i := 0; i < 3; i++ {
				tb := fmt.Sprintf("m/crash/%v/%d", ttl, i)
				opts := []svcwatch.Option{svcwatch.WithTTL(ttl), svcwatch.WithKeepAliveInterval(ttl / 5)}
				peer := startNode(t, srv.addr(), tb, "peer", opts...)
				victim := startNode(t, srv.addr(), tb, "victim", opts...)
				sees(t, peer, tb, "peer,victim")
				mark := victim.w.Stats().Heartbeats
				eventually(t, "a heartbeat", func() bool { return victim.w.Stats().Heartbeats > mark })
				began := time.Now()
				if err := victim.w.crash(ctxT(t)); err != nil {
					t.Fatal(err)
				}
				victim.cli.Close()
				deadline := time.Now().Add(ttl + waitTimeout)
				for peer.rec.count("remove victim@") == 0 && time.Now().Before(deadline) {
					time.Sleep(time.Millisecond)
				}
				samples = append(samples, time.Since(began))
			}
			t.Logf("TTL %v (keepalive %v): a crash reached a peer after %v", ttl, ttl/5, samples)
		}
	})

	t.Run("idle cost", func(t *testing.T) {
		// Defaults: TTL 10s, keepalive 2s, scan 4s. Each process watches its
		// own table and one more.
		const procs, window = 10, 20 * time.Second
		var unary, streamMsgs, streams atomic.Int64
		count := []grpc.DialOption{
			grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
				unary.Add(1)
				return invoker(ctx, method, req, reply, cc, opts...)
			}),
			grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
				streams.Add(1)
				s, err := streamer(ctx, desc, cc, method, opts...)
				if err != nil {
					return nil, err
				}
				return countingStream{s, &streamMsgs}, nil
			}),
		}
		for i := 0; i < procs; i++ {
			cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.addr()}, Logger: zap.NewNop(), DialOptions: count})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cli.Close() })
			w, err := NewEtcdServiceWatcher(cli, svcwatch.Instance{Table: "m/idle/a", ID: fmt.Sprint(i), Name: fmt.Sprintf("h:%d", i)},
				svcwatch.WithTables("m/idle/b"), svcwatch.WithLogger(quietLogger()))
			if err != nil {
				t.Fatal(err)
			}
			if err := w.Start(ctxT(t)); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = w.Stop(context.Background()) })
		}
		time.Sleep(3 * time.Second) // past the first renewal, which opens the keepalive stream: what follows is idle
		u0, m0, s0 := unary.Load(), streamMsgs.Load(), streams.Load()
		time.Sleep(window)
		u, m, s := unary.Load()-u0, streamMsgs.Load()-m0, streams.Load()-s0
		per := func(x int64) float64 { return float64(x) / procs / window.Seconds() }
		t.Logf("idle, per process per second (defaults): %.2f unary calls, %.2f messages sent on streams, %.2f streams opened",
			per(u), per(m), per(s))
	})
}

type countingStream struct {
	grpc.ClientStream
	n *atomic.Int64
}

func (c countingStream) SendMsg(m any) error {
	c.n.Add(1)
	return c.ClientStream.SendMsg(m)
}

func pct(d []time.Duration, p int) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100
	if i > 0 {
		i--
	}
	return s[i].Round(10 * time.Microsecond)
}
