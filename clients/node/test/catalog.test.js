// Registration adds the table to the catalog of tables (PROTOCOL.md, 7.15), as
// the Go library does, on a real redis-server that this file starts.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { redisSkip, startRedis, connect, eventually, watcher } from './helpers.js';
import { catalogKeys } from '../src/index.js';

describe('the catalog, on redis-server', { skip: redisSkip() }, () => {
  let srv, client, sub;
  const started = [];
  const make = (c, self, options) => { const w = watcher(c, self, options); started.push(w); return w; };
  const cat = catalogKeys('svcwatch');
  const heard = []; // the catalog's announcements, parsed
  const serverMs = async () => { const [s, us] = await client.sendCommand(['TIME']); return Number(s) * 1000 + Math.floor(Number(us) / 1000); };
  const score = async (table) => { const s = await client.sendCommand(['ZSCORE', cat.tables, table]); return s === null ? null : Number(s); };

  before(async () => {
    srv = await startRedis();
    client = await connect(srv.url);
    sub = client.duplicate();
    sub.on('error', () => {});
    await sub.connect();
    await sub.subscribe(cat.channel, (m) => heard.push(JSON.parse(m))); // resolves once Redis confirmed it
  });
  after(async () => {
    for (const w of started) await w.stop().catch(() => {});
    sub?.destroy();
    client?.destroy();
    srv?.stop();
  });

  test('a registered process appears in the catalog and is announced', async () => {
    const table = 'mygame/prod/20261126/game';
    const before = await serverMs();
    const w = make(client, { table, id: 'game-1', name: 'h:1' });
    await w.start();
    const after = await serverMs();
    const s = await score(table);
    assert.ok(s !== null && s >= before && s <= after, `score ${s}: the server time of the registration, in [${before}, ${after}]`);
    assert.equal(await client.get(cat.rev), '1');
    await eventually('the announcement', () => heard.length >= 1);
    assert.deepEqual(heard, [{ op: 'add', table, r: 1 }]);

    // A second process in the same table: the entry is touched, not announced again.
    const w2 = make(client, { table, id: 'game-2', name: 'h:2' });
    await w2.start();
    assert.ok((await score(table)) >= s);
    assert.equal(await client.get(cat.rev), '1');

    // The entry is touched again while the process lives (every 10 minutes;
    // made due at once here), which also heals a catalog that lost it.
    await client.sendCommand(['ZREM', cat.tables, table]);
    w._catalogNext = 0;
    await eventually('the table back after a touch', async () => (await score(table)) !== null);

    // A watch-only process registers nothing, and so adds nothing.
    const gate = make(client, { table: 'mygame/prod/gate' }, { watchOnly: true, tables: [table] });
    await gate.start();
    assert.equal(await score('mygame/prod/gate'), null);

    // Redis loses everything: the heartbeat finds the registration missing,
    // registers again, and the catalog gets the table back.
    heard.length = 0;
    await client.flushAll();
    await eventually('the table back in the catalog', async () => (await score(table)) !== null);
    await eventually('announced again', () => heard.some((m) => m.op === 'add' && m.table === table));
    assert.deepEqual(heard.filter((m) => m.table !== table), []);
  });

  test('a catalog the process may not write fails nothing, and is written once it may', async () => {
    // A user that may write the tables' keys and channels but not the catalog's.
    await client.sendCommand(['ACL', 'SETUSER', 'limited', 'on', '>pw', 'resetkeys', '~svcwatch:{*', 'resetchannels', '&svcwatch:{*', '+@all']);
    const url = srv.url.replace('redis://', 'redis://limited:pw@');
    const limited = await connect(url);
    try {
      const table = 'mygame/prod/20261127/game';
      const w = make(limited, { table, id: 'game-1', name: 'h:1' });
      await w.start(); // the catalog call is refused (NOPERM): logged, not fatal
      assert.ok(w.stats().registered);
      assert.equal(await score(table), null);
      await client.sendCommand(['ACL', 'SETUSER', 'limited', '~svcwatch:catalog:*', '&svcwatch:catalog:*']);
      await eventually('a heartbeat adds the table', async () => (await score(table)) !== null);
      assert.ok(w.stats().registered);
    } finally {
      limited.destroy();
    }
  });
});
