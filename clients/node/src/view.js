// The local view of the watched tables (Go's registry.go) and the one queue
// its changes leave by (Go's dispatch.go): pending changes are merged per
// instance key, at the position of the oldest undelivered one, and what the
// listeners were last told decides the events (a new incarnation is told as
// remove, then add).

import { StoppedError } from './errors.js';
import { buildRoute, pickRoute, pickNRoute, routeWeight, serving } from './pick.js';

const sameMeta = (a, b) => {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => Object.hasOwn(b, k) && a[k] === b[k]);
};
export const same = (a, b) => a.table === b.table && a.id === b.id && a.name === b.name && a.desc === b.desc &&
  a.state === b.state && a.incarnation === b.incarnation && a.registeredAt === b.registeredAt && sameMeta(a.meta, b.meta);
export const byId = (a, b) => Buffer.compare(Buffer.from(a.id), Buffer.from(b.id)); // Go's byte order

export class View {
  // skipKey: self, never told; deliver(event, args) tells the listeners and
  // settles when they have.
  constructor(skipKey, deliver) {
    this.skipKey = skipKey;
    this.deliver = deliver;
    this.tables = new Map(); // table -> Map(id -> {inst, heldUntil}); present once loaded
    this.held = 0; // entries with a hold
    this.gen = new Map(); // table -> count of changes to who takes keys
    this.routes = new Map(); // table -> {gen, rt}
    this.queue = []; // {key} | {barrier} | {call}
    this.pending = new Map(); // key -> latest instance, null when gone
    this.known = new Map(); // key -> what the listeners were told
    this.stopped = false;
    this.draining = false;
  }

  // replace makes insts the whole view of table; an instance missing from
  // them is removed, or held until holdUntil when that is set.
  replace(table, insts, holdUntil) {
    let view = this.tables.get(table);
    if (!view) this.tables.set(table, (view = new Map()));
    const seen = new Set();
    for (const inst of insts) {
      seen.add(inst.id);
      this._put(view, inst);
    }
    for (const [id, e] of view) {
      if (seen.has(id) || (e.heldUntil && !holdUntil)) continue; // a hold runs out or the instance comes back
      this._remove(view, id, e, holdUntil);
    }
  }

  put(inst) {
    const view = this.tables.get(inst.table);
    if (view) this._put(view, inst);
  }

  remove(table, id, holdUntil) {
    const view = this.tables.get(table), e = view?.get(id);
    if (e) this._remove(view, id, e, holdUntil);
  }

  // releaseHolds removes every held instance whose hold ended by now.
  releaseHolds(now) {
    if (!this.held) return;
    for (const view of this.tables.values()) {
      for (const [id, e] of view) if (e.heldUntil && now >= e.heldUntil) this._remove(view, id, e, 0);
    }
  }

  _put(view, inst) {
    const e = view.get(inst.id);
    if (!e) {
      view.set(inst.id, { inst, heldUntil: 0 });
      this._changed(null, inst);
      return;
    }
    if (e.heldUntil) { e.heldUntil = 0; this.held--; }
    if (same(e.inst, inst)) return;
    const old = e.inst;
    e.inst = inst;
    this._changed(old, inst);
  }

  _remove(view, id, e, holdUntil) {
    if (holdUntil) {
      if (!e.heldUntil) { e.heldUntil = holdUntil; this.held++; }
      return;
    }
    if (e.heldUntil) this.held--;
    view.delete(id);
    this._changed(e.inst, null);
  }

  // _changed counts a change of routing and queues the latest state of the key.
  _changed(old, cur) {
    const inst = old ?? cur;
    if (routeWeight(old) !== routeWeight(cur)) this.gen.set(inst.table, (this.gen.get(inst.table) ?? 0) + 1);
    if (inst.key === this.skipKey || this.stopped) return;
    if (!this.pending.has(inst.key)) this.queue.push({ key: inst.key });
    this.pending.set(inst.key, cur);
    this._wake();
  }

  loaded(table) { return this.tables.has(table); }

  list(table) {
    return [...(this.tables.get(table)?.values() ?? [])].map((e) => e.inst).sort(byId);
  }

  lookup(table, id) { return this.tables.get(table)?.get(id)?.inst ?? null; }

  // route returns the routing table of table, built again only after an
  // instance of positive weight came or went or a weight changed.
  route(table) {
    const view = this.tables.get(table);
    if (!view) return null;
    const gen = this.gen.get(table) ?? 0, built = this.routes.get(table);
    if (built && built.gen === gen) return built.rt;
    const rt = buildRoute([...view.values()].map((e) => e.inst));
    this.routes.set(table, { gen, rt });
    return rt;
  }

  // pick and pickN pass over the owners that do not serve now, and return
  // the instances as the view holds them now.
  pick(table, key) {
    const owner = pickRoute(this.route(table), key, this._serves(table));
    return owner ? this.lookup(table, owner.id) : null;
  }

  pickN(table, key, n) {
    return pickNRoute(this.route(table), key, n, this._serves(table)).map((o) => this.lookup(table, o.id));
  }

  _serves(table) {
    return (o) => { const cur = this.lookup(table, o.id); return !!cur && serving(cur); };
  }

  // notify runs f after the events queued before it.
  notify(f) {
    if (this.stopped) return;
    this.queue.push({ call: f });
    this._wake();
  }

  // flush settles once every event queued before it was delivered.
  async flush() {
    if (this.stopped) throw new StoppedError();
    await new Promise((resolve) => { this.queue.push({ barrier: resolve }); this._wake(); });
    if (this.stopped) throw new StoppedError();
  }

  // stop ends delivery: the listener in progress finishes, nothing else is told.
  stop() {
    if (this.stopped) return;
    this.stopped = true;
    for (const q of this.queue) q.barrier?.();
    this.queue = [];
    this.pending.clear();
  }

  _wake() {
    if (this.draining || this.stopped) return;
    this.draining = true;
    setImmediate(() => this._drain());
  }

  async _drain() {
    while (!this.stopped && this.queue.length) {
      const q = this.queue.shift();
      if (q.barrier) q.barrier();
      else if (q.call) await q.call().catch(() => {});
      else {
        const latest = this.pending.get(q.key);
        this.pending.delete(q.key);
        await this._tell(q.key, latest);
      }
    }
    this.draining = false;
  }

  async _tell(key, latest) {
    const old = this.known.get(key);
    if (!latest) {
      if (!old) return; // added and removed before anyone heard of it
      this.known.delete(key);
      return this.deliver('remove', [old]);
    }
    if (old && same(old, latest)) return;
    this.known.set(key, latest);
    if (!old) return this.deliver('add', [latest]);
    if (old.incarnation !== latest.incarnation) {
      await this.deliver('remove', [old]);
      return this.deliver('add', [latest]);
    }
    return this.deliver('update', [old, latest]);
  }
}
