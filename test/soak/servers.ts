/**
 * The soak's own processed-store servers, so that it can crash and restart them without touching
 * the shared ones of scripts/infra.sh: a standalone Redis, a three-master Redis Cluster and a
 * MongoDB-compatible server (FerretDB, or mongo-java-server), each on spare ports with its data in
 * a temporary directory.
 *
 * Durability is what a store restart must preserve, since a store that loses acknowledged writes
 * breaks the guarantee (packages/core/README.md): Redis runs with `appendonly yes` and
 * `appendfsync always` (every write is fsynced before its reply), FerretDB's SQLite with
 * `synchronous(full)` in WAL mode, mongo-java-server's H2 file committed before every reply
 * (`--commit-each-command`, scripts/mongo-java/Main.java). A restart is then a crash, not a clean
 * shutdown: SIGKILL, and the same command again on the same data directory.
 *
 * FerretDB 1.x on SQLite finds a document by `_id` by scanning its table (tens of ms at 10,000
 * records, growing with them); mongo-java-server keeps an index. The 10,000-message Kafka runs
 * need the second.
 *
 * Every process started here is stopped by its PID in {@link SoakServers.stop}, and by a
 * synchronous SIGKILL when the process exits without calling it.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, rmSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { MongoClient } from 'mongodb';
import { waitUntil } from '../support/wait.js';

const run = promisify(execFile);

export type StoreKind = 'redis' | 'redis-cluster' | 'mongo';

/** Which server plays MongoDB. */
export type MongoServerKind = 'ferretdb' | 'mongo-java';

export interface SoakServerPorts {
  readonly redis: number;
  readonly cluster: readonly number[];
  readonly ferretdb: number;
  readonly mongoJava: number;
}

export const DEFAULT_PORTS: SoakServerPorts = {
  redis: Number(process.env.EO_SOAK_REDIS_PORT ?? 6395),
  cluster: (process.env.EO_SOAK_CLUSTER_PORTS ?? '7101,7102,7103').split(',').map(Number),
  ferretdb: Number(process.env.EO_SOAK_FERRETDB_PORT ?? 27019),
  mongoJava: Number(process.env.EO_SOAK_MONGO_JAVA_PORT ?? 27039),
};

/** Where a worker finds a store. */
export interface StoreAddress {
  readonly kind: StoreKind;
  /** `redis://...` (redis), `host:port,...` (redis-cluster) or `mongodb://...` (mongo). */
  readonly url: string;
}

export interface SoakServers {
  readonly dir: string;
  address(kind: StoreKind): StoreAddress;
  /** Crashes the store's process(es) (SIGKILL) and starts them again on the same data. */
  restart(kind: StoreKind): Promise<{ downMs: number }>;
  /**
   * Stops everything started here (SIGTERM, then SIGKILL) and removes the data directory;
   * `keepLogs` first copies the servers' logs out and returns where.
   */
  stop(options?: { keepLogs?: boolean }): Promise<string | undefined>;
}

const infraHome = () =>
  process.env.EXACTLY_ONCE_INFRA_HOME ?? join(homedir(), '.cache', 'exactly-once-infra');

/** The FerretDB binary scripts/infra.sh builds (same cache and version variables). */
export function ferretdbBinary(): string {
  return join(infraHome(), 'bin', `ferretdb-${process.env.EO_FERRETDB_VERSION ?? 'v1.24.2'}`);
}

/** mongo-java-server's jars and compiled launcher, as scripts/infra.sh installs them. */
export function mongoJavaHome(): string {
  return join(infraHome(), `mongo-java-server-${process.env.EO_MONGO_JAVA_VERSION ?? '1.47.0'}`);
}

/** The command line of a mongo-java-server whose H2 file survives a SIGKILL with every acknowledged write. */
export function mongoJavaArgs(home: string, port: number, file: string): string[] {
  return [
    '-Xms64m',
    '-Xmx1g',
    '-Djava.awt.headless=true',
    '-Dorg.slf4j.simpleLogger.defaultLogLevel=warn',
    '-cp',
    `${join(home, 'classes')}:${join(home, 'libs', '*')}`,
    'Main',
    '127.0.0.1',
    String(port),
    file,
    '--commit-each-command',
  ];
}

