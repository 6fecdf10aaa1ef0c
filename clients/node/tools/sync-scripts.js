// Copies the protocol's Lua scripts (../../protocol/scripts, the normative
// source) into scripts/, so that the npm package is self-contained.
// `npm run sync-scripts`; test/scripts.test.js fails when the copies drift.
import { copyFileSync, readdirSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const src = fileURLToPath(new URL('../../../protocol/scripts/', import.meta.url));
const dst = fileURLToPath(new URL('../scripts/', import.meta.url));
const lua = (dir) => readdirSync(dir).filter((f) => f.endsWith('.lua')).sort();
const want = lua(src);
for (const f of lua(dst)) if (!want.includes(f)) rmSync(dst + f);
for (const f of want) copyFileSync(src + f, dst + f);
console.log(`synced ${want.length} scripts from ${src}`);
