/** Where the servers are, unique names, and a description of the machine a run happened on. */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cpus, freemem, loadavg, totalmem } from 'node:os';
import { fileURLToPath } from 'node:url';

export const env = {
  redisUrl: process.env.EO_REDIS_URL ?? 'redis://127.0.0.1:6379',
  /** A database of its own: everything the bench writes to Redis lives there, under its own prefixes. */
  redisDb: Number(process.env.EO_BENCH_REDIS_DB ?? 14),
  /** The 3-master Redis Cluster of `scripts/infra.sh` (no databases there: DB 0, own prefixes). */
  redisClusterNodes: (process.env.EO_REDIS_CLUSTER_NODES ?? '127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003')
    .split(',')
    .map((node) => {
      const [host = '127.0.0.1', port = '6379'] = node.trim().split(':');
      return { host, port: Number(port) };
    }),
  amqpUrl: process.env.EO_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672',
  rabbitManagementUrl: process.env.EO_RABBIT_MANAGEMENT_URL ?? 'http://127.0.0.1:15672',
  kafkaBrokers: (process.env.EO_KAFKA_BROKERS ?? '127.0.0.1:9092').split(','),
  /** FerretDB 1.x (SQLite) of `scripts/infra.sh`: the `sdk-mongo` variant. */
  mongoUrl: process.env.EO_MONGO_URL ?? 'mongodb://127.0.0.1:27017',
  /** mongo-java-server (H2) of `scripts/infra.sh`: the `sdk-mongo-java` variant. */
  mongoJavaUrl: process.env.EO_MONGO_JAVA_URL ?? 'mongodb://127.0.0.1:27018',
} as const;

export const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
export const benchDir = fileURLToPath(new URL('../', import.meta.url));

/** Short random names: queues, topics, groups, Redis prefixes and Mongo collections of one run. */
export function uniqueName(prefix: string): string {
  return `${prefix}-${randomBytes(5).toString('hex')}`;
}

export interface LoadSample {
  readonly at: string;
  readonly load1: number;
}

/** 1-minute load average; recorded around every measurement, since other work shares the CPUs. */
export function sampleLoad(): LoadSample {
  return { at: new Date().toISOString(), load1: Number((loadavg()[0] ?? 0).toFixed(2)) };
}

export interface MachineInfo {
  readonly nproc: number;
  readonly cpuModel: string;
  readonly memoryGiB: number;
  readonly freeMemoryGiB: number;
  readonly node: string;
  readonly platform: string;
  readonly loadavg: readonly number[];
  /** `scripts/infra.sh status` output: one line per server with its version. */
  readonly servers: readonly string[];
}

export function machineInfo(): MachineInfo {
  let servers: string[] = [];
  try {
    const out = execFileSync('bash', ['scripts/infra.sh', 'status'], {
      cwd: repoRoot,
      encoding: 'utf8',
      timeout: 30_000,
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    servers = out.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('home:'));
  } catch (error) {
    // status exits non-zero when any server is down; its output is still the best description.
    const out = (error as { stdout?: string }).stdout ?? '';
    servers = out.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('home:'));
  }
  return {
    nproc: cpus().length,
    cpuModel: cpus()[0]?.model ?? 'unknown',
    memoryGiB: Number((totalmem() / 1024 ** 3).toFixed(1)),
    freeMemoryGiB: Number((freemem() / 1024 ** 3).toFixed(1)),
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
    loadavg: loadavg().map((l) => Number(l.toFixed(2))),
    servers,
  };
}
