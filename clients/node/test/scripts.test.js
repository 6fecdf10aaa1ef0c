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
