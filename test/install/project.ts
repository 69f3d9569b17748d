/**
 * Plumbing of the install test: build, `npm pack` every package, and a project outside the
 * workspace that installs the tarballs the way a user does (from the tarballs plus the peer
 * clients, pinned to the versions of the workspace's lockfile so npm takes them from its cache).
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
export const appSources = fileURLToPath(new URL('./app/', import.meta.url));

/** The published packages, by directory under packages/. */
export const PACKAGE_DIRS = ['core', 'store-redis', 'store-mongo', 'rabbitmq', 'kafka', 'cli'] as const;

/**
 * Type packages a TypeScript user adds next to the peers: Node's, and amqplib's (amqplib ships no
 * types; the rabbitmq package's declarations and amqp-connection-manager's import them, and
 * neither declares @types/amqplib).
 */
export const USER_TYPE_PACKAGES = ['@types/node', '@types/amqplib'] as const;

/** The user's tsconfig: strict, NodeNext, and the published declarations checked too. */
export const USER_TSCONFIG = {
  compilerOptions: {
    target: 'ES2022',
    module: 'NodeNext',
    moduleResolution: 'NodeNext',
    strict: true,
    noUncheckedIndexedAccess: true,
    // Not exactOptionalPropertyTypes: amqp-connection-manager's own declarations fail under it.
    verbatimModuleSyntax: true,
    isolatedModules: true,
    skipLibCheck: false,
    noEmitOnError: true,
    types: ['node'],
    rootDir: 'src',
    outDir: 'dist',
  },
  include: ['src'],
};

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/**
 * The environment of a child: npm's per-script variables (they name the workspace as the local
 * prefix and package) and NODE_OPTIONS (a test runner's flags) removed, `extra` added.
 */
export function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (/^npm_(package_|lifecycle_|config_local_prefix$|command$)/.test(k)) continue;
    if (k === 'NODE_OPTIONS' || k === 'INIT_CWD') continue;
    env[k] = v;
  }
  return { ...env, ...extra };
}

/** Runs a command to its end (or kills it after `timeoutMs`), collecting its output. */
export function run(
  command: string,
  args: string[],
  options: { cwd: string; env?: NodeJS.ProcessEnv; timeoutMs?: number },
): Promise<RunResult> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: options.env ?? childEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 120_000);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: Math.round(performance.now() - started) });
    });
  });
}

/** Runs and throws with the command's output unless it exits 0. */
export async function runOk(
  command: string,
  args: string[],
  options: { cwd: string; env?: NodeJS.ProcessEnv; timeoutMs?: number },
): Promise<RunResult> {
  const result = await run(command, args, options);
  if (result.code !== 0) {
    throw new Error(
      `${[command, ...args].join(' ')} (in ${options.cwd}) exited ${result.code ?? result.signal}:\n` +
        `${result.stdout}\n${result.stderr}`.trim(),
    );
  }
  return result;
}

/** `tsc` of the workspace (the lockfile's TypeScript), run by the current Node binary. */
export const tscBin = join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc');

interface PackageJson {
  name: string;
  version: string;
  exports?: Record<string, unknown>;
  dependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  peerDependenciesMeta?: Record<string, { optional?: boolean }>;
}

async function readJson<T>(path: string): Promise<T> {
  return JSON.parse(await readFile(path, 'utf8')) as T;
}

/** The version of `name` the workspace's package-lock.json installs at its top level. */
export async function lockedVersion(name: string): Promise<string> {
  const lock = await readJson<{ packages: Record<string, { version?: string }> }>(
    join(repoRoot, 'package-lock.json'),
  );
  const version = lock.packages[`node_modules/${name}`]?.version;
  if (!version) throw new Error(`${name} is not in package-lock.json`);
  return version;
}

export interface Tarball {
  name: string;
  version: string;
  file: string;
  packageJson: PackageJson;
}

/** `tsc -b`: the build the tarballs are packed from. */
export async function build(): Promise<RunResult> {
  return runOk(process.execPath, [tscBin, '-b'], { cwd: repoRoot, timeoutMs: 300_000 });
}

/** `npm pack` of every published package into `dest`. */
export async function pack(dest: string): Promise<Tarball[]> {
  const args = ['pack', '--json', '--pack-destination', dest];
  for (const dir of PACKAGE_DIRS) args.push('--workspace', `packages/${dir}`);
  const { stdout } = await runOk('npm', args, { cwd: repoRoot });
  const packed = JSON.parse(stdout) as { name: string; version: string; filename: string }[];
  return Promise.all(
    PACKAGE_DIRS.map(async (dir) => {
      const packageJson = await readJson<PackageJson>(join(repoRoot, 'packages', dir, 'package.json'));
      const entry = packed.find((p) => p.name === packageJson.name);
      if (!entry) throw new Error(`npm pack made no tarball for ${packageJson.name}`);
      return { name: entry.name, version: entry.version, file: join(dest, entry.filename), packageJson };
    }),
  );
}

/** The peer dependencies the tarballs require (optional ones left out), by name. */
export function requiredPeers(tarballs: Tarball[]): string[] {
  const peers = new Set<string>();
  for (const { packageJson: p } of tarballs) {
    for (const name of Object.keys(p.peerDependencies ?? {})) {
      if (!p.peerDependenciesMeta?.[name]?.optional) peers.add(name);
    }
  }
  return [...peers].sort();
}

/**
 * Optional peers the README code imports: kafkajs, one of the Kafka adapter's two clients (the
 * other, @confluentinc/kafka-javascript, is a native build and not in the lockfile).
 */
export const README_OPTIONAL_PEERS = ['kafkajs'];

export interface UserProject {
  dir: string;
  tarballs: Tarball[];
  /** What the project's package.json lists, name to version or file. */
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
  installMs: number;
  remove(): Promise<void>;
}

