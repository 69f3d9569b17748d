/**
 * Storage per processed key. The store packages own their measurements, and this section runs
 * them as they are rather than copying them:
 *
 * - `packages/store-redis/bench/bytes-per-key.ts N --plain`: COMPLETED records through the real
 *   scripts, `used_memory` delta per key (DB 15, its own prefix, deleted afterwards);
 * - the same without `--plain`: records + compaction index, then markers after compaction;
 * - `packages/store-mongo/bench/bytes-per-doc.ts` (EO_BENCH_DOCS): BSON and collStats per record.
 *
 * It adds one figure of its own, per key and independent of other clients' memory: `MEMORY
 * USAGE` of records written by the whole pipeline (processor + Redis store, the bench's handler
 * result), and of Powertools' records for the same messages. `MEMORY USAGE` counts the key and
 * value objects but not the keyspace and expiry dictionary entries (roughly 50-70 bytes more per
 * key), which is what the `used_memory` figures include.
 */
import { spawn } from 'node:child_process';
import { createProcessor } from '@exactly-once/core';
import { Redis } from 'ioredis';
import { env, repoRoot } from './env.js';
import type { PowertoolsKit } from './powertools.js';
import type { Progress } from './progress.js';
import type { StoreKit } from './stores.js';
import { handler, message, type Order } from './workload.js';

export const KEYS_30M = 30_000_000;
const GiB = 1024 ** 3;

export interface StorageFigure {
  figure: string;
  bytes: number;
  at30MGiB: number;
  source: string;
}

export interface StorageResult {
  figures: StorageFigure[];
  /** Full output of each delegated bench, for the JSON record. */
  outputs: Record<string, string>;
}

function figure(figureName: string, bytes: number, source: string): StorageFigure {
  return { figure: figureName, bytes, at30MGiB: (bytes * KEYS_30M) / GiB, source };
}

/**
 * Runs a package bench with the same loader as this one; resolves with its stdout. `onStderr` sees
 * each line of its stderr (progress) as it comes.
 */
export function runBench(
  args: string[],
  extraEnv: Record<string, string>,
  timeoutMs: number,
  onStderr?: (line: string) => void,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', '--conditions=@exactly-once/source', ...args], {
      cwd: repoRoot,
      env: { ...process.env, ...extraEnv },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    let pending = '';
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
      if (!onStderr) return;
      const lines = (pending + d.toString()).split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) if (line.trim() !== '') onStderr(line);
    });
    // SIGINT, not SIGKILL: the package benches delete their keys in a finally block.
    const timer = setTimeout(() => child.kill('SIGINT'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`${args[0]} exited ${code}: ${err.slice(-2000)}${out.slice(-2000)}`));
    });
  });
}

const num = (text: string, re: RegExp): number => Number(re.exec(text)?.[1] ?? Number.NaN);

/** Progress of a child writing to Redis DB 15: its key count, polled. */
async function trackDbSize(progress: Progress, label: string, total: number) {
  const client = new Redis(env.redisUrl, { db: 15, maxRetriesPerRequest: 1 });
  const base = await client.dbsize();
  let seen = 0;
  const poll = setInterval(() => {
    client.dbsize().then(
      (n) => {
        seen = Math.max(seen, n - base);
      },
      () => {},
    );
  }, 1000);
  const task = progress.track(label, total, () => seen);
  return async () => {
    clearInterval(poll);
    task.stop();
    await client.quit();
  };
}

