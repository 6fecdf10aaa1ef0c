// Checks at the door: the Go library's rules and errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Watcher, InvalidError, StoppedError } from '../src/index.js';

const client = { sendCommand() {}, duplicate() {} }; // never called by the constructor
const self = { table: 'game/prod/v1/gate', id: 'gate-1', name: '10.0.0.2:7000' };
const invalid = (s, o, re) => assert.throws(() => new Watcher(client, s, o), (err) => {
  assert.ok(err instanceof InvalidError);
  assert.equal(err.code, 'ERR_INVALID');
  if (re) assert.match(err.message, re);
  return true;
});

test('a good watcher builds, touching no network', () => {
  const w = new Watcher(client, { ...self, desc: '{"zone":1}', meta: { weight: '2', zone: 'eu' }, state: 'draining' });
  assert.equal(w.self().state, 'draining');
  assert.deepEqual(w.self().meta, { weight: '2', zone: 'eu' });
  assert.equal(w.self().key, 'game/prod/v1/gate/gate-1');
  assert.ok(Object.isFrozen(w.self().meta));
  new Watcher(client, { table: 't' }, { watchOnly: true }); // watch-only needs only the table
});

test('names that would break the key layout', () => {
  invalid({ ...self, table: '' }, {}, /table is empty/);
  invalid({ ...self, table: 'a{b' }, {}, /hash tag/);
  invalid({ ...self, table: 'a}b' }, {}, /hash tag/);
  invalid({ ...self, id: 'a/b' }, {}, /contains '\/'/);
  invalid({ ...self, id: 'a b' }, {}, /white space/);
  invalid({ ...self, id: 'a\u00a0b' }, {}, /white space/);
  invalid({ ...self, name: 'h\n1' }, {}, /control/);
  invalid({ ...self, name: 'x'.repeat(257) }, {}, /257 bytes, over the limit of 256/);
  invalid({ ...self, id: 'é'.repeat(65) }, {}, /130 bytes/);
  invalid({ ...self, id: 'a\ud800' }, {}, /UTF-8/);
  invalid({ ...self, name: undefined }, {}, /name is empty/);
  invalid(self, { keyPrefix: 'a b' }, /key prefix/);
  invalid(self, { tables: ['ok', 'b{'] }, /hash tag/);
  new Watcher(client, { ...self, table: 'a/b/c', name: 'h/path', id: '玩家-𝄞' });
});

test('desc, meta and state', () => {
  invalid({ ...self, desc: 'x'.repeat(11) }, { maxDescSize: 10 }, /desc is 11 bytes/);
  invalid({ ...self, desc: 'abcdef', meta: { k: 'abcde' } }, { maxDescSize: 10 }, /desc and meta are 12 bytes/);
  for (const w of ['-1', '+1', ' 1', '1.5', 'x', '', '9223372036854775808']) {
    invalid({ ...self, meta: { weight: w } }, {}, /weight/);
  }
  for (const w of ['0', '7', '007', '-0']) new Watcher(client, { ...self, meta: { weight: w } });
  invalid({ ...self, meta: { '': 'x' } }, {}, /empty key/);
  invalid({ ...self, meta: { 'a b': 'x' } }, {}, /not printable/);
  invalid({ ...self, meta: { a: 1 } }, {}, /not a string/);
  invalid({ ...self, meta: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, ''])) }, {}, /65 keys/);
  invalid({ ...self, state: 'sleeping' }, {}, /unknown state/);
});

test('options, and every problem at once', () => {
  invalid(self, { ttl: 1000, keepAlive: 500 }, /more than twice the keepAlive/);
  invalid(self, { ttl: 1000, scanInterval: 500 }, /less than half the ttl/);
  invalid(self, { ttl: 0 }, /ttl 0 is not a positive integer/);
  invalid(self, { ttl: 1.5 }, /not a positive integer/);
  invalid(self, { tll: 5 }, /unknown option "tll"/);
  assert.throws(() => new Watcher(null, self), /not a node-redis client/);
  assert.throws(() => new Watcher({ ...client, masters: [] }, self), /cluster client is not supported/);
  try {
    new Watcher(null, { table: '', id: 'a/b' }, { ttl: -1 });
    assert.fail('no error');
  } catch (err) {
    assert.equal(err.problems.length, 4, err.message); // client, ttl, table, id
  }
});

test('a watcher stopped before start', async () => {
  const w = new Watcher(client, self);
  await w.setDesc('before start is fine');
  assert.equal(w.self().desc, 'before start is fine');
  await assert.rejects(w.setMeta({ weight: 'x' }), InvalidError);
  await w.stop();
  await w.stop();
  await assert.rejects(w.start(), StoppedError);
  await assert.rejects(w.setDesc('x'), (err) => err.code === 'ERR_STOPPED');
  const wo = new Watcher(client, { table: 't' }, { watchOnly: true });
  await assert.rejects(wo.setState('draining'), /watch-only/);
});
