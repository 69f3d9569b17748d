/**
 * The Redis store's server side alone: the time Redis spends in the store's scripts per key, for
 * each step of a message (a new key's `beginMany`, its `completeMany`, a duplicate's `beginMany`)
 * at several batch sizes, beside the plain commands Powertools sends for a key (`SET NX` then
 * `SET`) on the same server in the same run. No consumer, no broker: the broker runs' `Redis CPU
 * us/msg` figure mixes this with the machine's contention (a script preempted mid-run counts its
 * wait as its time); this is what the scripts cost by themselves.
 *
 *   npm run bench:redis-scripts -- --keys 20000 --rounds 3
 *
 * Server time is `INFO commandstats` usec (EVALSHA for the store, SET for the baseline): wall
 * time inside the command, so run it on a quiet machine.
 */
import { loadavg } from 'node:os';
import type { BeginRequest, CompleteRequest } from '@exactly-once/core';
import { createRedisStore, type RedisProcessedStore } from '@exactly-once/store-redis';
import { Command } from 'commander';
import { Redis } from 'ioredis';
import { env, uniqueName } from './lib/env.js';
import { commandStats, deleteByPrefix } from './lib/stores.js';
import { median } from './lib/stats.js';

const o = new Command()
  .option('--keys <n>', 'keys per measured run', '20000')
  .option('--rounds <n>', 'rounds (medians are printed)', '3')
  .option('--batches <list>', 'keys per batch call', '1,16,64')
  .parse()
  .opts<{ keys: string; rounds: string; batches: string }>();
const keys = Number(o.keys);
const rounds = Number(o.rounds);
const batches = o.batches.split(',').map(Number);
/** The target for the whole message's server time, begin and completion together (bench/README.md). */
const TARGET_US = 6;

const redis = new Redis(env.redisUrl, { db: env.redisDb, maxRetriesPerRequest: 2 });
const prefix = uniqueName('eo-bench-scripts');
const store: RedisProcessedStore = createRedisStore({ client: redis, keyPrefix: prefix });
if (!store.beginMany || !store.completeMany) throw new Error('the Redis store has no batch operations');
const beginMany = store.beginMany.bind(store);
const completeMany = store.completeMany.bind(store);
// What the broker runs' handler returns, as core encodes it: a small inline result.
const result = { kind: 'inline', data: Buffer.from('{"ok":true,"orderId":"o-1234"}') } as const;
const fingerprint = 'f'.repeat(64);

/** Server usec of `command` spent while `run` ran, per key. */
async function serverUs(command: string, run: () => Promise<void>): Promise<number> {
  const usec = async () => (await commandStats(redis)).get(command)?.usec ?? 0;
  const before = await usec();
  await run();
  return ((await usec()) - before) / keys;
}

async function inBatches<T>(items: readonly T[], size: number, call: (part: T[]) => Promise<unknown>) {
  for (let i = 0; i < items.length; i += size) await call(items.slice(i, i + size));
}

interface Steps {
  begin: number;
  complete: number;
  duplicate: number;
}

async function scripts(batch: number, round: number): Promise<Steps> {
  const requests: BeginRequest[] = Array.from({ length: keys }, (_, i) => ({
    key: `r${round}-b${batch}-${i}`,
    fingerprint,
    owner: 'worker-1',
    leaseMs: 30_000,
  }));
  const fences: number[] = [];
  const begin = await serverUs('evalsha', () =>
    inBatches(requests, batch, async (part) => {
      for (const answer of await beginMany(part)) {
        if (answer.status !== 'acquired') throw new Error(`expected acquired, got ${answer.status}`);
        fences.push(answer.fence);
      }
    }),
  );
  const completions: CompleteRequest[] = requests.map((r, i) => ({
    key: r.key,
    fence: fences[i] as number,
    outgoing: [],
    retentionMs: 3_600_000,
    result,
  }));
  const complete = await serverUs('evalsha', () =>
    inBatches(completions, batch, async (part) => {
      if ((await completeMany(part)).some((a) => a !== 'ok')) throw new Error('a completion was lost');
    }),
  );
  const duplicate = await serverUs('evalsha', () => inBatches(requests, batch, (part) => beginMany(part)));
  return { begin, complete, duplicate };
}

/** Powertools' two commands for a key, pipelined `batch` at a time: claim (SET NX), then the result. */
async function plain(batch: number, round: number): Promise<Steps> {
  const names = Array.from({ length: keys }, (_, i) => `${prefix}:pt:r${round}-b${batch}-${i}`);
  const claim = JSON.stringify({ status: 'INPROGRESS', expiration: Date.now() + 3_600_000 });
  const done = JSON.stringify({ status: 'COMPLETED', data: { ok: true, orderId: 'o-1234' }, expiration: 0 });
  const begin = await serverUs('set', () =>
    inBatches(names, batch, async (part) => {
      const p = redis.pipeline();
      for (const name of part) p.set(name, claim, 'PX', 3_600_000, 'NX');
      await p.exec();
    }),
  );
  const complete = await serverUs('set', () =>
    inBatches(names, batch, async (part) => {
      const p = redis.pipeline();
      for (const name of part) p.set(name, done, 'PX', 3_600_000);
      await p.exec();
    }),
  );
  const duplicate = await serverUs('set', () =>
    inBatches(names, batch, async (part) => {
      const p = redis.pipeline();
      for (const name of part) p.set(name, claim, 'PX', 3_600_000, 'NX');
      await p.exec();
    }),
  );
  return { begin, complete, duplicate };
}

const loadBefore = loadavg()[0] ?? 0;
const measured = new Map<string, Steps[]>();
for (let round = 0; round < rounds; round++) {
  for (const batch of batches) {
    for (const [name, run] of [
      ['store scripts', scripts],
      ['SET NX + SET', plain],
    ] as const) {
      const key = `${name}|${batch}`;
      measured.set(key, [...(measured.get(key) ?? []), await run(batch, round)]);
    }
  }
}
const loadAfter = loadavg()[0] ?? 0;

const header = [
  'commands',
  'batch',
  'begin us/key',
  'complete us/key',
  'message',
  'target',
  'duplicate us/key',
];
const rows = [...measured].map(([key, runs]) => {
  const [name = '', batch = ''] = key.split('|');
  const m = (pick: (s: Steps) => number) => median(runs.map(pick));
  const total = m((s) => s.begin + s.complete);
  return [
    name,
    batch,
    m((s) => s.begin).toFixed(1),
    m((s) => s.complete).toFixed(1),
    total.toFixed(1),
    `<= ${TARGET_US}`,
    m((s) => s.duplicate).toFixed(1),
  ];
});
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
const line = (cells: string[]) =>
  cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ');
console.log(
  `Redis server time per key, ${keys} keys a run, medians of ${rounds} rounds; load ${loadBefore.toFixed(2)} -> ${loadAfter.toFixed(2)}; ${(await redis.info('server')).match(/^redis_version:(\S+)/m)?.[1] ?? ''}`,
);
console.log(line(header));
console.log('-'.repeat(line(header).length));
for (const r of rows) console.log(line(r));
console.log(
  '  message: begin + complete, what one new message costs the server (no outgoing messages).\n' +
    '  INFO commandstats usec: wall time inside the command; a loaded machine inflates it.',
);

await deleteByPrefix(redis, `${prefix}:`);
await redis.quit();
