// The package's Lua scripts must be the protocol's, byte for byte: the npm
// package carries copies (npm run sync-scripts), which must never drift.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const ours = fileURLToPath(new URL('../scripts/', import.meta.url));
const protocol = fileURLToPath(new URL('../../../protocol/scripts/', import.meta.url));
const lua = (dir) => readdirSync(dir).filter((f) => f.endsWith('.lua')).sort();

test('scripts/ is a copy of protocol/scripts', { skip: !existsSync(protocol) && 'not in the svcwatch repository' }, () => {
  assert.deepEqual(lua(ours), lua(protocol), 'the same files (run: npm run sync-scripts)');
  for (const f of lua(protocol)) {
    assert.ok(readFileSync(ours + f).equals(readFileSync(protocol + f)), `scripts/${f} differs from protocol/scripts/${f} (run: npm run sync-scripts)`);
  }
});

// The texts this client sends (prelude + body for a table script, the file
// alone for a catalog script) have the sizes and SHA-1s of PROTOCOL.md, 6.1.
const doc = fileURLToPath(new URL('../../../PROTOCOL.md', import.meta.url));
test('the texts sent are the ones PROTOCOL.md lists', { skip: !existsSync(doc) && 'not in the svcwatch repository' }, async () => {
  const { SCRIPTS, CATALOG_SCRIPTS } = await import('../src/protocol.js');
  const rows = new Map();
  for (const m of readFileSync(doc, 'utf8').matchAll(/^\| ([a-z_]+) \| ([0-9]+) \| `([0-9a-f]{40})` \|$/gm)) rows.set(m[1], { bytes: Number(m[2]), sha: m[3] });
  const ours = { ...SCRIPTS, ...CATALOG_SCRIPTS };
  assert.deepEqual([...rows.keys()].sort(), Object.keys(ours).sort(), 'the same scripts');
  for (const [name, s] of Object.entries(ours)) {
    assert.deepEqual({ bytes: Buffer.byteLength(s.src), sha: s.sha }, rows.get(name), name);
  }
});