interface Managed {
  readonly name: string;
  readonly command: string;
  readonly args: readonly string[];
  readonly log: string;
  child?: ChildProcess;
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Last resort when the harness dies without stop(): never leave a server behind.
  process.on('exit', () => {
    for (const c of live) if (c.pid !== undefined && c.exitCode === null) process.kill(c.pid, 'SIGKILL');
  });
}

function launch(m: Managed): void {
  const out = openSync(m.log, 'a');
  const child = spawn(m.command, m.args, { stdio: ['ignore', out, out] });
  child.on('error', () => {});
  live.add(child);
  child.on('exit', () => live.delete(child));
  m.child = child;
}

async function terminate(m: Managed, signal: NodeJS.Signals): Promise<void> {
  const child = m.child;
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await gone;
  clearTimeout(timer);
}

const redisPing = async (port: number): Promise<boolean> => {
  try {
    const { stdout } = await run('redis-cli', ['-p', String(port), 'ping'], { timeout: 5_000 });
    return stdout.trim() === 'PONG';
  } catch {
    return false;
  }
};

const clusterOk = async (port: number): Promise<boolean> => {
  try {
    const { stdout } = await run('redis-cli', ['-p', String(port), 'cluster', 'info'], { timeout: 5_000 });
    return /cluster_state:ok/.test(stdout) && /cluster_slots_ok:16384/.test(stdout);
  } catch {
    return false;
  }
};

const mongoPing = async (url: string): Promise<boolean> => {
  const client = new MongoClient(url, { serverSelectionTimeoutMS: 1_000, connectTimeoutMS: 1_000 });
  try {
    await client.db('admin').command({ ping: 1 });
    return true;
  } catch {
    return false;
  } finally {
    await client.close().catch(() => {});
  }
};

const redisArgs = (port: number, dir: string, cluster: boolean): string[] => [
  '--bind',
  '127.0.0.1',
  '--port',
  String(port),
  '--dir',
  dir,
  '--daemonize',
  'no',
  '--save',
  '',
  '--appendonly',
  'yes',
  '--appendfsync',
  'always',
  '--maxmemory-policy',
  'noeviction',
  ...(cluster ? ['--cluster-enabled', 'yes', '--cluster-config-file', join(dir, 'nodes.conf')] : []),
];

/**
 * Starts the servers of `kinds` (each once) and waits until they answer. A failure half-way stops
 * what was started.
 */
