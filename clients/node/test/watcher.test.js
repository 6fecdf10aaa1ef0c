// Watchers on a real redis-server that this file starts on a free port.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { redisSkip, startRedis, connect, eventually, record, watcher } from './helpers.js';
import { InvalidError, DuplicateIDError, StoppedError, ReplacedError, Watcher } from '../src/index.js';

describe('on redis-server', { skip: redisSkip() }, () => {
  let srv, client;
  const started = [];
  const make = (self, options) => { const w = watcher(client, self, options); started.push(w); return w; };
  before(async () => {
    srv = await startRedis();
    client = await connect(srv.url);
  });
  after(async () => {
    for (const w of started) await w.stop().catch(() => {});
    client?.destroy();
    srv?.stop();
  });

  test('discovery between two watchers', async () => {
    const table = 'game/test/discovery';
    const a = make({ table, id: 'a', name: 'h:1', desc: '{"n":1}', meta: { weight: '2' } });
    const ea = record(a);
    await a.start();
    const b = make({ table, id: 'b', name: 'h:2' });
    const eb = record(b);
    await b.start();
    assert.deepEqual(eb, ['add a'], 'peers present are delivered before start resolves, never self');
    const seen = b.lookup(table, 'a');
    assert.equal(seen.name, 'h:1');
    assert.equal(seen.desc, '{"n":1}');
    assert.deepEqual(seen.meta, { weight: '2' });
    assert.equal(seen.incarnation, a.self().incarnation);
    assert.equal(seen.registeredAt, a.self().registeredAt);
    await eventually('a hears of b', () => ea.includes('add b'));
    assert.deepEqual(ea, ['add b']);
    assert.deepEqual(a.services(table).map((i) => i.id), ['a', 'b']);
    for (const k of ['player-1', 'player-2', 'room:7']) assert.equal(a.pick(table, k).id, b.pick(table, k).id);
    assert.deepEqual(a.services('not/watched'), []);
    await eventually('heartbeats', () => a.stats().heartbeats > 1);
    const s = a.stats();
    assert.ok(s.connected && s.registered && s.fullLoads >= 1 && s.events === 1 && s.state === 'serving', JSON.stringify(s));
    await assert.rejects(a.start(), InvalidError);
  });

  test('updates and removals', async () => {
    const table = 'game/test/update';
    const a = make({ table, id: 'a', name: 'h:1' });
    const updates = [];
    a.on('update', (old, cur) => updates.push([old, cur]));
    const ea = record(a);
    await a.start();
    const b = make({ table, id: 'b', name: 'h:2' });
    await b.start();
    await eventually('add b', () => ea.includes('add b'));
    await b.setDesc('{"v":2}');
    await eventually('desc update', () => updates.length === 1);
    assert.equal(updates[0][0].desc, '');
    assert.equal(updates[0][1].desc, '{"v":2}');
    await b.setMeta({ weight: '3', zone: 'eu' });
    await b.setState('draining');
    await eventually('meta and state updates', () => a.lookup(table, 'b').state === 'draining');
    assert.deepEqual(a.lookup(table, 'b').meta, { weight: '3', zone: 'eu' });
    assert.equal(a.pickN(table, 'k', 5).length, 1, 'a draining instance takes no new keys');
    await assert.rejects(b.setMeta({ weight: 'x' }), InvalidError);
    await assert.rejects(b.setState('asleep'), InvalidError);
    assert.deepEqual(b.self().meta, { weight: '3', zone: 'eu' }, 'a refused change changes nothing');
    await b.stop();
    await eventually('remove b', () => ea.includes('remove b'));
    assert.equal(ea[0], 'add b');
    assert.equal(ea.at(-1), 'remove b');
    assert.ok(ea.slice(1, -1).every((e) => e === 'update b'), ea.join()); // updates may merge, never reorder
    await b.stop(); // idempotent
    await assert.rejects(b.setDesc('x'), StoppedError);
    await assert.rejects(b.start(), StoppedError);
    assert.equal(a.lookup(table, 'b'), null);
  });

  test('restart replaces, a duplicate is refused', async () => {
    const table = 'game/test/dup';
    const p = make({ table }, { watchOnly: true });
    const log = [];
    p.on('add', (i) => log.push(`add ${i.id}@${i.incarnation}`));
    p.on('remove', (i) => log.push(`remove ${i.id}@${i.incarnation}`));
    await p.start();
    const x1 = make({ table, id: 'x', name: 'h:9' });
    const lost = [];
    x1.on('registrationLost', (err, self) => lost.push([err, self]));
    await x1.start();
    const inc1 = x1.self().incarnation;
    await eventually('add x', () => log.length === 1);

    const x2 = make({ table, id: 'x', name: 'h:9' }); // the same name: a restart
    await x2.start();
    const inc2 = x2.self().incarnation;
    await eventually('the restart', () => log.length === 3);
    assert.deepEqual(log, [`add x@${inc1}`, `remove x@${inc1}`, `add x@${inc2}`]);
    await eventually('x1 stands down', () => lost.length === 1);
    assert.ok(lost[0][0] instanceof ReplacedError && lost[0][0].code === 'ERR_REPLACED');
    assert.equal(lost[0][1].incarnation, inc1);
    assert.equal(x1.stats().registered, false);
    await assert.rejects(x1.setDesc('z'), ReplacedError);

    const x3 = make({ table, id: 'x', name: 'h:10' }); // another name: a duplicate
    await assert.rejects(x3.start(), (err) => err instanceof DuplicateIDError && /h:9/.test(err.message));
    await assert.rejects(x3.start(), StoppedError);
    const x4 = make({ table, id: 'x', name: 'h:9' }, { restartReplace: false });
    await assert.rejects(x4.start(), DuplicateIDError);
    assert.equal(p.lookup(table, 'x').incarnation, inc2, 'the holder is untouched');
    await x1.stop(); // deregisters nothing of x2's
    await x2.stop();
    await eventually('remove x', () => log.length === 4);
  });

  test('a listener may stop its own watcher; async listeners hold later events', async () => {
    const table = 'game/test/listeners';
    const a = make({ table, id: 'a', name: 'h:1' });
    const b = make({ table, id: 'b', name: 'h:2' });
    const c = make({ table, id: 'c', name: 'h:3' });
    await b.start();
    await c.start();
    const order = [];
    a.on('add', async (i) => {
      order.push(`begin ${i.id}`);
      await new Promise((r) => setTimeout(r, 30));
      order.push(`end ${i.id}`);
    });
    a.on('add', () => { throw new Error('a failing listener is skipped'); });
    await a.start();
    assert.deepEqual(order, ['begin b', 'end b', 'begin c', 'end c']);
    let calls = 0;
    const stopped = new Promise((resolve) => a.on('remove', () => { calls++; a.stop().then(resolve); }));
    await b.stop();
    await stopped;
    await c.stop();
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(calls, 1, 'nothing after stop');
  });

  test('a lost subscription comes back; a silent one is replaced', async () => {
    const table = 'game/test/resubscribe';
    const a = make({ table, id: 'a', name: 'h:1' });
    const b = make({ table, id: 'b', name: 'h:2' });
    await a.start();
    await b.start();
    await eventually('a sees b', () => a.lookup(table, 'b'));
    await client.sendCommand(['CLIENT', 'KILL', 'TYPE', 'pubsub']);
    await b.setDesc('after the kill');
    await eventually('the change made while the subscription was down', () => a.lookup(table, 'b').desc === 'after the kill');
    // A silent subscription: the connection stays up, no message comes.
    const [sub] = a._subs;
    await sub.unsubscribe();
    let n = 0;
    const changes = setInterval(() => b.setDesc(`change ${++n}`).catch(() => {}), 50);
    try {
      await eventually('a replaces its silent subscription', () => !a._subs.has(sub));
    } finally {
      clearInterval(changes);
    }
    await b.setDesc('last');
    await eventually('a hears b again', () => a.lookup(table, 'b').desc === 'last');
  });

  test('a Redis that does not answer: start retries until stop', async () => {
    const gone = await startRedis();
    const c = await connect(gone.url);
    gone.stop();
    const w = new Watcher(c, { table: 'game/test/down', id: 'd', name: 'h:1' }, { ttl: 1000, logger: null });
    const p = w.start();
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(w.stats().connected, false);
    await w.stop().catch(() => {}); // it cannot deregister
    await assert.rejects(p, StoppedError);
    c.destroy();
    await assert.rejects(new Watcher(c, { table: 't' }, { watchOnly: true }).start(), /not connected/);
  });
});
