// Pick: weighted Maglev consistent hashing over instance IDs, to the bit as
// the Go library does it (pick.go; PROTOCOL.md, section 9), so that Node and Go pick the same owner for every key. The table
// holds every instance of positive weight whatever its State; Pick walks from
// the key's slot to the first owner that serves, so that a drain moves only
// the drained instance's keys and a change of State rebuilds nothing.

const enc = new TextEncoder();

export function hash32(s) {
  let h = 2166136261; // FNV-1a 32 offset basis
  for (const b of enc.encode(s)) h = Math.imul(h ^ b, 16777619); // UTF-8 bytes, FNV prime, mod 2^32
  h ^= h >>> 16; h = Math.imul(h, 0x85ebca6b); // MurmurHash3 fmix32
  h ^= h >>> 13; h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

// atoi reads a weight as Go's strconv.Atoi does: an int64, else undefined.
function atoi(v) {
  if (typeof v !== 'string' || !/^[+-]?[0-9]+$/.test(v)) return undefined;
  const n = BigInt(v[0] === '+' ? v.slice(1) : v);
  return n < -9223372036854775808n || n > 9223372036854775807n ? undefined : n;
}

// weight is an instance's share of keys relative to its peers' (Go's
// Instance.Weight): meta.weight, 1 when absent, unreadable or negative.
export function weight(inst) {
  const meta = inst?.meta;
  if (!meta || !Object.hasOwn(meta, 'weight')) return 1;
  const n = atoi(meta.weight);
  return n === undefined || n < 0n ? 1 : Number(n);
}

// routeWeight is an instance's weight in the routing table, capped at
// 1,000,000 (0 when absent). Its State does not count.
export const routeWeight = (inst) => (inst ? Math.min(weight(inst), 1000000) : 0);

// serving: the State takes new work (absent, '' or 'serving') and the weight is positive.
export const serving = (inst) => (inst.state === undefined || inst.state === '' || inst.state === 'serving') && weight(inst) > 0;

const PRIMES = [655373, 6553577];
const gcd = (a, b) => { while (b !== 0) [a, b] = [b, a % b]; return a; };

// buildRoute builds the routing table of instances ({id, state, meta}) of
// distinct IDs; null when none has a positive weight.
export function buildRoute(instances) {
  const el = instances
    .filter((i) => routeWeight(i) > 0)
    .map((i) => ({ inst: i, bytes: Buffer.from(i.id, 'utf8'), w: routeWeight(i) }))
    .sort((a, b) => Buffer.compare(a.bytes, b.bytes)); // UTF-8 byte order
  const n = el.length;
  if (n === 0) return null;
  let M = PRIMES[PRIMES.length - 1];
  for (const p of PRIMES) if (p >= 100 * n) { M = p; break; }
  let g = 0;
  for (const e of el) g = gcd(g, e.w);
  let W = 0;
  for (const e of el) { e.w /= g; W += e.w; }
  let assigned = 0;
  for (const e of el) {
    const a = M * e.w; // < 2^53: exact
    e.quota = (a - (a % W)) / W; // floor(M*w/W), exactly
    assigned += e.quota;
  }
  for (let i = 0; assigned < M; i++) { el[i].quota++; assigned++; }
  for (const e of el) {
    e.next = hash32('offset:' + e.inst.id) % M;
    e.skip = (hash32('skip:' + e.inst.id) % (M - 1)) + 1;
    e.left = e.quota;
  }
  const table = new Int32Array(M).fill(-1);
  let active = [];
  for (let i = 0; i < n; i++) if (el[i].quota > 0) active.push(i);
  while (active.length > 0) {
    const still = [];
    for (const i of active) {
      const e = el[i];
      let c = Math.min(e.w, e.left);
      e.left -= c;
      for (; c > 0; c--) {
        let p = e.next;
        while (table[p] !== -1) { p += e.skip; if (p >= M) p -= M; }
        table[p] = i;
        p += e.skip; if (p >= M) p -= M;
        e.next = p;
      }
      if (e.left > 0) still.push(i);
    }
    active = still;
  }
  return { M, table, insts: el.map((e) => e.inst), holders: el.filter((e) => e.quota > 0).length };
}

// pickRoute returns the owner of the first slot from the key's slot on (+1,
// +2, ... mod M) that serves (isServing, by default the State the instance
// had at the build); null when none does.
export function pickRoute(rt, key, isServing = serving) {
  if (!rt) return null;
  let s = hash32(key) % rt.M, o = rt.table[s];
  if (isServing(rt.insts[o])) return rt.insts[o];
  const asked = new Uint8Array(rt.insts.length); // ask each owner once
  asked[o] = 1;
  for (let c = 1, met = 1; c < rt.M && met < rt.holders; c++) {
    if (++s === rt.M) s = 0;
    o = rt.table[s];
    if (asked[o]) continue;
    if (isServing(rt.insts[o])) return rt.insts[o];
    asked[o] = 1;
    met++;
  }
  return null;
}

// pickNRoute returns up to n distinct serving owners met on the same walk, in
// that order, until n are found or every owner was met.
export function pickNRoute(rt, key, n, isServing = serving) {
  if (!rt || !(n > 0)) return [];
  n = Math.min(n, rt.holders);
  const out = [], met = new Set();
  let s = hash32(key) % rt.M;
  for (let c = 0; c < rt.M && out.length < n && met.size < rt.holders; c++) {
    const o = rt.table[s];
    if (!met.has(o)) {
      met.add(o);
      if (isServing(rt.insts[o])) out.push(rt.insts[o]);
    }
    if (++s === rt.M) s = 0;
  }
  return out;
}
