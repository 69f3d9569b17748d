/**
 * The pipeline alone: core's processor on messages made in this process, no broker and no server,
 * so that what a message costs in core (CPU, allocation, garbage collection) is measured without
 * a broker's or a store server's noise, and the in-memory store's own share of the `sdk-memory`
 * figures is seen apart. A diagnostic for work on the hot path; the targets are measured by
 * `run.ts`, with brokers.
 *
 *   npm run bench:pipeline -- --messages 200000 --rounds 3
 *
 * Variants, each over the same messages and the same handler as the broker runs (workload.ts):
 * - `raw`: decode the JSON body and call the handler, as the raw consumers do;
 * - `sdk-memory`: the processor on core's in-memory store (the broker runs' `sdk-memory`);
 * - `sdk-nothing`: the processor on a store that answers every begin `acquired` and every
 *   completion `ok` and keeps nothing: the pipeline's cost without any store's;
 * - `sdk-redis` (with `--redis`): the processor on the Redis store (`EO_REDIS_URL`, default
 *   127.0.0.1:6379, database 14, a prefix of its own): the store's client-side cost, and its
 *   server time (`INFO commandstats`, the scripts' usec) without a broker beside it.
 * Modes: `in-order` (Kafka: ordered groups of 32 records, 4 partitions at once) and `one-by-one`
 * (RabbitMQ: each delivery processed apart, 100 in flight).
 */
import { createHook } from 'node:async_hooks';
import { GCProfiler } from 'node:v8';
import {
  type BeginRequest,
  type BeginResult,
  type CompleteRequest,
  createMemoryStore,
  createProcessor,
  type Delivery,
  type FencedResult,
  type ProcessedStore,
} from '@exactly-once/core';
import { createRedisStore } from '@exactly-once/store-redis';
import { Command } from 'commander';
import { Redis } from 'ioredis';
import { env, uniqueName } from './lib/env.js';
import { commandDelta, commandStats, deleteByPrefix } from './lib/stores.js';
import { median } from './lib/stats.js';
import { handler, message, type Order } from './lib/workload.js';

type Variant = 'raw' | 'sdk-memory' | 'sdk-nothing' | 'sdk-redis';
type Mode = 'in-order' | 'one-by-one';
const MODES: readonly Mode[] = ['in-order', 'one-by-one'];
const GROUP = 32;
const PARTITIONS = 4;
const IN_FLIGHT = 100;

const o = new Command()
  .option('--messages <n>', 'messages per measured run', '200000')
  .option('--rounds <n>', 'interleaved rounds', '3')
  .option('--warmup <n>', "messages of each variant's unreported first run", '20000')
  .option('--redis', 'also the Redis store (sdk-redis), on the server of EO_REDIS_URL')
  .option('--variants <list>', 'only these variants (e.g. sdk-redis, to profile it alone)')
  .option('--promises', 'also count the promises made a message, in one more run of each (not timed)')
  .parse()
  .opts<{
    messages: string;
    rounds: string;
    warmup: string;
    redis?: boolean;
    variants?: string;
    promises?: boolean;
  }>();
const messages = Number(o.messages);
const rounds = Number(o.rounds);
const VARIANTS: readonly Variant[] = (
  ['raw', 'sdk-memory', 'sdk-nothing', ...(o.redis ? (['sdk-redis'] as const) : [])] as const
).filter((v) => o.variants === undefined || o.variants.split(',').includes(v));
const redis = o.redis ? new Redis(env.redisUrl, { db: env.redisDb, maxRetriesPerRequest: 2 }) : undefined;
const redisPrefix = uniqueName('eo-bench-pipeline');

