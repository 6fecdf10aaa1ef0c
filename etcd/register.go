package etcd

// register.go: self's registration in etcd: the register transaction (restart
// versus duplicate), updates of the record, the deregistration, the heartbeat
// loop (a lease renewal every keepalive interval, lease.go) and standing down. The loop
// runs on the heartbeat goroutine, owned by the running Start and ended by
// Stop; the other calls run on the goroutine of Start, SetDesc or Stop.
// regLock serialises every write of self.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/svcwatch/svcwatch"
	"github.com/svcwatch/svcwatch/protocol"
)

func (w *EtcdServiceWatcher) lockReg(ctx context.Context) error {
	select {
	case w.regLock <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *EtcdServiceWatcher) unlockReg() { <-w.regLock }

func (w *EtcdServiceWatcher) selfKey() string {
	s := w.Self()
	return w.keys.instKey(s.Table, s.ID)
}

// register registers self with its current incarnation. replace says whether
// a live holder with the same Name may be replaced (Start's registration);
// a re-registration after the lease was lost never replaces anyone.
func (w *EtcdServiceWatcher) register(ctx context.Context, replace bool) error {
	if err := w.lockReg(ctx); err != nil {
		return err
	}
	defer w.unlockReg()
	return w.registerLocked(ctx, replace)
}

// registerLocked is register under regLock. It refuses to run once the
// watcher is stopped: a Stop that deregistered first must not be undone.
func (w *EtcdServiceWatcher) registerLocked(ctx context.Context, replace bool) error {
	w.mu.Lock()
	stopped := w.state == stateStopped
	w.mu.Unlock()
	if stopped {
		return svcwatch.ErrStopped
	}
	if w.reg.lost != nil {
		return w.reg.lost
	}
	self := w.Self()
	ctx, cancel := context.WithTimeout(ctx, w.callTimeout())
	defer cancel()
	if w.reg.lease == 0 {
		lease, err := w.cli.Grant(ctx, w.ttlSec)
		w.noteRoundTrip(err)
		if err != nil {
			return fmt.Errorf("svcwatch/etcd: register %s: grant a lease: %w", self.Key(), err)
		}
		w.reg.lease = lease.ID
	}
	regAt := self.RegisteredAt
	if regAt.IsZero() {
		regAt = time.Now() // etcd has no clock to read: the registering process's
	}
	w.reg.ver = w.b.NewToken()
	rec := w.b.EncodeRecord(self, w.reg.ver, regAt)
	key := w.keys.instKey(self.Table, self.ID)
	put := clientv3.OpPut(key, rec, clientv3.WithLease(w.reg.lease))

	// Create the key if it is missing; else look at its holder and, if it may
	// be replaced, replace exactly that version of it. A change in between
	// makes the comparison fail, and the holder is looked at again.
	for try := 0; try < 8; try++ {
		resp, err := w.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(put).
			Else(clientv3.OpGet(key)).
			Commit()
		w.noteRoundTrip(err)
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			// The lease expired under us (cut off longer than the TTL):
			// the next attempt grants a new one.
			w.reg.lease = 0
		}
		if err != nil {
			return fmt.Errorf("svcwatch/etcd: register %s: %w", self.Key(), err)
		}
		if resp.Succeeded {
			w.registered(resp.Header.Revision, self.Incarnation, regAt)
			return nil
		}
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			continue // deleted meanwhile
		}
		holder := kvs[0]
		r, decErr := protocol.DecodeRecord(string(holder.Value))
		switch {
		case decErr != nil:
			// Unreadable data under our key: no live process wrote it.
		case r.Inc == self.Incarnation:
			// Our own key, under a lease we lost: take it back.
			if r.Reg > 0 {
				regAt = time.UnixMilli(r.Reg)
				rec = w.b.EncodeRecord(self, w.reg.ver, regAt)
				put = clientv3.OpPut(key, rec, clientv3.WithLease(w.reg.lease))
			}
		case replace && w.conf.RestartReplace && r.Name == self.Name:
			// A restart of this process, which cannot still be listening there.
		default:
			if !replace {
				return w.lostTo(self, r)
			}
			return fmt.Errorf("%w: %s is held by a live process at %q", svcwatch.ErrDuplicateID, self.Key(), r.Name)
		}
		resp, err = w.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", holder.ModRevision)).
			Then(put).
			Commit()
		w.noteRoundTrip(err)
		if err != nil {
			return fmt.Errorf("svcwatch/etcd: register %s: %w", self.Key(), err)
		}
		if resp.Succeeded {
			if holder.Lease != 0 && holder.Lease != int64(w.reg.lease) {
				// The old incarnation's lease holds nothing now; revoking it
				// tells that process at its next heartbeat, should it live.
				_, _ = w.cli.Revoke(ctx, clientv3.LeaseID(holder.Lease))
			}
			w.registered(resp.Header.Revision, self.Incarnation, regAt)
			return nil
		}
	}
	return fmt.Errorf("svcwatch/etcd: register %s: the key kept changing", self.Key())
}

