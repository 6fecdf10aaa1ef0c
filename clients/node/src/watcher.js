// Watcher: svcwatch on Redis for Node.js, following the Go library's
// RedisServiceWatcher (redis_*.go) step for step: the same scripts, keys,
// records and messages, the same registration (register, heartbeat answers,
// update, deregister) and the same way of staying current (subscribe before
// the first read, apply messages in chain order, scan, reload, anti-entropy).

import { EventEmitter } from 'node:events';
import { InvalidError, DuplicateIDError, StoppedError, ReplacedError, SvcwatchError } from './errors.js';
import { configure, descProblem, metaProblem, stateProblem } from './validate.js';
import { tableKeys, catalogKeys, SCRIPTS, CATALOG_SCRIPTS, REAP_LIMIT, token, encodeMeta, makeInstance, decodeRecord, decodeMessage } from './protocol.js';
import { View, byId } from './view.js';

const EARLY_MAX = 1024, HISTORY = 256, SILENT_MOVES_MAX = 2, LOG_ONCE_MAX = 1024;
// CATALOG_EVERY: how often a registered process touches its table in the
// catalog (less up to a quarter at random), as often as Go's collection pass
// at its longest, so that a live table is never due for collection.
const CATALOG_EVERY = 10 * 60 * 1000;

// isReply tells an error reply of Redis (it answered) from a failed round trip.
const isReply = (err) => {
  for (let p = err && Object.getPrototypeOf(err); p; p = Object.getPrototypeOf(p)) if (p.constructor?.name === 'ErrorReply') return true;
  return false;
};

// backoff: from 50 ms doubling to 2 s, with equal jitter.
const backoff = (attempt) => { const d = Math.min(50 * 2 ** Math.min(attempt, 6), 2000); return d / 2 + Math.random() * (d / 2); };

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const done = () => { clearTimeout(t); signal.removeEventListener('abort', done); resolve(); };
    const t = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}

const stateName = (s) => (s === 'serving' ? '' : s);

export class Watcher extends EventEmitter {
  // client: a connected node-redis (v5) client of one Redis node; self:
  // {table, id, name, desc, meta, state} (watch-only: {table}); options as
  // in the README. Every bad argument is reported at once in an InvalidError.
  constructor(client, self, options) {
    super();
    const { conf, self: me, problems } = configure(client, self, options);
    if (problems.length) throw new InvalidError(problems);
    this._c = conf;
    this._log = conf.logger ?? {};
    this._client = client;
    this._me = { ...me, incarnation: '', registeredAt: 0 };
    this._state = 'new'; // starting, running, stopped
    this._syncs = new Map(); // table -> its position in Redis (see _syncFor)
    this._byChannel = new Map();
    for (const t of conf.tables) this._syncFor(t);
    this._view = new View(conf.watchOnly ? '' : `${me.table}/${me.id}`, (ev, args) => this._tell(ev, args));
    this._st = { connected: false, registered: false, confirmedAt: 0, heartbeats: 0, reregistrations: 0, fullLoads: 0, events: 0, lastSync: 0 };
    this._recVer = ''; // the version of self's record written last
    this._cat = catalogKeys(conf.keyPrefix);
    this._catalogDue = false; // adding self's table to the catalog failed: the heartbeat tries again
    this._catalogNext = 0; // when the heartbeat touches self's table in the catalog again
    this._regTail = Promise.resolve(); // serialises register, update, deregister
    this._regBusy = 0;
    this._subs = new Set();
    this._timers = {};
    this._logged = new Set();
    this._down = false;
    this._listener = (message, channel) => this._onMessage(channel, message);
  }

  // ---- the API ----

  self() { return makeInstance(this._me); }
  services(table) { return this._view.list(table); }
  lookup(table, id) { return this._view.lookup(table, id); }
  pick(table, key) { return this._view.pick(table, key); }
  pickN(table, key, n) { return this._view.pickN(table, key, n); }

  stats() {
    const s = this._st;
    return {
      connected: s.connected, registered: s.registered && Date.now() - s.confirmedAt < this._c.ttl,
      heartbeats: s.heartbeats, reregistrations: s.reregistrations, fullLoads: s.fullLoads, events: s.events,
      lastSync: s.lastSync, state: this._me.state,
    };
  }

