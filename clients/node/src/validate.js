// The checks of names, Descs, Meta, States and options, as the Go library
// makes them (validate.go, options.go): each returns problems, never throws.

export const MAX_TABLE = 256, MAX_ID = 128, MAX_NAME = 256, MAX_META_KEYS = 64;
export const STATES = ['serving', 'draining', 'unhealthy'];
export const bytes = (s) => Buffer.byteLength(s, 'utf8');
const q = JSON.stringify;
const ws = /[\p{White_Space}\p{Cc}]/u; // Go's unicode.IsSpace || unicode.IsControl
const lone = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/; // a lone surrogate
const wellFormed = (s) => !lone.test(s); // encodes as valid UTF-8 (String#isWellFormed, before Node 20)

// nameProblem rejects what would break the key layout: the hash-tag braces,
// white space, control characters, invalid UTF-8 and, unless slash, '/'.
export function nameProblem(what, s, max, slash) {
  if (typeof s !== 'string' && s !== undefined && s !== null) return `${what} is not a string`;
  if (!s) return `${what} is empty`;
  if (bytes(s) > max) return `${what} is ${bytes(s)} bytes, over the limit of ${max}`;
  if (!wellFormed(s)) return `${what} ${q(s)} is not valid UTF-8`;
  const bad = /[{}]/.exec(s);
  if (bad) return `${what} ${q(s)} contains ${q(bad[0])}, which would break the Redis hash tag`;
  if (ws.test(s)) return `${what} ${q(s)} contains white space or a control character`;
  if (!slash && s.includes('/')) return `${what} ${q(s)} contains '/'`;
  return null;
}

export const tableProblem = (t) => nameProblem('table', t, MAX_TABLE, true);

export function descProblem(desc, max) {
  if (typeof desc !== 'string') return 'desc is not a string';
  if (bytes(desc) > max) return `desc is ${bytes(desc)} bytes, over the limit of ${max}`;
  if (!wellFormed(desc)) return 'desc is not valid UTF-8';
  return null;
}

// metaProblem: at most 64 keys, each non-empty and printable, string values
// of valid UTF-8, a "weight" that is a non-negative integer (as Go's Atoi
// reads it, without a '+' or spaces), Desc and Meta together within max bytes.
export function metaProblem(meta, desc, max) {
  if (meta === undefined || meta === null) return null;
  if (typeof meta !== 'object' || Array.isArray(meta)) return 'meta is not an object of strings';
  const keys = Object.keys(meta);
  if (keys.length > MAX_META_KEYS) return `meta has ${keys.length} keys, over the limit of ${MAX_META_KEYS}`;
  let size = typeof desc === 'string' ? bytes(desc) : 0;
  for (const k of keys) {
    const v = meta[k];
    if (k === '') return 'meta has an empty key';
    if (!wellFormed(k) || ws.test(k)) return `meta key ${q(k)} is not printable`;
    if (typeof v !== 'string') return `meta value of ${q(k)} is not a string`;
    if (!wellFormed(v)) return `meta value of ${q(k)} is not valid UTF-8`;
    size += bytes(k) + bytes(v);
  }
  if (Object.hasOwn(meta, 'weight')) {
    const w = meta.weight;
    if (!/^-?[0-9]+$/.test(w) || BigInt(w) < 0n || BigInt(w) > 9223372036854775807n) {
      return `meta weight ${q(w)} is not a non-negative integer`;
    }
  }
  if (size > max) return `desc and meta are ${size} bytes, over the limit of ${max}`;
  return null;
}

export const stateProblem = (s) => (STATES.includes(s) ? null : `unknown state ${q(s)}`);

const OPTIONS = ['ttl', 'keepAlive', 'scanInterval', 'resyncInterval', 'keyPrefix', 'tables', 'watchOnly',
  'maxDescSize', 'restartReplace', 'logger'];
const positive = (v) => Number.isInteger(v) && v > 0;

// configure fills the defaults (all durations in ms) and checks the client,
// self and the options together; problems lists everything wrong.
export function configure(client, self, options) {
  const problems = [];
  const bad = (p) => p && problems.push(p);
  if (!client || typeof client.sendCommand !== 'function' || typeof client.duplicate !== 'function') {
    bad('client is not a node-redis client');
  } else if (typeof client.getSlotRandomNode === 'function' || client.masters !== undefined) {
    bad('a cluster client is not supported: pass the client of one Redis node');
  }
  options ??= {};
  for (const k of Object.keys(options)) if (!OPTIONS.includes(k)) bad(`unknown option ${q(k)}`);
  const c = {
    ttl: options.ttl ?? 10000, keepAlive: options.keepAlive, scanInterval: options.scanInterval,
    resyncInterval: options.resyncInterval ?? 60000, keyPrefix: options.keyPrefix ?? 'svcwatch',
    watchOnly: !!options.watchOnly, maxDescSize: options.maxDescSize ?? 64 << 10,
    restartReplace: options.restartReplace ?? true, logger: options.logger === undefined ? console : options.logger,
  };
  for (const k of ['ttl', 'resyncInterval', 'maxDescSize']) if (!positive(c[k])) bad(`${k} ${c[k]} is not a positive integer`);
  for (const k of ['keepAlive', 'scanInterval']) if (c[k] !== undefined && !positive(c[k])) bad(`${k} ${c[k]} is not a positive integer`);
  bad(nameProblem('key prefix', c.keyPrefix, MAX_TABLE, false));
  if (!problems.length) {
    c.keepAlive ??= Math.floor(c.ttl / 5);
    c.scanInterval ??= Math.min(4000, Math.floor((c.ttl * 2) / 5));
    if (c.ttl <= 2 * c.keepAlive) bad(`ttl ${c.ttl} must be more than twice the keepAlive ${c.keepAlive}`);
    if (2 * c.scanInterval >= c.ttl) bad(`scanInterval ${c.scanInterval} must be less than half the ttl ${c.ttl}`);
  }
  self ??= {};
  const s = c.watchOnly
    ? { table: self.table, id: '', name: '', desc: '', meta: null, state: 'serving' }
    : { table: self.table, id: self.id, name: self.name, desc: self.desc ?? '', meta: self.meta ?? null, state: self.state ?? 'serving' };
  bad(tableProblem(s.table));
  if (!c.watchOnly) {
    bad(nameProblem('id', s.id, MAX_ID, false) || nameProblem('name', s.name, MAX_NAME, true) || stateProblem(s.state) ||
      descProblem(s.desc, c.maxDescSize) || metaProblem(s.meta, s.desc, c.maxDescSize));
  }
  const tables = options.tables ?? [];
  if (!Array.isArray(tables)) bad('tables is not an array');
  else for (const t of tables) bad(tableProblem(t));
  c.tables = [...new Set([s.table, ...(Array.isArray(tables) ? tables : [])])];
  if (s.meta && !problems.length) s.meta = Object.keys(s.meta).length ? { ...s.meta } : null;
  return { conf: c, self: s, problems };
}