// lostTo is the error of a re-registration that found another incarnation
// holding the ID: at the same address it replaced this one (a restart);
// elsewhere a second process took the ID while this one was cut off.
func (w *EtcdServiceWatcher) lostTo(self svcwatch.Instance, r protocol.Record) error {
	if r.Name == self.Name {
		return fmt.Errorf("%w: %s", svcwatch.ErrReplaced, self.Key())
	}
	return fmt.Errorf("%w: %s is held by another process at %q", svcwatch.ErrDuplicateID, self.Key(), r.Name)
}

// registered records a successful write of self's key at revision rev.
// Caller holds regLock.
func (w *EtcdServiceWatcher) registered(rev int64, inc string, at time.Time) {
	w.reg.modRev = rev
	w.b.SetRegistration(inc, at)
	w.b.SetRegistered(true)
}

// updateLocked writes self's current record over this incarnation's, if
// this incarnation still holds the key; it registers again if the key is
// gone, and returns svcwatch.ErrReplaced if another incarnation holds it.
// The caller holds regLock.
func (w *EtcdServiceWatcher) updateLocked(ctx context.Context) error {
	self := w.Self()
	if w.reg.lost != nil {
		return w.reg.lost
	}
	if w.reg.lease == 0 {
		return w.registerLocked(ctx, false)
	}
	cctx, cancel := context.WithTimeout(ctx, w.callTimeout())
	defer cancel()
	key := w.keys.instKey(self.Table, self.ID)
	w.reg.ver = w.b.NewToken()
	put := clientv3.OpPut(key, w.b.EncodeRecord(self, w.reg.ver, self.RegisteredAt), clientv3.WithLease(w.reg.lease))
	for try := 0; try < 4; try++ {
		resp, err := w.cli.Txn(cctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", w.reg.modRev)).
			Then(put).
			Else(clientv3.OpGet(key)).
			Commit()
		w.noteRoundTrip(err)
		switch {
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			w.reg.lease = 0
			return w.registerLocked(ctx, false)
		case err != nil:
			return err
		case resp.Succeeded:
			w.reg.modRev = resp.Header.Revision
			return nil
		}
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			return w.registerLocked(ctx, false) // the key is gone: register again
		}
		r, decErr := protocol.DecodeRecord(string(kvs[0].Value))
		if decErr != nil || r.Inc != self.Incarnation {
			return fmt.Errorf("%w: %s", svcwatch.ErrReplaced, self.Key())
		}
		w.reg.modRev = kvs[0].ModRevision // ours, written by a call that timed out: go on from it
	}
	return fmt.Errorf("svcwatch/etcd: update %s: the key kept changing", self.Key())
}

// deregister revokes this incarnation's lease, which deletes its key if the
// key is still attached to it (a newer incarnation's put attached the key to
// its own lease). It waits for a write in flight, so that it is the last word.
func (w *EtcdServiceWatcher) deregister(ctx context.Context) error {
	if err := w.lockReg(ctx); err != nil {
		return fmt.Errorf("svcwatch/etcd: deregister: %w", err)
	}
	defer w.unlockReg()
	w.b.SetRegistered(false)
	lease := w.reg.lease
	if lease == 0 {
		return nil
	}
	// Bounded on its own: with etcd away, Stop still has time left to end
	// the goroutines (peers then see the lease expire).
	cctx, cancel := context.WithTimeout(ctx, max(w.callTimeout(), time.Second))
	defer cancel()
	_, err := w.cli.Revoke(cctx, lease)
	w.noteRoundTrip(err)
	if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("svcwatch/etcd: deregister %s: %w", w.Self().Key(), err)
	}
	w.reg.lease = 0
	return nil
}

// heartbeatLoop runs on the heartbeat goroutine until Stop, or until this
// incarnation stands down. Each keepalive interval it runs the health check
// and renews the lease (or, when the state peers see changed, writes the
// record); when the sync saw self's key change it looks at the key at once;
// every scan interval it asks for a progress notification on the watch
// stream, which confirms the view (Stats.LastSync). A watch-only watcher only
// asks for progress.
func (w *EtcdServiceWatcher) heartbeatLoop(run *running, t svcwatch.Timer) {
	defer close(run.hbDone)
	defer t.Stop()
	progress := w.b.NewTimer(w.conf.ScanInterval)
	defer progress.Stop()
	ka := &keepalive{cli: w.cli}
	defer ka.close()
	unwritten := false // the state peers should see is not in etcd yet
	for {
		select {
		case <-run.hbCtx.Done():
			return
		case <-progress.C():
			w.requestProgress(run)
			progress.Reset(w.conf.ScanInterval)
			continue
		case <-run.check:
			if w.conf.WatchOnly {
				continue
			}
			if !w.checkSelf(run.hbCtx) {
				return
			}
			continue
		case <-t.C():
		}
		if w.conf.WatchOnly {
			continue // never armed again
		}
		began := w.b.Now()
		if w.b.CheckHealth(run.hbCtx) || unwritten {
			var ok bool
			ok, unwritten = w.writeState(run.hbCtx)
			if !ok {
				return
			}
		} else if !w.heartbeat(run.hbCtx, ka) {
			return
		}
		// Keep the period, not period plus the call's duration.
		t.Reset(max(0, w.conf.KeepAlive-w.b.Now().Sub(began)))
	}
}

