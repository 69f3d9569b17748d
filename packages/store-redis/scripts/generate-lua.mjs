#!/usr/bin/env node
/**
 * Turns src/lua/<verbNoun>-<numKeys>.lua into src/generated/scripts.ts, so the package ships
 * plain JS (no file reads at runtime) and the Lua stays reviewable as Lua.
 *
 *   node scripts/generate-lua.mjs           write the module
 *   node scripts/generate-lua.mjs --check   exit 1 when the committed module is stale
 *
 * Each script is registered under `eo<VerbNoun>_v<LAYOUT>_<sha1 prefix>`: the layout version
 * names the record encoding, and the content hash makes sure two builds of the SDK sharing one
 * ioredis client can never run each other's script under the same command name.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Bump when the stored record layout changes incompatibly. */
const LAYOUT_VERSION = 2;

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const luaDir = join(root, 'src', 'lua');
const outFile = join(root, 'src', 'generated', 'scripts.ts');
const FILE_NAME = /^([a-z][A-Za-z]*)-(\d+|n)\.lua$/;

export function render() {
  const files = readdirSync(luaDir)
    .filter((f) => f.endsWith('.lua'))
    .sort();
  const entries = files.map((file) => {
    const match = FILE_NAME.exec(file);
    if (!match) throw new Error(`${file}: expected <verbNoun>-<numKeys|n>.lua`);
    const [, verb, keys] = match;
    const lua = withIncludes(readFileSync(join(luaDir, file), 'utf8'), file);
    // A script may start with a shebang line (Redis 7 script flags) before its header.
    const body = lua.startsWith('#!lua') ? lua.slice(lua.indexOf('\n') + 1) : lua;
    if (!body.startsWith('--[[') || !/\n\]\]\n/.test(body)) throw new Error(`${file}: missing header block`);
    const header = body.slice(0, body.indexOf('\n]]\n'));
    for (const part of ['KEYS[1]', 'Returns']) {
      if (!header.includes(part)) throw new Error(`${file}: header does not document ${part}`);
    }
    if (!lua.includes('\nlocal rcall = redis.call\n'))
      throw new Error(`${file}: no "local rcall = redis.call"`);
    const sha1 = createHash('sha1').update(lua).digest('hex');
    const command = `eo${verb[0].toUpperCase()}${verb.slice(1)}_v${LAYOUT_VERSION}_${sha1.slice(0, 8)}`;
    const numberOfKeys = keys === 'n' ? 'undefined' : keys;
    return (
      `  ${verb}: {\n    command: '${command}',\n    numberOfKeys: ${numberOfKeys},\n` +
      `    sha1: '${sha1}',\n    lua: \`${escapeTemplate(lua)}\`,\n  },\n`
    );
  });
  return (
    '// Generated from src/lua/*.lua by scripts/generate-lua.mjs (npm run generate). Do not edit.\n\n' +
    '/** A Lua script and the ioredis command it is registered as. */\n' +
    'export interface LuaScript {\n' +
    '  readonly command: string;\n' +
    '  /** Fixed key count, or undefined when the caller passes numkeys first. */\n' +
    '  readonly numberOfKeys: number | undefined;\n' +
    '  readonly sha1: string;\n' +
    '  readonly lua: string;\n' +
    '}\n\n' +
    `export const LAYOUT_VERSION = ${LAYOUT_VERSION};\n\n` +
    `export const scripts = {\n${entries.join('')}} as const satisfies Record<string, LuaScript>;\n`
  );
}

/**
 * Replaces each `--- @include "includes/<name>"` line by src/lua/includes/<name>.lua (once per
 * script), so two scripts that share a transition share its source.
 */
function withIncludes(lua, file) {
  const seen = new Set();
  return lua.replace(/^--- @include "([a-zA-Z/]+)"$/gm, (_, name) => {
    if (seen.has(name)) throw new Error(`${file}: ${name} included twice`);
    seen.add(name);
    return readFileSync(join(luaDir, `${name}.lua`), 'utf8').trimEnd();
  });
}

function escapeTemplate(text) {
  return text.replaceAll('\\', '\\\\').replaceAll('`', '\\`').replaceAll('${', '\\${');
}

const isMain = process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1];
if (isMain) {
  const text = render();
  if (process.argv.includes('--check')) {
    let current = '';
    try {
      current = readFileSync(outFile, 'utf8');
    } catch {}
    if (current !== text) {
      console.error('src/generated/scripts.ts is stale: run `npm run generate -w @exactly-once/store-redis`');
      process.exit(1);
    }
  } else {
    writeFileSync(outFile, text);
  }
}