  // start subscribes to every watched table, registers self (unless
  // watch-only), loads each table and starts the heartbeat; it resolves once
  // 'add' was delivered for every peer already present. It retries a Redis
  // that does not answer until stop() or signal. On failure it deregisters
  // what it registered and the watcher is stopped.
  async start({ signal } = {}) {
    if (this._state === 'stopped') throw new StoppedError();
    if (this._state !== 'new') throw new InvalidError('start called twice');
    if (this._client.isOpen === false) throw new InvalidError('the client is not connected: await client.connect() first');
    this._state = 'starting';
    const attempt = (this._attempt = new AbortController());
    const onAbort = () => attempt.abort(signal.reason);
    if (signal?.aborted) onAbort();
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      if (!this._c.watchOnly) this._me.incarnation = token();
      await this._openSub();
      if (!this._c.watchOnly) await this._retry('register', () => this._withReg(() => this._registerLocked()));
      for (const ts of this._syncs.values()) await this._retry(`load ${ts.table}`, () => this._load(ts));
      if (this._state !== 'starting') throw new StoppedError();
      this._state = 'running';
      if (!this._c.watchOnly) this._arm('hb', this._c.keepAlive, () => this._hbTick());
      this._arm('scan', this._c.scanInterval, () => this._scanTick());
      this._arm('resync', this._resyncDelay(), () => this._resyncTick());
      this._kick();
      await this._view.flush();
    } catch (err) {
      const stopped = this._state === 'stopped';
      this._state = 'stopped';
      await (this._stopping ??= this._shutdown()).catch(() => {});
      throw stopped ? new StoppedError() : err;
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  // stop deregisters self, so that peers hear at once, and ends every timer
  // and the subscription. No listener is called after it was called (one in
  // progress finishes). Idempotent.
  async stop() {
    if (this._stopping) return this._stopping.catch(() => {});
    const started = this._state !== 'new';
    this._state = 'stopped';
    this._attempt?.abort(new StoppedError());
    return (this._stopping = started ? this._shutdown() : Promise.resolve(this._view.stop()));
  }

  // setDesc, setMeta and setState change self's record; peers get 'update'.
  // Before start they only set what start registers.
  setDesc(desc) {
    const max = this._c.maxDescSize;
    return this._changeSelf('set desc', 'desc', desc, (me) => descProblem(desc, max) || metaProblem(me.meta, desc, max));
  }

  setMeta(meta) {
    const copy = meta && Object.keys(meta).length ? { ...meta } : null;
    return this._changeSelf('set meta', 'meta', copy, (me) => metaProblem(meta, me.desc, this._c.maxDescSize));
  }

  setState(state) { return this._changeSelf('set state', 'state', state, () => stateProblem(state)); }

  // drain sets 'draining', awaits wait() (your players leave), then stops.
  async drain(wait) {
    await this.setState('draining');
    if (wait) await wait();
    return this.stop();
  }

  // ---- self's registration (redis_heartbeat.go, redis_self.go) ----

  _withReg(fn) {
    const run = this._regTail.then(async () => {
      this._regBusy++;
      try { return await fn(); } finally { this._regBusy--; }
    });
    this._regTail = run.catch(() => {});
    return run;
  }

  async _registerLocked() {
    if (this._state === 'stopped') throw new StoppedError();
    const me = this._me;
    this._recVer ||= token();
    const res = await this._eval(SCRIPTS.register, this._selfSync(), [me.id, me.incarnation, me.name, me.desc, this._c.ttl,
      this._c.restartReplace ? 1 : 0, me.registeredAt, this._recVer, encodeMeta(me.meta), stateName(me.state)]);
    if (!Array.isArray(res) || res[0] !== 'ok') {
      if (res?.[0] === 'dup') throw new DuplicateIDError(`${me.table}/${me.id} is held by a live process at ${JSON.stringify(String(res[1]))}`);
      throw new Error(`svcwatch: register: unexpected reply ${JSON.stringify(res)}`);
    }
    me.registeredAt = Number(res[1]);
    this._confirm();
    await this._touchCatalog();
  }

  // _touchCatalog adds self's table to the catalog of tables, or raises its
  // score (PROTOCOL.md, 7.15), as the Go library does after every
  // registration and at every collection pass: a second call, idempotent, best
  // effort. A failure is logged and tried again at the next heartbeats.
  async _touchCatalog() {
    const cat = this._cat;
    try {
      await this._evalKeys(CATALOG_SCRIPTS.catalog_touch, cat.script, [cat.channel, this._me.table, '']);
      if (this._catalogDue) this._log.info?.('svcwatch: added the table to the catalog', this._me.table);
      this._catalogDue = false;
      this._catalogNext = Date.now() + CATALOG_EVERY - Math.random() * (CATALOG_EVERY / 4);
    } catch (err) {
      if (!this._catalogDue) this._log.warn?.('svcwatch: adding the table to the catalog failed; trying again at the next heartbeat', this._me.table, err.message);
      this._catalogDue = true;
    }
  }

  // _updateLocked writes self's record over this incarnation's (a new
  // version unless it rewrites a stale one), or registers again if it is missing.
  async _updateLocked(newVersion) {
    const me = this._me;
    if (newVersion || !this._recVer) this._recVer = token();
    const res = await this._eval(SCRIPTS.update, this._selfSync(), [me.id, me.incarnation, me.name, me.desc, this._c.ttl,
      this._recVer, encodeMeta(me.meta), stateName(me.state)]);
    if (res === 'missing') return this._registerLocked();
    if (res === 'replaced') throw new ReplacedError(`${me.table}/${me.id}`);
    this._confirm();
  }

  // _changeSelf sets a field of self and writes the record, undoing the change if the write fails.
  async _changeSelf(what, field, value, problem) {
    if (this._c.watchOnly) throw new InvalidError(`${what} on a watch-only watcher`);
    if (this._state === 'stopped') throw new StoppedError();
    return this._withReg(async () => {
      if (this._state === 'stopped') throw new StoppedError();
      const me = this._me, old = me[field], p = problem(me);
      if (p) throw new InvalidError(p);
      me[field] = value;
      if (!me.registeredAt) return; // not registered yet: start registers it so
      try {
        await this._updateLocked(true);
      } catch (err) {
        me[field] = old;
        if (this._state === 'stopped') throw new StoppedError();
        throw err instanceof SvcwatchError ? err : new Error(`svcwatch: ${what}: ${err.message}`, { cause: err });
      }
    });
  }

  _confirm() { this._st.registered = true; this._st.confirmedAt = Date.now(); }

  _hbTick() {
    const began = Date.now();
    this._hbRun = this._heartbeat().then((on) => {
      if (on && this._state === 'running') this._arm('hb', Math.max(0, this._c.keepAlive - (Date.now() - began)), () => this._hbTick());
    });
  }

  // _heartbeat refreshes self's deadline; false when this incarnation stood down.
  async _heartbeat() {
    const me = this._me;
    let res;
    try {
      // A write in flight settles the version: then skip the check.
      res = await this._eval(SCRIPTS.heartbeat, this._selfSync(), [me.id, me.incarnation, this._c.ttl, this._regBusy ? '' : this._recVer]);
    } catch {
      return true; // the next tick tries again; stats().connected is false
    }
    if (res === 'ok' || res === 'stale') {
      this._st.heartbeats++;
      this._confirm();
      if (this._catalogDue || Date.now() >= this._catalogNext) await this._touchCatalog();
      // stale: Redis holds an older record than this process wrote (a failover
      // lost the write): write it again, so that every watcher converges on it.
      if (res === 'stale') {
        await this._withReg(() => this._updateLocked(false)).then(
          () => this._log.warn?.('svcwatch: Redis held an older record of this process (a lost write?); wrote it again', me.table, me.id),
          () => {});
      }
      return true;
    }
    if (res === 'missing') {
      this._st.registered = false;
      try {
        await this._withReg(() => this._registerLocked());
        this._st.reregistrations++;
        this._log.warn?.('svcwatch: registration was missing (Redis lost its data?); registered again', `${me.table}/${me.id}`);
        return true;
      } catch (err) {
        if (!(err instanceof DuplicateIDError)) return true;
        this._standDown(err);
        return false;
      }
    }
    this._standDown(new ReplacedError(`${me.table}/${me.id}`));
    return false;
  }

  // _standDown gives the registration up for good, never fighting the new holder.
  _standDown(err) {
    this._log.error?.('svcwatch: this incarnation is no longer registered and stops heartbeating', err.message);
    this._st.registered = false;
    const self = this.self();
    this._view.notify(() => this._tell('registrationLost', [err, self]));
  }

  // ---- Redis calls (redis_call.go) ----

  _selfSync() { return this._syncs.get(this._me.table); }

  // _eval runs a script on the table's keys with the arguments every script
  // takes, EVALSHA first; a call is bounded by ms (the keepalive interval).
  _eval(script, ts, extra = [], ms = this._c.keepAlive) {
    return this._evalKeys(script, ts.keys.script, [ts.keys.channel, Math.floor(this._c.ttl / 2), REAP_LIMIT, token(), ...extra], ms);
  }

  // _evalKeys runs a script (EVALSHA, then EVAL on NOSCRIPT) on keys with argv.
  async _evalKeys(script, keys, argv, ms = this._c.keepAlive) {
    const args = [String(keys.length), ...keys, ...argv.map(String)];
    try {
      let res;
      try {
        res = await this._call(['EVALSHA', script.sha, ...args], ms);
      } catch (err) {
        if (!isReply(err) || !err.message.startsWith('NOSCRIPT')) throw err;
        res = await this._call(['EVAL', script.src, ...args], ms);
      }
      this._roundTrip(null);
      return res;
    } catch (err) {
      this._roundTrip(err);
      throw err;
    }
  }

  _call(args, ms) {
    const call = this._client.sendCommand(args, { timeout: ms }); // times out while queued
    call.catch(() => {});
    let timer;
    const late = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`svcwatch: Redis did not answer within ${ms} ms`)), ms); });
    return Promise.race([call, late]).finally(() => clearTimeout(timer));
  }

  // _roundTrip records whether Redis answered; an error reply is an answer.
  _roundTrip(err) {
    const reply = !!err && isReply(err), ok = !err || reply;
    this._st.connected = ok;
    if (reply) this._once('reply\0' + err.message, 'error', 'svcwatch: Redis refused a call', err.message);
    else if (ok && this._down) { this._down = false; this._log.info?.('svcwatch: Redis answers again'); }
    else if (!ok && !this._down) { this._down = true; this._log.warn?.('svcwatch: Redis does not answer; keeping the last view', err?.message); }
  }

  _once(key, level, ...args) {
    if (this._logged.has(key)) return;
    if (this._logged.size >= LOG_ONCE_MAX) this._logged.clear();
    this._logged.add(key);
    this._log[level]?.(...args);
  }

  _badOnce(table, id, err) { this._once(`${table}\0${id}`, 'warn', 'svcwatch: skipping unreadable data', table, id, err.message); }

  // _retry runs fn until it succeeds, fails for good, or the attempt ends.
  async _retry(what, fn) {
    const signal = this._attempt.signal;
    let last;
    for (let attempt = 0; ; attempt++) {
      if (signal.aborted) {
        if (this._state === 'stopped') throw new StoppedError();
        throw new Error(`svcwatch: ${what}: aborted (last error: ${last?.message})`, { cause: signal.reason });
      }
      try { return await fn(); } catch (err) {
        if (err instanceof SvcwatchError) throw err;
        last = err;
        await sleep(backoff(attempt), signal);
      }
    }
  }

  // ---- staying current (redis_sync.go, redis_load.go) ----

  _syncFor(table) {
    const ts = {
      table, keys: tableKeys(this._c.keyPrefix, table), loaded: false, epoch: '', rev: 0, tok: '',
      history: new Map(), diverged: false, heard: false, silentMoves: 0, early: [], earlyLost: false,
      holdExpiredUntil: 0, reloadAt: 0, lastLoad: 0, wantEpoch: '', wantRev: 0, wantTok: '', force: false,
    };
    this._syncs.set(table, ts);
    this._byChannel.set(ts.keys.channel, ts);
  }

  // _openSub makes a subscription of its own (a duplicate of the client) and
  // resolves once Redis confirmed every channel. node-redis subscribes again
  // after a reconnect before it is 'ready': then every table is read again.
  async _openSub() {
    const sub = this._client.duplicate();
    this._subs.add(sub);
    let first = true;
    sub.on('error', () => {}); // the calls on the client report outages
    sub.on('ready', () => {
      if (first) first = false;
      else if (this._subs.has(sub)) this._reloadAll('svcwatch: subscription re-established; reading the tables again');
    });
    try {
      await this._retry('connect the subscription', async () => { if (!sub.isOpen) await sub.connect(); });
      await this._retry('subscribe', () => {
        if (!this._subs.has(sub)) throw new StoppedError();
        return sub.subscribe([...this._byChannel.keys()], this._listener);
      });
    } catch (err) {
      this._dropSub(sub);
      throw err;
    }
    return sub;
  }

  _dropSub(sub) {
    this._subs.delete(sub);
    try { sub.destroy(); } catch { /* not open */ }
  }

  // _reloadAll reads every loaded table again soon, jittered so that a
  // cluster-wide reconnect does not become a reload storm.
  _reloadAll(why) {
    if (this._state === 'stopped') return;
    this._log.info?.(why);
    const max = Math.min(this._c.scanInterval / 2, 1000);
    for (const ts of this._syncs.values()) if (ts.loaded) this._schedule(ts, Date.now() + Math.random() * max, true);
    this._kick();
  }

  // _resubscribe replaces a subscription that delivers nothing while its
  // tables change (a middlebox dropped its flow silently).
  async _resubscribe() {
    if (this._resubscribing) return;
    this._resubscribing = true;
    this._log.warn?.('svcwatch: the subscription delivers nothing while its tables change; subscribing again');
    const old = [...this._subs];
    for (const ts of this._syncs.values()) ts.silentMoves = 0;
    try {
      await this._openSub();
      for (const s of old) this._dropSub(s);
      this._reloadAll('svcwatch: subscribed again; reading the tables again');
    } catch { /* the scan keeps the views current meanwhile */ } finally {
      this._resubscribing = false;
    }
  }

  _schedule(ts, at, force, epoch = '', rev = 0, tok = '') {
    if (!ts.reloadAt || at < ts.reloadAt) ts.reloadAt = at;
    if (force) ts.force = true;
    else Object.assign(ts, { wantEpoch: epoch, wantRev: rev, wantTok: tok });
  }

  _remember(ts, rev, tok) {
    ts.rev = rev;
    ts.tok = tok;
    ts.history.set(rev, tok);
    ts.history.delete(rev - HISTORY);
  }

  _onMessage(channel, payload) {
    const ts = this._byChannel.get(channel);
    if (!ts) return;
    const e = { m: null, msgErr: null, inst: null, recErr: null };
    try { e.m = decodeMessage(payload); } catch (err) { e.msgErr = err; this._badOnce(ts.table, '', err); }
    if (e.m && (e.m.op === 'add' || e.m.op === 'update')) {
      try { e.inst = decodeRecord(ts.table, e.m.id, e.m.rec, this._c.maxDescSize); } catch (err) { e.recErr = err; }
    }
    if (!ts.loaded) { // the first read is under way: applied after it
      if (ts.early.length < EARLY_MAX) ts.early.push(e);
      else ts.earlyLost = true;
      return;
    }
    if (this._apply(ts, e) && e.recErr) this._badOnce(ts.table, e.m.id, e.recErr);
    this._kick();
  }

  // _apply applies a message if it is the next revision of the epoch held and
  // follows the change held; anything else (a gap, a new epoch, a rewritten
  // history, junk) makes the table be read again, at most every scan/8.
  _apply(ts, { m, msgErr, inst, recErr }) {
    ts.heard = true;
    const now = Date.now(), soon = Math.max(now, ts.lastLoad + this._c.scanInterval / 8);
    if (msgErr) {
      this._schedule(ts, soon, true);
      return false;
    }
    if (m.e === ts.epoch && m.r <= ts.rev) {
      const tok = ts.history.get(m.r);
      if (tok !== undefined && tok !== m.t) { ts.diverged = true; this._schedule(ts, soon, true); }
      return false; // already in the view
    }
    if (ts.epoch === '' && ts.rev === 0 && m.r === 1 && m.p === '') ts.epoch = m.e; // the first change of a table empty when read
    if (m.e !== ts.epoch || m.r !== ts.rev + 1 || m.p !== ts.tok) {
      ts.diverged ||= m.e === ts.epoch && m.r === ts.rev + 1;
      this._schedule(ts, soon, true);
      return false;
    }
    this._remember(ts, m.r, m.t);
    if (m.op === 'del' || recErr) this._view.remove(ts.table, m.id, 0);
    else if (m.op === 'expired') this._view.remove(ts.table, m.id, now < ts.holdExpiredUntil ? ts.holdExpiredUntil : 0);
    else this._view.put(inst);
    this._st.lastSync = now;
    return true;
  }

  // _load reads the whole table atomically and makes it the view.
  async _load(ts) {
    const res = await this._eval(SCRIPTS.load, ts, [], 2 * this._c.keepAlive);
    this._st.fullLoads++;
    if (!Array.isArray(res) || res.length !== 5) throw new Error(`svcwatch: load ${ts.table}: unexpected reply`);
    const flat = Array.isArray(res[3]) ? res[3] : [], insts = [];
    for (let i = 0; i + 2 < flat.length; i += 3) {
      try { insts.push(decodeRecord(ts.table, String(flat[i]), flat[i + 1], this._c.maxDescSize)); } catch (err) { this._badOnce(ts.table, flat[i], err); }
    }
    insts.sort(byId);
    if (this._applyLoad(ts, String(res[0]), Number(res[1]), String(res[4]), insts)) {
      this._log.warn?.('svcwatch: table data lost, restored or rolled back; holding back removals for one TTL', ts.table);
    }
  }

  // _applyLoad makes a read the view; true when removals are now held back
  // because the table's data was lost, restored or rolled back.
  _applyLoad(ts, epoch, rev, tok, insts) {
    const now = Date.now(), hist = (r) => ts.history.get(r) ?? '';
    ts.lastLoad = now;
    const sameEpoch = ts.loaded && epoch === ts.epoch;
    if (!ts.diverged && sameEpoch && rev < ts.rev && hist(rev) === tok) {
      ts.reloadAt = 0; // messages got ahead of this read
      ts.force = false;
      return false;
    }
    const newEpoch = ts.loaded && ts.epoch !== '' && epoch !== ts.epoch;
    const rewritten = ts.diverged || (sameEpoch && rev <= ts.rev && hist(rev) !== tok);
    let hold = 0;
    // An empty view has nothing to hold back: the table was collected (and
    // maybe re-created), or it was empty when Redis lost it.
    const viewEmpty = (this._view.tables.get(ts.table)?.size ?? 0) === 0;
    if ((newEpoch || rewritten) && !viewEmpty) hold = ts.holdExpiredUntil = now + this._c.ttl;
    if (newEpoch || rewritten || ts.epoch !== epoch) ts.history = new Map();
    ts.epoch = epoch;
    ts.diverged = false;
    this._remember(ts, rev, tok);
    ts.reloadAt = 0;
    ts.force = false;
    this._view.replace(ts.table, insts, hold);
    this._st.lastSync = now;
    if (!ts.loaded) {
      ts.loaded = true;
      for (const e of ts.early) this._apply(ts, e);
      if (ts.earlyLost) this._schedule(ts, now, true);
      ts.early = [];
      ts.earlyLost = false;
    }
    return hold !== 0;
  }

  // _kick runs the reloads that are due, one at a time, and arms the timer
  // of the next one.
  _kick() {
    if (this._state !== 'running') return;
    if (this._reloading) return; // it kicks again when done
    clearTimeout(this._timers.reload);
    const now = Date.now(), due = [];
    let next = 0;
    for (const ts of this._syncs.values()) {
      if (!ts.reloadAt) continue;
      if (!ts.force && ts.epoch === ts.wantEpoch && ts.rev === ts.wantRev && ts.tok === ts.wantTok) ts.reloadAt = 0; // messages caught up
      else if (ts.reloadAt <= now) due.push(ts);
      else if (!next || ts.reloadAt < next) next = ts.reloadAt;
    }
    if (!due.length) {
      if (next) this._arm('reload', next - now, () => this._kick());
      return;
    }
    this._reloading = true;
    (async () => {
      for (const ts of due) {
        if (this._state !== 'running') break;
        try { await this._load(ts); } catch { ts.reloadAt = Date.now() + this._c.scanInterval / 2; } // Redis away: soon again
      }
      this._reloading = false;
      this._kick();
    })();
  }

  // _scan asks each loaded table for its position, all at once (node-redis
  // pipelines them), and schedules a reload of the tables that moved. It
  // reports whether the subscription looks stalled.
  async _scan() {
    const tables = [...this._syncs.values()].filter((ts) => ts.loaded);
    const replies = await Promise.allSettled(tables.map((ts) => this._eval(SCRIPTS.check, ts)));
    let stalled = false;
    tables.forEach((ts, i) => {
      const r = replies[i].value;
      if (!Array.isArray(r) || r.length !== 3) return;
      const epoch = String(r[0]), rev = Number(r[1]), tok = String(r[2]);
      if (epoch === ts.epoch && rev < ts.rev && ts.history.get(rev) === tok) return; // messages overtook the scan
      const forward = epoch === ts.epoch && rev > ts.rev;
      if (forward && !ts.heard) stalled ||= ++ts.silentMoves >= SILENT_MOVES_MAX;
      else ts.silentMoves = 0;
      ts.heard = false;
      if (epoch !== ts.epoch || rev !== ts.rev || tok !== ts.tok) {
        if (epoch === ts.epoch && !forward) ts.diverged = true;
        this._schedule(ts, Date.now() + this._c.scanInterval / 8, !forward, epoch, rev, tok);
      } else this._st.lastSync = Date.now();
    });
    return stalled;
  }

  async _scanTick() {
    const stalled = await this._scan().catch(() => false);
    if (this._state !== 'running') return;
    if (stalled) this._resubscribe();
    this._view.releaseHolds(Date.now());
    this._kick();
    this._arm('scan', this._c.scanInterval, () => this._scanTick());
  }

  // Anti-entropy: every table is read in full every resyncInterval (less up
  // to a quarter at random), whatever the signs say.
  _resyncDelay() { return this._c.resyncInterval - Math.random() * (this._c.resyncInterval / 4); }

  _resyncTick() {
    for (const ts of this._syncs.values()) if (ts.loaded) this._schedule(ts, Date.now(), true);
    this._kick();
    this._arm('resync', this._resyncDelay(), () => this._resyncTick());
  }

  _arm(name, ms, fn) {
    clearTimeout(this._timers[name]);
    this._timers[name] = setTimeout(fn, ms);
  }

  // _tell calls the listeners of an event one at a time, awaiting those that
  // return a promise; a listener that throws is logged and skipped.
  async _tell(ev, args) {
    for (const listener of this.rawListeners(ev)) {
      if (this._view.stopped) return;
      if (ev !== 'registrationLost') this._st.events++;
      try { await listener.apply(this, args); } catch (err) { this._log.error?.(`svcwatch: a '${ev}' listener failed; event skipped`, err); }
    }
  }

  // _shutdown ends the timers and the heartbeat, deregisters, then closes the
  // subscription. Once.
  async _shutdown() {
    this._view.stop();
    for (const t of Object.values(this._timers)) clearTimeout(t);
    await this._hbRun;
    let err = null;
    const me = this._me;
    if (!this._c.watchOnly && me.incarnation) {
      try {
        await this._withReg(() => this._eval(SCRIPTS.deregister, this._selfSync(), [me.id, me.incarnation], Math.max(2 * this._c.keepAlive, 1000)));
      } catch (e) {
        err = new Error(`svcwatch: deregister ${me.table}/${me.id}: ${e.message}`, { cause: e });
      }
    }
    this._st.registered = false;
    for (const sub of [...this._subs]) this._dropSub(sub);
    if (err) throw err;
  }
}