export async function runStorage(
  options: { redisKeys: number; mongoDocs: number; sampleKeys: number; timeoutMs: number },
  kits: { stores: StoreKit; powertools: PowertoolsKit },
  progress: Progress,
): Promise<StorageResult> {
  const figures: StorageFigure[] = [];
  const outputs: Record<string, string> = {};
  const redisBench = 'packages/store-redis/bench/bytes-per-key.ts';
  const n = String(options.redisKeys);
  const src = (extra: string) => `${redisBench} ${n}${extra}`;

  let stop = await trackDbSize(progress, `redis COMPLETED keys (N=${n})`, options.redisKeys);
  try {
    outputs.redisPlain = await runBench([redisBench, n, '--plain'], {}, options.timeoutMs);
  } finally {
    await stop();
  }
  const plain = num(outputs.redisPlain, /COMPLETED records \(no compaction index\): ([\d.]+) bytes\/key/);
  figures.push(figure('redis COMPLETED key, used_memory', plain, src(' --plain')));

  stop = await trackDbSize(progress, `redis markers (N=${n})`, options.redisKeys);
  try {
    outputs.redisMarkers = await runBench([redisBench, n], {}, options.timeoutMs);
  } finally {
    await stop();
  }
  const out = outputs.redisMarkers;
  figures.push(
    figure(
      'redis COMPLETED key + compaction index',
      num(out, /COMPLETED records \+ compaction index: ([\d.]+) bytes\/key/),
      src(''),
    ),
    figure('redis long-term marker, used_memory', num(out, /markers: ([\d.]+) bytes\/key/), src('')),
  );

  figures.push(...(await memoryUsageSample(options.sampleKeys, kits, progress)));

  progress.note(
    `storage: store-mongo bytes-per-doc with ${options.mongoDocs} records (slow on FerretDB 1.x)`,
  );
  const mongoBench = 'packages/store-mongo/bench/bytes-per-doc.ts';
  outputs.mongo = await runBench(
    [mongoBench],
    { EO_BENCH_DOCS: String(options.mongoDocs), EO_MONGO_URL: env.mongoUrl },
    options.timeoutMs,
  );
  const m = outputs.mongo;
  const msrc = `${mongoBench} (EO_BENCH_DOCS=${options.mongoDocs})`;
  figures.push(
    figure('mongo record, BSON size', num(m, /^BSON \(calculateObjectSize\)\s+(\d+)/m), msrc),
    figure('mongo record, collStats size', num(m, /^collStats size\s+(\d+)/m), msrc),
    figure('mongo record, collStats totalIndexSize', num(m, /^collStats totalIndexSize\s+(\d+)/m), msrc),
    figure('mongo record, dbStats totalSize', num(m, /^dbStats totalSize\s+(\d+)/m), msrc),
  );
  return { figures, outputs };
}

/** Average `MEMORY USAGE` (SAMPLES 0: exact) of up to `limit` keys under `prefix`. */
async function averageMemoryUsage(client: Redis, prefix: string, limit: number): Promise<number> {
  let cursor = '0';
  let total = 0;
  let count = 0;
  do {
    const [next, keys] = await client.scanBuffer(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    cursor = next.toString();
    for (const key of keys) {
      if (count >= limit) break;
      total += Number(await client.call('MEMORY', 'USAGE', key, 'SAMPLES', '0'));
      count++;
    }
  } while (cursor !== '0' && count < limit);
  return count === 0 ? Number.NaN : total / count;
}

async function memoryUsageSample(
  count: number,
  kits: { stores: StoreKit; powertools: PowertoolsKit },
  progress: Progress,
): Promise<StorageFigure[]> {
  const client = kits.stores.redis;
  let done = 0;
  const task = progress.track(`MEMORY USAGE samples (${count} keys x2)`, count * 2, () => done);
  try {
    // SDK: through the processor, so the record is what the pipeline really writes.
    const store = await kits.stores.make('redis', { shortPrefix: true });
    const processor = createProcessor<Order>({
      consumer: 'billing',
      store: store.store,
      handler,
      retentionMs: 7 * 86_400_000,
    });
    const batch = `mu-${kits.stores.runId}`;
    let sdkBytes = Number.NaN;
    let ptBytes = Number.NaN;
    try {
      for (let i = 0; i < count; i++) {
        const m = message(batch, i);
        await processor.process({ body: m.body, headers: m.headers, destination: 'orders', system: 'bench' });
        done++;
      }
      sdkBytes = await averageMemoryUsage(client, store.keyPrefix as string, count);
    } finally {
      await store.cleanup();
    }
    const pt = await kits.powertools.make(handler, client);
    try {
      for (let i = 0; i < count; i++) {
        const m = message(batch, i);
        await pt.handle({ key: m.key, payload: JSON.parse(m.body.toString()) as Order });
        done++;
      }
      ptBytes = await averageMemoryUsage(client, pt.prefix, count);
    } finally {
      await pt.cleanup();
    }
    const src = `MEMORY USAGE, ${count} keys written through the pipeline`;
    return [
      figure('redis SDK record, MEMORY USAGE', sdkBytes, src),
      figure('redis Powertools record, MEMORY USAGE', ptBytes, src),
    ];
  } finally {
    task.stop();
  }
}