// requestProgress asks etcd to tell every watch of this client where it is;
// the answers mark the view synced. Best effort.
func (w *EtcdServiceWatcher) requestProgress(run *running) {
	ctx, cancel := context.WithTimeout(watchCtx(run.ctx), w.callTimeout())
	defer cancel()
	_ = w.cli.RequestProgress(ctx)
}

// heartbeat renews the lease; it reports false when this incarnation has
// stood down for good.
func (w *EtcdServiceWatcher) heartbeat(ctx context.Context, ka *keepalive) bool {
	if err := w.lockReg(ctx); err != nil {
		return true
	}
	lease := w.reg.lease
	w.unlockReg()
	if lease == 0 {
		return w.reregister(ctx)
	}
	cctx, cancel := context.WithTimeout(ctx, w.callTimeout())
	defer cancel()
	err := ka.renew(cctx, lease)
	w.noteRoundTrip(err)
	switch {
	case err == nil:
		w.b.CountHeartbeat()
		w.b.SetRegistered(true)
		return true
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		// The lease expired (this process was cut off longer than the TTL)
		// or was revoked by a newer incarnation; etcd deleted the key.
		if err := w.lockReg(ctx); err != nil {
			return true
		}
		if w.reg.lease == lease {
			w.reg.lease = 0
		}
		w.unlockReg()
		return w.reregister(ctx)
	}
	return true // next tick tries again; Stats shows Connected false
}

// reregister registers this incarnation again after its key or lease was
// lost, never replacing another incarnation; it reports false when this
// incarnation has stood down for good.
func (w *EtcdServiceWatcher) reregister(ctx context.Context) bool {
	w.b.SetRegistered(false)
	self := w.Self()
	err := w.register(ctx, false)
	switch {
	case err == nil:
		w.b.CountReregistration()
		w.log.Warn("svcwatch/etcd: registration was lost (lease expired while cut off?); registered again",
			"key", self.Key(), "incarnation", self.Incarnation)
		return true
	case errors.Is(err, svcwatch.ErrReplaced), errors.Is(err, svcwatch.ErrDuplicateID):
		w.standDown(self, err)
		return false
	}
	return true
}

// checkSelf looks at self's key after the sync saw it change: missing means
// register again; another incarnation means stand down. It reports false when
// this incarnation has stood down.
func (w *EtcdServiceWatcher) checkSelf(ctx context.Context) bool {
	self := w.Self()
	cctx, cancel := context.WithTimeout(ctx, w.callTimeout())
	defer cancel()
	resp, err := w.cli.Get(cctx, w.selfKey())
	w.noteRoundTrip(err)
	if err != nil {
		return true
	}
	if len(resp.Kvs) == 0 {
		return w.reregister(ctx)
	}
	r, decErr := protocol.DecodeRecord(string(resp.Kvs[0].Value))
	switch {
	case decErr != nil:
		w.standDown(self, fmt.Errorf("%w: %s holds an unreadable record", svcwatch.ErrReplaced, self.Key()))
		return false
	case r.Inc != self.Incarnation:
		w.standDown(self, w.lostTo(self, r))
		return false
	}
	return true
}

// writeState writes self's record after its state changed. It reports false
// when this incarnation has stood down, and whether the write must be tried
// again.
func (w *EtcdServiceWatcher) writeState(ctx context.Context) (ok, again bool) {
	if err := w.lockReg(ctx); err != nil {
		return true, true
	}
	err := w.updateLocked(ctx)
	w.unlockReg()
	switch {
	case err == nil:
		w.b.CountHeartbeat() // the put under the lease says it is alive, too
		w.b.SetRegistered(true)
		return true, false
	case errors.Is(err, svcwatch.ErrReplaced), errors.Is(err, svcwatch.ErrDuplicateID):
		w.standDown(w.Self(), err)
		return false, false
	}
	return true, true
}

// standDown gives up the registration for good: another incarnation holds the
// ID, and fighting it would flap the peers' views.
func (w *EtcdServiceWatcher) standDown(self svcwatch.Instance, err error) {
	w.log.Error("svcwatch/etcd: this incarnation is no longer registered and stops heartbeating",
		"key", self.Key(), "incarnation", self.Incarnation, "err", err)
	if lockErr := w.lockReg(context.Background()); lockErr == nil {
		w.reg.lease = 0 // Stop must not revoke anything now
		w.reg.lost = err
		w.unlockReg()
	}
	w.b.RegistrationLost(err)
}

// selfChanged is called by the sync when self's key was deleted or written by
// another incarnation: the heartbeat looks at it.
func (w *EtcdServiceWatcher) selfChanged(run *running) {
	select {
	case run.check <- struct{}{}:
	default:
	}
}
