package etcd

// lease.go: renewing this incarnation's lease over one long-lived
// LeaseKeepAlive stream, one request per keepalive interval. Cheaper than
// KeepAliveOnce (which opens a stream per renewal), and it keeps renewing
// while a server drains for a graceful stop (it refuses new streams then,
// for seconds, while its leases keep expiring). Owned by the heartbeat
// goroutine, which alone calls renew and close.

import (
	"context"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// keepalive is the heartbeat's stream to etcd's lessor.
type keepalive struct {
	cli    *clientv3.Client
	stream pb.Lease_LeaseKeepAliveClient
	cancel context.CancelFunc
}

// renew renews lease once, opening the stream if there is none; it waits
// for the answer until ctx ends (then the stream is dropped: the next call
// opens another). It returns rpctypes.ErrLeaseNotFound when the lease has
// expired or was revoked.
func (k *keepalive) renew(ctx context.Context, lease clientv3.LeaseID) error {
	if k.stream == nil {
		// Its own context: the stream outlives this call; close ends it.
		sctx, cancel := context.WithCancel(clientv3.WithRequireLeader(context.Background()))
		stream, err := pb.NewLeaseClient(k.cli.ActiveConnection()).LeaseKeepAlive(sctx)
		if err != nil {
			cancel()
			return fmt.Errorf("svcwatch/etcd: open the keepalive stream: %w", rpctypes.Error(err))
		}
		k.stream, k.cancel = stream, cancel
	}
	if err := k.stream.Send(&pb.LeaseKeepAliveRequest{ID: int64(lease)}); err != nil {
		k.close()
		return fmt.Errorf("svcwatch/etcd: keepalive: %w", rpctypes.Error(err))
	}
	type answer struct {
		resp *pb.LeaseKeepAliveResponse
		err  error
	}
	got := make(chan answer, 1)
	stream := k.stream
	go func() { // ends with Recv: at the answer, or when close cancels the stream
		resp, err := stream.Recv()
		got <- answer{resp, err}
	}()
	select {
	case a := <-got:
		switch {
		case a.err != nil:
			k.close()
			return fmt.Errorf("svcwatch/etcd: keepalive: %w", rpctypes.Error(a.err))
		case a.resp.TTL <= 0:
			return rpctypes.ErrLeaseNotFound
		}
		return nil
	case <-ctx.Done():
		k.close()
		<-got
		return fmt.Errorf("svcwatch/etcd: keepalive: %w", ctx.Err())
	}
}

// close ends the stream, if any. Idempotent.
func (k *keepalive) close() {
	if k.cancel != nil {
		k.cancel()
		if k.stream != nil {
			_ = k.stream.CloseSend()
		}
	}
	k.stream, k.cancel = nil, nil
}
