// interop-peer.js: Node watchers driven by the Go interoperability test
// (interop_test.go at the repository root) over stdin/stdout, one JSON object
// a line. Usage: node test/interop-peer.js redis://127.0.0.1:PORT
//
// In:  {"id":1,"cmd":"start","w":"n1","self":{...},"options":{...}}
//      {"id":2,"cmd":"set","w":"n1","desc":"..."|"meta":{...}|"state":"..."}
//      {"id":3,"cmd":"stop"|"services"|"stats","w":"n1","table":"..."}
//      {"id":4,"cmd":"pick","w":"n1","table":"...","keys":10000,"pickN":3,"nKeys":200}  (keys "key-0"...)
// Out: {"id":1,"ok":true,"result":...} or {"id":1,"ok":false,"error":{"name","code","message"}}
//      {"event":"add"|"update"|"remove"|"registrationLost","w":"n1","inst":{...},"old":{...},"code":"..."}
import { createInterface } from 'node:readline';
import { createClient } from 'redis';
import { Watcher } from '../src/index.js';

if (process.env.NODE_TEST_CONTEXT) process.exit(0); // run as a test file by `node --test`: not one

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const client = createClient({ url: process.argv[2], socket: { reconnectStrategy: () => 50 } });
client.on('error', () => {});
const ready = client.connect();
const watchers = new Map();

const commands = {
  async start({ w, self, options }) {
    const watcher = new Watcher(client, self, { logger: null, ...options });
    watchers.set(w, watcher);
    let before = [];
    for (const ev of ['add', 'update', 'remove']) {
      watcher.on(ev, (a, b) => {
        const e = ev === 'update' ? { event: ev, w, old: a, inst: b } : { event: ev, w, inst: a };
        if (before) before.push(`${ev} ${e.inst.id}`);
        out(e);
      });
    }
    watcher.on('registrationLost', (err) => out({ event: 'registrationLost', w, code: err.code }));
    await watcher.start();
    const delivered = before;
    before = null;
    return { delivered, self: watcher.self() };
  },
  async set({ w, desc, meta, state }) {
    const watcher = watchers.get(w);
    if (desc !== undefined) await watcher.setDesc(desc);
    if (meta !== undefined) await watcher.setMeta(meta);
    if (state !== undefined) await watcher.setState(state);
    return watcher.self();
  },
  stop: ({ w }) => watchers.get(w).stop(),
  services: ({ w, table }) => watchers.get(w).services(table),
  stats: ({ w }) => watchers.get(w).stats(),
  pick({ w, table, keys, pickN, nKeys }) {
    const watcher = watchers.get(w);
    const owners = [], ns = [];
    for (let i = 0; i < keys; i++) owners.push(watcher.pick(table, `key-${i}`)?.id ?? '');
    for (let i = 0; i < (nKeys ?? 0); i++) ns.push(watcher.pickN(table, `key-${i}`, pickN).map((p) => p.id));
    return { owners, pickN: ns };
  },
};

createInterface({ input: process.stdin }).on('line', async (line) => {
  let req;
  try {
    req = JSON.parse(line);
    await ready;
    const result = await commands[req.cmd](req);
    out({ id: req.id, ok: true, result: result ?? null });
  } catch (err) {
    out({ id: req?.id, ok: false, error: { name: err.name, code: err.code, message: err.message } });
  }
}).on('close', async () => { // stdin closed: the test is done with this process
  for (const w of watchers.values()) await w.stop().catch(() => {});
  client.destroy();
});
