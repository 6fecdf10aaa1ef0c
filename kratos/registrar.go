package svcwatchkratos

// registrar.go: Register and Deregister, one watcher per registered instance.

import (
	"context"
	"fmt"
	"maps"

	"github.com/go-kratos/kratos/v2/registry"

	"github.com/svcwatch/svcwatch"
)

// Register registers service in its table (prefix/Name/Version) through a
// watcher of its own, which heartbeats until Deregister or Close. kratos's App
// calls it once its servers listen. Registering an instance already
// registered by this Registry updates its Metadata and Desc; its dial address
// cannot change (Deregister first). A restart of the same ID at the same
// address replaces the old registration; a live holder of the ID at another
// address makes it fail with svcwatch.ErrDuplicateID.
func (r *Registry) Register(ctx context.Context, service *registry.ServiceInstance) error {
	self, err := r.toInstance(service)
	if err != nil {
		return err
	}
	r.regMu.Lock()
	defer r.regMu.Unlock()
	if r.isClosed() {
		return ErrClosed
	}
	if w, ok := r.regs[self.Key()]; ok {
		if w.Self().Name != self.Name {
			return fmt.Errorf("%w: %s is registered at %s; deregister it before registering it at %s",
				svcwatch.ErrInvalid, self.Key(), w.Self().Name, self.Name)
		}
		// Only what changed is written: each write is a round trip and an
		// OnUpdate at every peer.
		cur := w.Self()
		if !maps.Equal(cur.Meta, self.Meta) {
			if err := w.SetMeta(ctx, self.Meta); err != nil {
				return fmt.Errorf("svcwatch/kratos: update %s: %w", self.Key(), err)
			}
		}
		if cur.Desc != self.Desc {
			if err := w.SetDesc(ctx, self.Desc); err != nil {
				return fmt.Errorf("svcwatch/kratos: update %s: %w", self.Key(), err)
			}
		}
		return nil
	}
	w, err := svcwatch.NewRedisServiceWatcher(r.client, self, r.wopts...)
	if err != nil {
		return fmt.Errorf("svcwatch/kratos: register %s: %w", self.Key(), err)
	}
	if err := w.Start(ctx); err != nil {
		return fmt.Errorf("svcwatch/kratos: register %s: %w", self.Key(), err)
	}
	r.regs[self.Key()] = w
	return nil
}

// Deregister removes service's registration and stops its watcher: peers
// hear at once. kratos's App calls it as it stops. Deregistering an instance
// this Registry does not hold is a no-op.
func (r *Registry) Deregister(ctx context.Context, service *registry.ServiceInstance) error {
	self, err := r.toInstance(service)
	if err != nil {
		return err
	}
	r.regMu.Lock()
	defer r.regMu.Unlock()
	w, ok := r.regs[self.Key()]
	if !ok {
		return nil
	}
	delete(r.regs, self.Key())
	if err := w.Stop(ctx); err != nil {
		return fmt.Errorf("svcwatch/kratos: deregister %s: %w", self.Key(), err)
	}
	return nil
}