/** Keeps nothing: every key is new, every completion lands. Its answers are shared, not made. */
function storeKeepingNothing(): ProcessedStore {
  const memory = createMemoryStore();
  const steps = Object.freeze({});
  const acquired = (request: BeginRequest, now: number): BeginResult => ({
    status: 'acquired',
    kind: 'new',
    fence: 1,
    attempt: 1,
    leaseUntil: now + request.leaseMs,
    steps,
  });
  return {
    ...memory,
    begin: async (request) => acquired(request, Date.now()),
    beginMany: async (requests) => {
      const now = Date.now();
      return requests.map((r) => acquired(r, now));
    },
    complete: async () => 'ok',
    completeMany: async (requests: readonly CompleteRequest[]): Promise<FencedResult[]> =>
      requests.map(() => 'ok'),
  };
}

function deliveryOf(batch: string, i: number): Delivery {
  const m = message(batch, i);
  return { body: m.body, headers: m.headers, destination: 'orders', system: 'bench' };
}

/** Processes `count` messages of `batch` the way `mode` says; resolves once all have settled. */
function consumer(variant: Variant): (deliveries: Delivery[], mode: Mode) => Promise<void> {
  if (variant === 'raw') {
    return async (deliveries) => {
      for (const d of deliveries) await handler(JSON.parse(Buffer.from(d.body).toString()) as Order);
    };
  }
  const processor = createProcessor<Order>({
    consumer: 'bench',
    store:
      variant === 'sdk-memory'
        ? createMemoryStore()
        : variant === 'sdk-redis' && redis
          ? createRedisStore({ client: redis, keyPrefix: redisPrefix })
          : storeKeepingNothing(),
    handler,
    retentionMs: 3_600_000,
    retentionCheck: 'off',
  });
  const settled = (action: string) => {
    if (action !== 'ack') throw new Error(`pipeline bench: a message was not acked (${action})`);
  };
  return async (deliveries, mode) => {
    if (mode === 'in-order') {
      const lanes = Array.from({ length: PARTITIONS }, (_, lane) => async () => {
        for (let from = lane * GROUP; from < deliveries.length; from += GROUP * PARTITIONS) {
          const run = processor.processInOrder(deliveries.slice(from, from + GROUP));
          for (const d of await Promise.all(run.dispositions)) settled(d.action);
        }
      });
      await Promise.all(lanes.map((lane) => lane()));
      return;
    }
    let next = 0;
    const worker = async () => {
      while (next < deliveries.length)
        settled((await processor.process(deliveries[next++] as Delivery)).action);
    };
    await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  };
}

interface Measured {
  cpuUs: number;
  allocatedKb: number;
  gcUs: number;
  /** Redis server time in the store's scripts (`INFO commandstats` usec), per message. */
  serverUs?: number;
}

/** CPU, bytes allocated (heap growth between collections) and collection time, per message. */
async function measure(run: () => Promise<void>, count: number, server?: Redis): Promise<Measured> {
  const before = server && (await commandStats(server));
  const profiler = new GCProfiler();
  profiler.start();
  const cpu = process.cpuUsage();
  await run();
  const used = process.cpuUsage(cpu);
  const after = server && (await commandStats(server));
  const gcs = profiler.stop()?.statistics ?? [];
  let allocated = 0;
  let gcUs = 0;
  let last: number | undefined;
  for (const gc of gcs) {
    const before = gc.beforeGC.heapStatistics.usedHeapSize;
    if (last !== undefined) allocated += before - last;
    last = gc.afterGC.heapStatistics.usedHeapSize;
    gcUs += gc.cost;
  }
  return {
    cpuUs: (used.user + used.system) / count,
    allocatedKb: allocated / count / 1024,
    gcUs: gcUs / count,
    ...(before && after ? { serverUs: commandDelta(before, after, ['evalsha', 'eval']).usec / count } : {}),
  };
}

/**
 * Promises made a message (async functions' own, `then`s', and an await's, which V8 makes only
 * while a hook watches), counted by an async hook in a run of its own: a hook slows every
 * promise, so no timed run has one.
 */
async function promisesPerMessage(run: () => Promise<void>, count: number): Promise<number> {
  let made = 0;
  const hook = createHook({
    init(_id, type) {
      if (type === 'PROMISE') made++;
    },
  }).enable();
  try {
    await run();
  } finally {
    hook.disable();
  }
  return made / count;
}

