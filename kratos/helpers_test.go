package svcwatchkratos_test

// helpers_test.go: kratos apps serving gRPC and registering through a
// Registry on a real redis-server.

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/go-kratos/kratos/v2"
	kgrpc "github.com/go-kratos/kratos/v2/transport/grpc"
	"go.uber.org/goleak"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/svcwatch/svcwatch"
	"github.com/svcwatch/svcwatch/internal/redistest"
	svcwatchkratos "github.com/svcwatch/svcwatch/kratos"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// os/signal's loop lives as long as the process once kratos's App.Run
		// called signal.Notify.
		goleak.IgnoreTopFunction("os/signal.signal_recv"),
		goleak.IgnoreTopFunction("os/signal.loop"),
	)
}

const wait = 15 * time.Second // generous deadline of every poll

const prefix = "kratostest/prod"

// fast are the watcher options of every Registry here.
func fast() []svcwatch.Option {
	return []svcwatch.Option{
		svcwatch.WithTTL(2 * time.Second),
		svcwatch.WithKeepAliveInterval(300 * time.Millisecond),
		svcwatch.WithScanInterval(300 * time.Millisecond),
	}
}

// newRegistry returns a Registry on srv (one per process), closed at the end of t.
func newRegistry(t *testing.T, srv *redistest.Server) *svcwatchkratos.Registry {
	t.Helper()
	r := svcwatchkratos.New(srv.Client(t), svcwatchkratos.WithPrefix(prefix), svcwatchkratos.WithWatcherOptions(fast()...))
	t.Cleanup(func() {
		if err := r.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return r
}

// app is a kratos app: a gRPC server answering with its ID, registered
// through its own Registry.
type app struct {
	testpb.UnimplementedTestServiceServer
	id   string
	app  *kratos.App
	done chan error
}

func (a *app) UnaryCall(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{ServerId: a.id}, nil
}

// startApp runs a kratos app named name at version, and waits until it is
// registered. It is stopped at the end of t.
func startApp(t *testing.T, srv *redistest.Server, name, version, id string) *app {
	t.Helper()
	reg := newRegistry(t, srv)
	a := &app{id: id, done: make(chan error, 1)}
	gs := kgrpc.NewServer(kgrpc.Address("127.0.0.1:0"))
	testpb.RegisterTestServiceServer(gs, a)
	a.app = kratos.New(kratos.ID(id), kratos.Name(name), kratos.Version(version),
		kratos.Metadata(map[string]string{"zone": "eu"}),
		kratos.Server(gs), kratos.Registrar(reg))
	go func() { a.done <- a.app.Run() }()
	t.Cleanup(func() { a.stop(t) })

	eventually(t, id+" registered", func() error {
		select {
		case err := <-a.done:
			a.done <- err
			return fmt.Errorf("app ended: %v", err)
		default:
		}
		list, err := reg.GetService(context.Background(), name)
		if err != nil {
			return err
		}
		for _, si := range list {
			if si.ID == id {
				return nil
			}
		}
		return fmt.Errorf("%s not in %v", id, list)
	})
	return a
}

// stop stops the app (deregister, then graceful stop) and waits for Run.
// Idempotent.
func (a *app) stop(t *testing.T) {
	t.Helper()
	if a.app == nil {
		return
	}
	if err := a.app.Stop(); err != nil {
		t.Errorf("stop %s: %v", a.id, err)
	}
	select {
	case err := <-a.done:
		if err != nil {
			t.Errorf("run %s: %v", a.id, err)
		}
	case <-time.After(wait):
		t.Errorf("%s did not stop", a.id)
	}
	a.app = nil
}

// eventually polls f until it returns nil, failing t after wait.
func eventually(t *testing.T, what string, f func() error) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(wait)
	for {
		err := f()
		if err == nil {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not so after %v: %v", what, wait, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
