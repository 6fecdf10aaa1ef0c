// Pick's test vectors: the Go library's (pick_test.go, TestRouteGoldenVectors;
// PROTOCOL.md, section 9), so that both pick alike.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { hash32, weight, buildRoute, pickRoute, pickNRoute } from '../src/index.js';

test('hash32 vectors', () => {
  const want = { '': 2872998923, a: 444641715, 'player-42': 1541211778, '玩家': 2538123268,
    'offset:game-eu-01': 3613746228, 'skip:game-eu-01': 1366039909 };
  for (const [s, h] of Object.entries(want)) assert.equal(hash32(s), h, `hash32(${JSON.stringify(s)})`);
});

test('weight reads meta.weight as Go does', () => {
  const w = (v) => weight({ meta: v === undefined ? {} : { weight: v } });
  assert.deepEqual([w(undefined), w('3'), w('+3'), w('007'), w('0'), w('-0'), w('-2'), w('abc'), w('1.5'), w(' 2'),
    w('9223372036854775808')], [1, 3, 3, 7, 0, 0, 1, 1, 1, 1, 1]);
});

// The spec's table: 10 instances in it (8 serving, 1 draining, 1 unhealthy), 1 not (weight 0).
const inst = (id, w, state = 'serving') => ({ id, state, meta: w === '' ? {} : { weight: w } });
const golden = [
  inst('game-eu-01', '1'), inst('game-eu-02', '2'), inst('game-eu-03', '3'), inst('game-us-01', ''),
  inst('game-us-02', '5'), inst('game-ap-01', '1'), inst('game-ap-02', '4'), inst('gs-é', '2'),
  inst('game-eu-04', '1', 'draining'), inst('game-us-03', '0'), inst('game-ap-03', '', 'unhealthy'),
];

// key, slot(key), the slot's owner, PickN(key, 3) (the first is Pick), Pick when game-us-02 drains too.
const picks = [
  ['', 499064, 'game-us-02', 'game-us-02,game-ap-02,game-us-01', 'game-ap-02'],
  ['a', 298821, 'game-eu-02', 'game-eu-02,game-us-02,game-ap-02', 'game-eu-02'],
  ['player-0', 67391, 'game-us-02', 'game-us-02,game-ap-02,game-eu-02', 'game-ap-02'],
  ['player-1', 289676, 'game-eu-03', 'game-eu-03,game-ap-02,game-us-02', 'game-eu-03'],
  ['player-2', 444663, 'game-ap-02', 'game-ap-02,gs-é,game-us-02', 'game-ap-02'],
  ['player-3', 352735, 'game-eu-02', 'game-eu-02,game-us-02,gs-é', 'game-eu-02'],
  ['player-42', 429855, 'game-eu-03', 'game-eu-03,game-ap-02,gs-é', 'game-eu-03'],
  ['player-99999', 164298, 'game-us-02', 'game-us-02,game-us-01,game-eu-03', 'game-us-01'],
  ['玩家', 519012, 'gs-é', 'gs-é,game-eu-02,game-us-02', 'gs-é'],
  ['room:7', 234407, 'game-us-02', 'game-us-02,game-ap-02,game-eu-03', 'game-ap-02'],
  ['match/eu/123', 137489, 'gs-é', 'gs-é,game-us-02,game-ap-02', 'gs-é'],
  ['guild-alpha', 425417, 'game-ap-01', 'game-ap-01,game-ap-02,game-eu-03', 'game-ap-01'],
  ['u1', 164252, 'gs-é', 'gs-é,game-eu-02,game-ap-02', 'gs-é'],
  ['u2', 314793, 'game-us-02', 'game-us-02,game-eu-03,game-ap-02', 'game-eu-03'],
  ['u3', 46755, 'game-us-01', 'game-us-01,game-ap-02,game-eu-03', 'game-us-01'],
  ['session-deadbeef', 200589, 'game-ap-01', 'game-ap-01,game-eu-03,game-eu-02', 'game-ap-01'],
  ['x', 309408, 'game-eu-02', 'game-eu-02,game-eu-03,gs-é', 'game-eu-02'],
  ['Zürich', 578630, 'gs-é', 'gs-é,game-eu-03,game-eu-02', 'gs-é'],
  ['player-1000', 354251, 'game-ap-02', 'game-ap-02,game-eu-02,game-eu-01', 'game-ap-02'],
  ['player-12345', 608327, 'game-ap-02', 'game-ap-02,game-eu-02,gs-é', 'game-ap-02'],
  ['player-34', 424343, 'game-eu-04', 'gs-é,game-eu-02,game-us-02', 'gs-é'],
  ['player-41', 351167, 'game-eu-04', 'game-eu-01,game-us-02,game-eu-02', 'game-eu-01'],
  ['player-65', 315664, 'game-ap-03', 'game-us-02,game-ap-02,game-eu-03', 'game-ap-02'],
  ['player-75', 539142, 'game-ap-03', 'game-ap-02,game-eu-03,game-us-02', 'game-ap-02'],
  ['player-286', 633057, 'game-eu-04', 'game-eu-02,game-ap-02,game-eu-03', 'game-eu-02'],
  ['player-647', 214569, 'game-ap-03', 'game-eu-03,game-ap-02,game-eu-02', 'game-eu-03'],
];

const slots = { 'game-ap-01': 31209, 'game-ap-02': 124833, 'game-ap-03': 31209, 'game-eu-01': 31209,
  'game-eu-02': 62416, 'game-eu-03': 93624, 'game-eu-04': 31208, 'game-us-01': 31208,
  'game-us-02': 156041, 'gs-é': 62416 };

test('pick and pickN vectors, in any order of the instances', () => {
  for (const insts of [golden, [...golden].reverse()]) {
    const rt = buildRoute(insts);
    assert.equal(rt.M, 655373);
    assert.equal(rt.insts.length, 10);
    assert.equal(rt.holders, 10);
    const count = {};
    for (const o of rt.table) count[rt.insts[o].id] = (count[rt.insts[o].id] ?? 0) + 1;
    assert.deepEqual(count, slots);
    const usDraining = (i) => i.state === 'serving' && i.id !== 'game-us-02';
    for (const [key, slot, owner, pick3, drained] of picks) {
      assert.equal(hash32(key) % rt.M, slot, `slot(${key})`);
      assert.equal(rt.insts[rt.table[slot]].id, owner, `owner of slot(${key})`);
      assert.equal(pickRoute(rt, key).id, pick3.split(',')[0], `pick(${key})`);
      assert.equal(pickNRoute(rt, key, 3).map((i) => i.id).join(), pick3, `pickN(${key}, 3)`);
      assert.equal(pickRoute(rt, key, usDraining).id, drained, `pick(${key}) with game-us-02 draining`);
    }
  }
});

test('pick when nothing serves, pickN lengths', () => {
  assert.equal(buildRoute([]), null);
  assert.equal(pickRoute(null, 'k'), null);
  const rt = buildRoute([inst('a', '1', 'draining'), inst('b', '1', 'unhealthy')]);
  assert.equal(pickRoute(rt, 'k'), null);
  assert.deepEqual(pickNRoute(rt, 'k', 3), []);
  const rt2 = buildRoute(golden);
  assert.equal(pickNRoute(rt2, 'k', 100).length, 8); // every serving instance, once
  assert.deepEqual(pickNRoute(rt2, 'k', 0), []);
});
