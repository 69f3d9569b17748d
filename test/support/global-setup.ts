/**
 * Vitest's global setup, once a run before any test file: builds the CLI (the CLI tests run its
 * `dist/bin.js`, as an operator would; `tsc -b` rebuilds only what changed, so it is never stale)
 * and bundles the worker scripts (bundle.ts).
 */
import { execFile } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { bundleWorkers } from './bundle.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');

export default async function setup(): Promise<() => Promise<void>> {
  const [dir] = await Promise.all([
    bundleWorkers(),
    promisify(execFile)(process.execPath, [tsc, '-b', 'packages/cli'], { cwd: root }),
  ]);
  return () => rm(dir, { recursive: true, force: true });
}
