// Test helpers: a redis-server of the test file's own on a free port, clients,
// polling and an event recorder. (No tests here.)
import { spawn, spawnSync } from 'node:child_process';
import net from 'node:net';
import { createClient } from 'redis';
import { Watcher } from '../src/index.js';

// redisSkip returns why the real-Redis tests skip (false: they run). With
// SVCWATCH_REQUIRE_REDIS=1 a missing redis-server fails instead.
export function redisSkip() {
  if (!spawnSync('redis-server', ['--version']).error) return false;
  const why = 'redis-server is not on PATH (apt-get install redis-server); skipping the tests that need it';
  if (process.env.SVCWATCH_REQUIRE_REDIS === '1') throw new Error(why.replace('skipping', 'SVCWATCH_REQUIRE_REDIS=1 forbids skipping'));
  return why;
}

const freePort = () => new Promise((resolve, reject) => {
  const srv = net.createServer().once('error', reject);
  srv.listen(0, '127.0.0.1', () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
});

const ping = (port) => new Promise((resolve) => {
  const s = net.connect(port, '127.0.0.1', () => s.write('PING\r\n'));
  s.once('data', (d) => { s.destroy(); resolve(String(d).startsWith('+PONG')); });
  s.once('error', () => resolve(false));
});

// startRedis starts redis-server without persistence on 127.0.0.1 and a free port.
export async function startRedis() {
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
    let exited = false;
    proc.once('exit', () => { exited = true; });
    const deadline = Date.now() + 10000;
    while (!exited && Date.now() < deadline && !(await ping(port))) await sleep(20);
    if (!exited && Date.now() < deadline) return { port, url: `redis://127.0.0.1:${port}`, stop: () => proc.kill('SIGKILL') };
    proc.kill('SIGKILL');
    if (attempt === 3) throw new Error(`redis-server did not start on port ${port}`);
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// connect returns a connected client that reconnects fast (well within the TTL).
export async function connect(url) {
  const c = createClient({ url, socket: { reconnectStrategy: () => 100 } });
  c.on('error', () => {});
  return c.connect();
}

export async function eventually(what, cond, timeout = 15000) {
  const deadline = Date.now() + timeout;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

// record keeps a watcher's events as strings: 'add id', 'update id', 'remove id'.
export function record(w) {
  const log = [];
  w.on('add', (i) => log.push(`add ${i.id}`));
  w.on('update', (o, c) => log.push(`update ${c.id}`));
  w.on('remove', (i) => log.push(`remove ${i.id}`));
  return log;
}

export const quick = { ttl: 1000, keepAlive: 150, scanInterval: 300, logger: null };

export function watcher(client, self, options) {
  return new Watcher(client, self, { ...quick, ...options });
}