export async function startSoakServers(
  kinds: readonly StoreKind[],
  ports: SoakServerPorts = DEFAULT_PORTS,
  mongoServer: MongoServerKind = 'ferretdb',
): Promise<SoakServers> {
  installExitHook();
  const dir = mkdtempSync(join(tmpdir(), 'eo-soak-'));
  const managed = new Map<StoreKind, Managed[]>();
  const logOf = (name: string) => join(dir, `${name}.log`);
  const mongoUrl = `mongodb://127.0.0.1:${mongoServer === 'ferretdb' ? ports.ferretdb : ports.mongoJava}`;

  const stop = async ({ keepLogs = false } = {}) => {
    await Promise.all([...managed.values()].flat().map((m) => terminate(m, 'SIGTERM')));
    // The servers' own logs of a failed run (a FerretDB that stopped answering...) outlive it.
    let kept: string | undefined;
    const logs = readdirSync(dir).filter((f) => f.endsWith('.log'));
    if (keepLogs && logs.length > 0) {
      kept = mkdtempSync(join(tmpdir(), 'eo-soak-logs-'));
      for (const f of logs) copyFileSync(join(dir, f), join(kept, f));
    }
    rmSync(dir, { recursive: true, force: true });
    return kept;
  };

  const waitUp = async (kind: StoreKind) => {
    const timeoutMs = 60_000;
    if (kind === 'redis') {
      await waitUntil(() => redisPing(ports.redis), { timeoutMs, intervalMs: 100, message: 'soak redis' });
    } else if (kind === 'redis-cluster') {
      await waitUntil(async () => (await Promise.all(ports.cluster.map(redisPing))).every(Boolean), {
        timeoutMs,
        intervalMs: 100,
        message: 'soak redis cluster nodes',
      });
    } else {
      await waitUntil(() => mongoPing(mongoUrl), {
        timeoutMs,
        intervalMs: 200,
        message: `soak ${mongoServer}`,
      });
    }
  };
  const waitHealthy = async (kind: StoreKind) => {
    await waitUp(kind);
    if (kind === 'redis-cluster') {
      await waitUntil(async () => (await Promise.all(ports.cluster.map(clusterOk))).every(Boolean), {
        timeoutMs: 60_000,
        intervalMs: 200,
        message: 'soak redis cluster state ok',
      });
    }
  };

  try {
    for (const kind of new Set(kinds)) {
      if (kind === 'redis') {
        const d = join(dir, 'redis');
        mkdirSync(d);
        managed.set(kind, [
          {
            name: 'redis',
            command: 'redis-server',
            args: redisArgs(ports.redis, d, false),
            log: logOf('redis'),
          },
        ]);
      } else if (kind === 'redis-cluster') {
        managed.set(
          kind,
          ports.cluster.map((port) => {
            const d = join(dir, `cluster-${port}`);
            mkdirSync(d);
            return {
              name: `cluster-${port}`,
              command: 'redis-server',
              args: redisArgs(port, d, true),
              log: logOf(`cluster-${port}`),
            };
          }),
        );
      } else if (mongoServer === 'mongo-java') {
        const home = mongoJavaHome();
        if (!existsSync(join(home, 'classes', 'Main.class')))
          throw new Error(
            `${home} is missing its launcher: run \`bash scripts/infra.sh install mongo-java\``,
          );
        const d = join(dir, 'mongo-java');
        mkdirSync(d);
        managed.set(kind, [
          {
            name: 'mongo-java',
            command: 'java',
            args: mongoJavaArgs(home, ports.mongoJava, join(d, 'mongo.mv')),
            log: logOf('mongo-java'),
          },
        ]);
      } else {
        const bin = ferretdbBinary();
        if (!existsSync(bin))
          throw new Error(`${bin} is missing: run \`bash scripts/infra.sh install ferretdb\``);
        const d = join(dir, 'ferretdb');
        mkdirSync(join(d, 'sqlite'), { recursive: true });
        mkdirSync(join(d, 'state'));
        managed.set(kind, [
          {
            name: 'ferretdb',
            command: bin,
            args: [
              `--listen-addr=127.0.0.1:${ports.ferretdb}`,
              '--handler=sqlite',
              `--sqlite-url=file:${join(d, 'sqlite')}/?_pragma=synchronous(full)`,
              `--state-dir=${join(d, 'state')}`,
              '--debug-addr=-',
              '--telemetry=disable',
              '--log-level=warn',
            ],
            log: logOf('ferretdb'),
          },
        ]);
      }
      for (const m of managed.get(kind) ?? []) launch(m);
    }
    for (const kind of managed.keys()) await waitUp(kind);
    if (managed.has('redis-cluster')) {
      await run(
        'redis-cli',
        [
          '--cluster',
          'create',
          ...ports.cluster.map((p) => `127.0.0.1:${p}`),
          '--cluster-replicas',
          '0',
          '--cluster-yes',
        ],
        { timeout: 60_000 },
      );
      await waitHealthy('redis-cluster');
    }
  } catch (error) {
    await stop();
    throw error;
  }

  return {
    dir,
    address(kind) {
      if (!managed.has(kind)) throw new Error(`soak server ${kind} was not started`);
      if (kind === 'redis') return { kind, url: `redis://127.0.0.1:${ports.redis}` };
      if (kind === 'redis-cluster')
        return { kind, url: ports.cluster.map((p) => `127.0.0.1:${p}`).join(',') };
      return { kind, url: mongoUrl };
    },
    async restart(kind) {
      const ms = managed.get(kind);
      if (!ms) throw new Error(`soak server ${kind} was not started`);
      const t0 = Date.now();
      await Promise.all(ms.map((m) => terminate(m, 'SIGKILL')));
      for (const m of ms) launch(m);
      await waitHealthy(kind);
      return { downMs: Date.now() - t0 };
    },
    stop,
  };
}
