package svcwatch

// conn_dial.go: a peer's dial goroutine, owned by its ConnManager: it dials,
// publishes the connection, runs the hooks, closes the connection when the peer
// goes or it is invalidated, and redials with backoff. Panics in the dial
// function and the hooks are recovered here.

import (
	"context"
	"errors"
	"log/slog"
	"runtime/debug"
)

// run is a peer's dial goroutine: it owns the peer's connection from dial to
// close. It exits when p.ctx is canceled.
func (m *ConnManager[C]) run(key string, p *connPeer[C], prev <-chan struct{}) {
	defer m.wg.Done()
	defer func() {
		m.mu.Lock()
		if m.tails[key] == p {
			delete(m.tails, key)
		}
		m.mu.Unlock()
		close(p.done)
		p.cancel() // release the ctx
	}()
	if prev != nil {
		// The previous goroutine for this key is already canceled; wait for it
		// even if we are canceled too, so that a later one never overtakes it.
		<-prev
	}
	attempt := 0
	failing := false     // within a streak of failed dials
	panicLogged := false // a panicking dial was warned about in this streak
	for p.ctx.Err() == nil {
		c, err := m.dialOnce(p)
		if err != nil {
			var pe *connPanicError
			panicked := errors.As(err, &pe)
			if p.ctx.Err() != nil && !panicked {
				return
			}
			lvl := slog.LevelDebug
			attrs := []any{"peer", key, "addr", p.addr, "attempt", attempt + 1, "err", err}
			if !failing {
				lvl = slog.LevelWarn // once per streak: a dead peer retries for as long as it is registered
				failing = true
			}
			if panicked {
				attrs = append(attrs, "panic", pe.value)
				if !panicLogged {
					// A bug, not a dead peer: warn with the stack once per
					// streak, even if the streak began with an ordinary error.
					lvl = slog.LevelWarn
					attrs = append(attrs, "stack", string(pe.stack))
					panicLogged = true
				}
			}
			m.cfg.logger.Log(context.Background(), lvl, "svcwatch: dial failed", attrs...)
			if p.ctx.Err() != nil {
				return
			}
		} else {
			failing, panicLogged = false, false
			connectedAt := m.cfg.clock.Now()
			if !m.serve(key, p, c) {
				return
			}
			// Invalidated. Keep growing the backoff unless the conn lived
			// long, so a peer that accepts then breaks at once is not hammered.
			if m.cfg.clock.Now().Sub(connectedAt) >= m.cfg.backoff.max {
				attempt = 0
			}
		}
		if !sleep(p.ctx, m.cfg.clock, m.cfg.backoff.delay(attempt)) {
			return
		}
		attempt++
	}
}

// dialOnce makes one dial attempt with the peer's current instance. A panic in
// dial is returned as a *connPanicError.
func (m *ConnManager[C]) dialOnce(p *connPeer[C]) (c C, err error) {
	m.mu.RLock()
	inst := p.inst
	m.mu.RUnlock()
	ctx := p.ctx
	if m.cfg.dialTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, m.cfg.dialTimeout)
		defer cancel()
	}
	defer func() {
		if r := recover(); r != nil {
			var zero C
			c, err = zero, &connPanicError{fn: "dial", value: r, stack: debug.Stack()}
		}
	}()
	return m.dial(ctx, inst)
}

// serve publishes a fresh connection, holds it until the peer goes away or it
// is invalidated, then closes it. It reports whether it was invalidated (and
// the peer still wants a connection).
func (m *ConnManager[C]) serve(key string, p *connPeer[C], c C) (invalidated bool) {
	if p.ctx.Err() != nil {
		// The dial won the race with removal: never store the conn.
		m.closeConn(key, p.addr, c)
		return false
	}
	m.mu.Lock()
	inst := p.inst
	p.connecting = true
	m.mu.Unlock()
	perr := m.connected(inst, c)
	m.mu.Lock()
	p.connecting = false
	if perr != nil {
		// Invalidated by the panic: never publish it. Drop a kick the hook
		// may have sent before panicking, or it would hit the next conn.
		select {
		case <-p.kick:
		default:
		}
		inst = p.inst
		m.mu.Unlock()
		m.cfg.logger.Error("svcwatch: OnConnect panicked; connection closed", "peer", key, "addr", p.addr,
			"panic", perr.value, "stack", string(perr.stack))
		m.closeConn(key, p.addr, c)
		m.disconnected(inst, perr)
		return true
	}
	select {
	case <-p.kick: // invalidated by the hook: never publish it
		inst = p.inst
		m.mu.Unlock()
		m.closeConn(key, p.addr, c)
		m.cfg.logger.Info("svcwatch: connection invalidated, redialing", "peer", key, "addr", p.addr)
		m.disconnected(inst, ErrConnInvalidated)
		return true
	default:
	}
	if p.ctx.Err() != nil {
		// Removed while the hook ran; the hook saw the conn, so pair it.
		inst = p.inst
		m.mu.Unlock()
		m.closeConn(key, p.addr, c)
		m.disconnected(inst, nil)
		return false
	}
	p.conn, p.ready = c, true
	m.mu.Unlock()
	m.cfg.logger.Debug("svcwatch: connected", "peer", key, "addr", p.addr)

	var reason error
	select {
	case <-p.ctx.Done():
	case <-p.kick:
		reason = ErrConnInvalidated
	}
	m.mu.Lock()
	var zero C
	p.conn, p.ready = zero, false
	inst = p.inst
	m.mu.Unlock()
	m.closeConn(key, p.addr, c)
	if reason != nil {
		m.cfg.logger.Info("svcwatch: connection invalidated, redialing", "peer", key, "addr", p.addr)
	} else {
		m.cfg.logger.Debug("svcwatch: disconnected", "peer", key, "addr", p.addr)
	}
	m.disconnected(inst, reason)
	return reason != nil
}

// connected runs the OnConnect hook, recovering a panic: it returns the panic,
// or nil if the hook returned.
func (m *ConnManager[C]) connected(inst Instance, c C) (perr *connPanicError) {
	if m.cfg.onConnect == nil {
		return nil
	}
	defer func() {
		if r := recover(); r != nil {
			perr = &connPanicError{fn: "OnConnect", value: r, stack: debug.Stack()}
		}
	}()
	m.cfg.onConnect(inst, c)
	return nil
}

// disconnected runs the OnDisconnect hook; a panic is logged and otherwise
// treated as a return.
func (m *ConnManager[C]) disconnected(inst Instance, err error) {
	if m.cfg.onDisconnect == nil {
		return
	}
	defer func() {
		if r := recover(); r != nil {
			m.cfg.logger.Error("svcwatch: OnDisconnect panicked", "peer", inst.Key(), "addr", inst.Name,
				"panic", r, "stack", string(debug.Stack()))
		}
	}()
	m.cfg.onDisconnect(inst, err)
}

// closeConn closes c; errors during Close are kept for Close to return, others
// only logged (closing a broken or removed peer's conn often fails harmlessly).
func (m *ConnManager[C]) closeConn(key, addr string, c C) {
	err := c.Close()
	if err == nil {
		return
	}
	if m.ctx.Err() != nil {
		m.mu.Lock()
		m.closeErrs = append(m.closeErrs, err)
		m.mu.Unlock()
	}
	m.cfg.logger.Debug("svcwatch: close connection", "peer", key, "addr", addr, "err", err)
}
