// svcwatch's Redis protocol, version 1, as protocol/protocol.go and codec.go
// define it: the keys of a table, the scripts, the record and the message.

import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { nameProblem, bytes, MAX_ID, MAX_NAME } from './validate.js';

// The keys of a table: "prefix:{table}:suffix"; script is the KEYS every script takes.
export function tableKeys(prefix, table) {
  const k = (s) => `${prefix}:{${table}}:${s}`;
  const keys = { inst: k('inst'), exp: k('exp'), rev: k('rev'), epoch: k('epoch'), meta: k('meta'), channel: k('ch') };
  keys.script = [keys.inst, keys.exp, keys.rev, keys.epoch, keys.meta];
  return keys;
}

// The catalog of the tables under a prefix (protocol/catalog.go):
// "prefix:catalog:{prefix}:suffix", in a Cluster slot of its own; script is
// the KEYS of catalog_touch and catalog_drop.
export function catalogKeys(prefix) {
  const base = `${prefix}:catalog:{${prefix}}:`;
  const keys = { tables: base + 'tables', rev: base + 'rev', channel: base + 'ch', seeded: base + 'seeded' };
  keys.script = [keys.tables, keys.rev];
  return keys;
}

// Every table script is the prelude followed by its own body, byte for byte as
// in protocol/scripts (copied into ../scripts by `npm run sync-scripts`); a
// catalog script is its file alone (PROTOCOL.md, 6.1). gc and catalog_due are
// here for completeness: this client does not collect.
const lua = (name) => readFileSync(new URL(`../scripts/${name}.lua`, import.meta.url), 'utf8');
const prelude = lua('prelude');
const script = (name, src) => ({ name, src, sha: createHash('sha1').update(src).digest('hex') });
export const SCRIPTS = {};
for (const name of ['register', 'heartbeat', 'update', 'deregister', 'check', 'load', 'gc']) SCRIPTS[name] = script(name, prelude + lua(name));
export const CATALOG_SCRIPTS = {};
for (const name of ['catalog_touch', 'catalog_drop', 'catalog_due']) CATALOG_SCRIPTS[name] = script(name, lua(name));

export const REAP_LIMIT = 16;

// token returns a random 16-hex-digit token (incarnations, record versions, epochs).
export const token = () => randomBytes(8).toString('hex');

// encodeMeta returns meta as the JSON object the scripts embed ('' when
// empty), keys sorted and escaped as Go's encoding/json does.
export function encodeMeta(meta) {
  if (!meta || !Object.keys(meta).length) return '';
  const sorted = Object.fromEntries(Object.keys(meta).sort().map((k) => [k, meta[k]]));
  return JSON.stringify(sorted).replace(/[<>&\u2028\u2029]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));
}

// stateOf reads a record's state; one this client does not know takes no new work.
const stateOf = (s) => (s === undefined || s === '' || s === 'serving' ? 'serving' : s === 'draining' ? 'draining' : 'unhealthy');

// makeInstance returns a frozen Instance (its meta frozen too: never {} shared).
export function makeInstance(f) {
  return Object.freeze({
    table: f.table, id: f.id, name: f.name, desc: f.desc ?? '', meta: Object.freeze({ ...(f.meta ?? {}) }),
    state: f.state ?? 'serving', incarnation: f.incarnation ?? '', registeredAt: f.registeredAt ?? 0,
    key: f.table + '/' + f.id,
  });
}

const isStr = (v) => typeof v === 'string';
const badData = (msg) => new Error('svcwatch: unreadable record: ' + msg);

// decodeRecord turns a stored record into an Instance of table, refusing
// what a registration could not have written (record.go).
export function decodeRecord(table, id, raw, maxDesc) {
  if (!isStr(raw)) throw badData('not a string');
  if (bytes(raw) > 6 * maxDesc + 4096) throw badData(`${bytes(raw)} bytes, over the size limit`);
  let r;
  try { r = JSON.parse(raw); } catch (err) { throw badData(err.message); }
  if (!r || typeof r !== 'object' || Array.isArray(r)) throw badData('not an object');
  for (const f of ['inc', 'ver', 'name', 'desc', 'state']) if (r[f] !== undefined && r[f] !== null && !isStr(r[f])) throw badData(`${f} is not a string`);
  for (const f of ['reg', 'ttl']) if (r[f] !== undefined && r[f] !== null && !Number.isInteger(r[f])) throw badData(`${f} is not an integer`);
  if (r.meta !== undefined && r.meta !== null && (typeof r.meta !== 'object' || Array.isArray(r.meta) || !Object.values(r.meta).every(isStr))) {
    throw badData('meta is not an object of strings');
  }
  if (!r.inc) throw badData('no incarnation');
  if (nameProblem('id', id, MAX_ID, false) || nameProblem('name', r.name, MAX_NAME, true)) throw badData('missing or bad id or name');
  const desc = r.desc ?? '';
  let size = bytes(desc);
  for (const [k, v] of Object.entries(r.meta ?? {})) size += bytes(k) + bytes(v);
  if (size > maxDesc) throw badData(`desc and meta are ${size} bytes, over the limit of ${maxDesc}`);
  return makeInstance({ table, id, name: r.name, desc, meta: r.meta, state: stateOf(r.state ?? ''), incarnation: r.inc, registeredAt: r.reg ?? 0 });
}

// decodeMessage parses a channel message, checking only the envelope.
export function decodeMessage(payload) {
  let m;
  try { m = JSON.parse(payload); } catch (err) { throw badData('message: ' + err.message); }
  if (!m || typeof m !== 'object') throw badData('message is not an object');
  if (['add', 'update'].includes(m.op)) {
    if (!isStr(m.rec) || !m.rec) throw badData(`message ${m.op} without a record`);
  } else if (!['del', 'expired'].includes(m.op)) throw badData(`message op ${JSON.stringify(m.op)}`);
  if (!isStr(m.e) || !m.e || !Number.isInteger(m.r) || m.r <= 0 || !isStr(m.id) || !m.id) {
    throw badData('message without epoch, revision or id');
  }
  return { e: m.e, r: m.r, p: isStr(m.p) ? m.p : '', t: isStr(m.t) ? m.t : '', op: m.op, id: m.id, rec: m.rec };
}