const results = new Map<string, Measured[]>();
const promises = new Map<string, number>();
let batch = 0;
for (const mode of MODES) {
  const consumers = new Map(VARIANTS.map((v) => [v, consumer(v)]));
  for (const v of VARIANTS) {
    const warm = Array.from({ length: Number(o.warmup) }, (_, i) => deliveryOf(`w${batch}`, i));
    batch++;
    await consumers.get(v)?.(warm, mode);
  }
  for (let round = 0; round < rounds; round++) {
    // Interleaved, in a rotating order: a drift of the machine spreads over every variant.
    for (let k = 0; k < VARIANTS.length; k++) {
      const v = VARIANTS[(k + round) % VARIANTS.length] as Variant;
      const deliveries = Array.from({ length: messages }, (_, i) => deliveryOf(`b${batch}`, i));
      batch++;
      const run = consumers.get(v);
      if (!run) continue;
      const m = await measure(() => run(deliveries, mode), messages, v === 'sdk-redis' ? redis : undefined);
      const key = `${mode} ${v}`;
      results.set(key, [...(results.get(key) ?? []), m]);
    }
  }
  if (o.promises) {
    for (const v of VARIANTS) {
      const deliveries = Array.from({ length: Number(o.warmup) }, (_, i) => deliveryOf(`p${batch}`, i));
      batch++;
      const run = consumers.get(v);
      if (run)
        promises.set(
          `${mode} ${v}`,
          await promisesPerMessage(() => run(deliveries, mode), deliveries.length),
        );
    }
  }
}

const header = [
  'mode',
  'variant',
  'CPU us/msg',
  '+us vs raw',
  'alloc kB/msg',
  'GC us/msg',
  'GC %',
  'Redis us/msg',
  ...(o.promises ? ['promises/msg'] : []),
];
const rows: string[][] = [];
for (const mode of MODES) {
  const raw = median((results.get(`${mode} raw`) ?? []).map((m) => m.cpuUs));
  for (const v of VARIANTS) {
    const ms = results.get(`${mode} ${v}`) ?? [];
    const cpu = median(ms.map((m) => m.cpuUs));
    const gc = median(ms.map((m) => m.gcUs));
    rows.push([
      mode,
      v,
      cpu.toFixed(1),
      v === 'raw' ? '' : (cpu - raw).toFixed(1),
      median(ms.map((m) => m.allocatedKb)).toFixed(1),
      gc.toFixed(1),
      ((gc / cpu) * 100).toFixed(0),
      v === 'sdk-redis' ? median(ms.map((m) => m.serverUs ?? Number.NaN)).toFixed(1) : '',
      ...(o.promises ? [(promises.get(`${mode} ${v}`) ?? Number.NaN).toFixed(1)] : []),
    ]);
  }
}
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
const line = (cells: string[]) =>
  cells.map((c, i) => (i < 2 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ');
console.log(
  `pipeline alone: ${messages} messages a run, medians of ${rounds} interleaved rounds; node ${process.version}`,
);
console.log(line(header));
console.log('-'.repeat(line(header).length));
for (const r of rows) console.log(line(r));
console.log(
  '  CPU: this process (GC threads included). alloc: heap growth between collections, per message.\n' +
    '  GC: time in collections (their cost as V8 reports it). No broker, no server: the broker runs\n' +
    "  measure the targets; this shows core's own share and the in-memory store's apart.\n" +
    "  Redis us/msg (--redis): the server's time in the store's scripts (INFO commandstats usec).\n" +
    '  promises/msg (--promises): promises made a message (async functions, thens, and an await each,\n' +
    '  as a hook sees them), counted in one more run of --warmup messages of each, after the timed ones.',
);
if (redis) {
  // The run's records: everything under its own prefix, in the bench's own database.
  await deleteByPrefix(redis, `${redisPrefix}:`);
  await redis.quit();
}