/**
 * The user project's `npm install`. After the workspace's `npm ci` the tarballs are in npm's cache
 * but the packuments the version ranges need may not be, so the registry is asked. npm's default
 * waits 5 minutes on a stalled request: a request here gives up after 30 s and npm retries it, and
 * a whole install that still fails (or passes its time) runs once more.
 */
async function installWithRetry(dir: string): Promise<RunResult> {
  const args = [
    'install',
    '--prefer-offline',
    '--no-audit',
    '--no-fund',
    '--fetch-timeout=30000',
    '--fetch-retries=4',
  ];
  const first = await run('npm', args, { cwd: dir, timeoutMs: 240_000 });
  if (first.code === 0) return first;
  console.warn(
    `[install] npm install exited ${first.code ?? first.signal} after ${first.ms} ms; once more:\n` +
      `${first.stdout}\n${first.stderr}`.trim(),
  );
  await rm(join(dir, 'node_modules'), { recursive: true, force: true });
  return runOk('npm', args, { cwd: dir, timeoutMs: 240_000 });
}

/**
 * Packs every package and installs the tarballs, the peers they require and the user's type
 * packages in a new project under the OS temp dir, with `npm install --prefer-offline`.
 */
export async function createUserProject(): Promise<UserProject> {
  const dir = join(tmpdir(), `eo-install-${randomUUID().slice(0, 8)}`);
  const tarballDir = join(dir, 'tarballs');
  await mkdir(tarballDir, { recursive: true });
  const remove = () => rm(dir, { recursive: true, force: true });
  try {
    const tarballs = await pack(tarballDir);
    const dependencies: Record<string, string> = {};
    for (const t of tarballs) dependencies[t.name] = `file:${t.file}`;
    for (const peer of [...requiredPeers(tarballs), ...README_OPTIONAL_PEERS])
      dependencies[peer] = await lockedVersion(peer);
    const devDependencies: Record<string, string> = {};
    for (const name of USER_TYPE_PACKAGES) devDependencies[name] = await lockedVersion(name);
    await writeFile(
      join(dir, 'package.json'),
      `${JSON.stringify({ name: 'eo-install-check', private: true, type: 'module', dependencies, devDependencies }, null, 2)}\n`,
    );
    await writeFile(join(dir, 'tsconfig.json'), `${JSON.stringify(USER_TSCONFIG, null, 2)}\n`);
    const { ms } = await installWithRetry(dir);
    return { dir, tarballs, dependencies, devDependencies, installMs: ms, remove };
  } catch (error) {
    await remove();
    throw error;
  }
}

/** The first ```ts block of a README. */
export async function readmeExample(readme: string): Promise<string> {
  const text = await readFile(join(repoRoot, readme), 'utf8');
  const match = /```ts\n([\s\S]*?)\n```/.exec(text);
  if (!match?.[1]) throw new Error(`${readme} has no \`\`\`ts block`);
  return match[1];
}

/**
 * The README code with each `[from, to]` replaced: every `from` must occur exactly once, so a
 * README edit that the adaptation no longer matches fails the test instead of going unchecked.
 */
export function adapt(readme: string, code: string, substitutions: [string, string][]): string {
  let out = code;
  for (const [from, to] of substitutions) {
    const count = out.split(from).length - 1;
    if (count !== 1) {
      throw new Error(
        `${readme}: expected \`${from}\` once in its first code block, found it ${count} times; ` +
          'update the substitutions in test/install/tarballs.test.ts',
      );
    }
    out = out.replace(from, () => to);
  }
  return out;
}

/**
 * A module importing every subpath of every package's `exports` map (but ./package.json):
 * values for those whose import works without optional peers, types only for the others.
 */
export function exportsProgram(tarballs: Tarball[]): { source: string; subpaths: string[] } {
  const lines = ['// Generated by test/install: one import of every export of every package.'];
  const loaded: string[] = [];
  const subpaths: string[] = [];
  let i = 0;
  for (const { name, packageJson } of tarballs) {
    const optionalPeers = Object.entries(packageJson.peerDependenciesMeta ?? {})
      .filter(([, meta]) => meta.optional)
      .map(([peer]) => peer);
    for (const sub of Object.keys(packageJson.exports ?? {})) {
      if (sub === './package.json') continue;
      const specifier = sub === '.' ? name : `${name}/${sub.slice(2)}`;
      subpaths.push(specifier);
      // core's ./testing is the store conformance kit: it imports vitest, an optional peer.
      if (sub === './testing' && optionalPeers.includes('vitest')) {
        lines.push(`import type * as m${i} from '${specifier}';`);
        lines.push(`export type M${i} = typeof m${i};`);
      } else {
        lines.push(`import * as m${i} from '${specifier}';`);
        loaded.push(`  '${specifier}': Object.keys(m${i}).length,`);
      }
      i++;
    }
  }
  lines.push('const exportCounts: Record<string, number> = {', ...loaded, '};');
  lines.push("console.log('EO_INSTALL_RESULT', JSON.stringify(exportCounts));");
  return { source: `${lines.join('\n')}\n`, subpaths };
}

/** The JSON a driver printed after `EO_INSTALL_RESULT`. */
export function resultOf(output: RunResult): Record<string, unknown> {
  const line = output.stdout.split('\n').find((l) => l.startsWith('EO_INSTALL_RESULT '));
  if (!line) {
    throw new Error(
      `no result line (exit ${output.code ?? output.signal} after ${output.ms} ms):\n${output.stdout}\n${output.stderr}`,
    );
  }
  return JSON.parse(line.slice('EO_INSTALL_RESULT '.length)) as Record<string, unknown>;
}
