/** The Lua sources: documented headers, and a generated module that matches them. */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { scripts } from '../src/generated/scripts.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const luaDir = join(root, 'src', 'lua');
const files = readdirSync(luaDir).filter((f) => f.endsWith('.lua'));

describe('lua scripts', () => {
  it('src/generated/scripts.ts is up to date with src/lua (npm run generate)', () => {
    expect(() =>
      execFileSync(process.execPath, [join(root, 'scripts', 'generate-lua.mjs'), '--check'], {
        stdio: 'pipe',
      }),
    ).not.toThrow();
    expect(Object.keys(scripts).sort()).toEqual(files.map((f) => f.replace(/-(\d+|n)\.lua$/, '')).sort());
  });

  for (const file of files) {
    it(`${file}: header documents every KEYS, ARGV and return code the body uses`, () => {
      const source = readFileSync(join(luaDir, file), 'utf8');
      // A shebang line (Redis 7 script flags) may come first.
      const lua = source.startsWith('#!lua') ? source.slice(source.indexOf('\n') + 1) : source;
      expect(lua.startsWith('--[[')).toBe(true);
      const end = lua.indexOf('\n]]\n');
      expect(end).toBeGreaterThan(0);
      const header = lua.slice(0, end);
      const body = lua.slice(end);
      expect(body).toMatch(/\nlocal rcall = redis\.call\n/);
      expect(header).toMatch(/Returns/);
      for (const [ref] of body.matchAll(/\b(?:KEYS|ARGV)\[\d+\]/g)) expect(header).toContain(ref);
      // Status codes returned as the first element of a reply table.
      for (const [, code] of body.matchAll(/return \{ '([A-Z])'/g)) expect(header).toContain(`'${code}'`);
      const fixedKeys = /-(\d+)\.lua$/.exec(file)?.[1];
      if (fixedKeys !== undefined) {
        for (let i = 1; i <= Number(fixedKeys); i++) expect(header).toContain(`KEYS[${i}]`);
      }
    });
  }
});
