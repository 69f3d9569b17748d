/**
 * The tests' worker processes (crash workers, soak workers, supervised workers) start from esbuild
 * bundles of their TypeScript sources rather than through tsx, which compiles or reads from its
 * cache every module at each start: 1.5 s of CPU for a process that loads every adapter and store,
 * against 0.6 s from a bundle, and the crash tests start hundreds. Vitest's global setup
 * (global-setup.ts) bundles them from the sources at the start of each run, as the tests import
 * them (the `@exactly-once/source` condition), so a bundle is never stale; outside Vitest
 * (`npm run soak`) the workers start through tsx as before.
 */
import { existsSync } from 'node:fs';
import { readdir, readFile, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join, relative, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { build, type Plugin } from 'esbuild';

const root = fileURLToPath(new URL('../..', import.meta.url));

/** Every worker script the tests start (paths from the repository root). */
export const WORKER_SCRIPTS = [
  'test/kafka/crash-worker.ts',
  'test/kafka/poison-worker.ts',
  'test/rabbitmq/crash-worker.ts',
  'test/rabbitmq/poison-worker.ts',
  'test/soak/worker.ts',
  'test/large-result/worker.ts',
  'test/large-result/orphan-worker.ts',
] as const;
export type WorkerScript = (typeof WORKER_SCRIPTS)[number];

/** Set by the global setup to the directory of this run's bundles. */
const BUNDLES_ENV = 'EO_TEST_BUNDLES';
/** Each run's bundles go in a directory of its own here, named by the run's PID. */
const BUNDLES_HOME = join(root, 'node_modules', '.cache', 'exactly-once-test-bundles');
const bundleName = (script: WorkerScript) => `${script.replace(/[^a-zA-Z0-9]+/g, '-')}.mjs`;

/** Node's arguments to run `script`: its bundle when this run made one, else the source through tsx. */
export function workerArgs(script: WorkerScript): string[] {
  const dir = process.env[BUNDLES_ENV];
  return dir
    ? ['--enable-source-maps', join(dir, bundleName(script))]
    : ['--import', 'tsx', '--conditions=@exactly-once/source', join(root, script)];
}

/**
 * Third-party imports stay imports, resolved by Node from the repository's node_modules (the
 * bundles are written inside it). One that a workspace package has in a node_modules of its own
 * (the amqplib 2 run links amqplib there) points at that copy, as Node resolves it from the source.
 */
const thirdPartyExternal: Plugin = {
  name: 'third-party-external',
  setup(b) {
    b.onResolve({ filter: /^[^./]/ }, ({ path, importer }) => {
      if (path.startsWith('@exactly-once/')) return undefined;
      const pkg = relative(join(root, 'packages'), importer).split(sep)[0] ?? '..';
      const name = path
        .split('/')
        .slice(0, path.startsWith('@') ? 2 : 1)
        .join('/');
      if (!pkg.startsWith('..') && existsSync(join(root, 'packages', pkg, 'node_modules', name)))
        return { path: pathToFileURL(createRequire(importer).resolve(path)).href, external: true };
      return { path, external: true };
    });
  },
};

/**
 * Each source module keeps its own `import.meta.url` (its file's URL, not the bundle's): the
 * sources find files next to them by it (the confluent client's build, the repository root).
 */
const ownImportMetaUrl: Plugin = {
  name: 'own-import-meta-url',
  setup(b) {
    b.onLoad({ filter: /\.ts$/ }, async ({ path }) => ({
      contents: (await readFile(path, 'utf8')).replaceAll(
        'import.meta.url',
        JSON.stringify(pathToFileURL(path).href),
      ),
      loader: 'ts',
    }));
  },
};

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
};

/**
 * Bundles every worker script into a fresh directory and points this process's children at it.
 * First removes the bundles of runs killed before their teardown (their PID is gone).
 */
export async function bundleWorkers(): Promise<string> {
  for (const entry of await readdir(BUNDLES_HOME).catch(() => [])) {
    if (!alive(Number(entry))) await rm(join(BUNDLES_HOME, entry), { recursive: true, force: true });
  }
  const dir = join(BUNDLES_HOME, String(process.pid));
  await build({
    entryPoints: WORKER_SCRIPTS.map((script) => ({
      in: join(root, script),
      out: bundleName(script).slice(0, -4),
    })),
    outdir: dir,
    outExtension: { '.js': '.mjs' },
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    conditions: ['@exactly-once/source'],
    // Error names and stack traces read as they do from the sources.
    keepNames: true,
    sourcemap: 'inline',
    logLevel: 'warning',
    plugins: [thirdPartyExternal, ownImportMetaUrl],
  });
  process.env[BUNDLES_ENV] = dir;
  return dir;
}
