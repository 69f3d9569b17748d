/**
 * Crash matrix: a consumer process is SIGKILLed at each pipeline point, restarted, and the
 * effects are counted in a ledger it does not own (test/support/crash-ledger.ts). Every point must
 * end with one idempotent effect and one completion per key, nothing lost, every outgoing message
 * delivered — and every extra run of the handler's non-idempotent effect must be explained by a
 * kill that caught that attempt between its effect and its completion.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import type { ProcessedRecord, ProcessedStore } from '@exactly-once/core';
import { createMongoStore } from '@exactly-once/store-mongo';
import { createRedisStore } from '@exactly-once/store-redis';
import { type Db, MongoClient } from 'mongodb';
import { afterAll, describe, expect, it } from 'vitest';
import { workerArgs } from '../support/bundle.js';
import { dropLedger, tallyLedger } from '../support/crash-ledger.js';
import { env, uniqueName } from '../support/env.js';
import { dropRedisPrefix } from '../support/redis.js';
import { waitUntil } from '../support/wait.js';
import type { CrashWorkerConfig, KillPoint } from './crash-worker.js';
import { newRedis, rawChannel } from './helpers.js';

const MESSAGES = Number(process.env.EO_CRASH_MESSAGES ?? 400);
const KILLS = 3;
/**
 * How long a point may make no progress (no record completed, nothing delivered) before it fails.
 * Not a bound on the whole point: on FerretDB, next to another test file, a point can take
 * minutes and still be correct; a stalled pipeline shows as no progress. Longer than the store
 * deadline (60 s), which a hung store call waits out before it is tried again.
 */
const STALL_MS = 90_000;
// 'none' is the baseline: the same run without a kill.
const POINTS = (process.env.EO_CRASH_POINTS?.split(',') ?? [
  'none',
  'after-begin',
  'in-handler',
  'after-complete',
  'after-publish',
  'before-ack',
  'mid-batch',
]) as KillPoint[];
const redis = newRedis();
const children = new Set<ChildProcess>();
/** The Mongo run's client (FerretDB by default), opened by its describe block. */
let mongo: MongoClient | undefined;
afterAll(async () => {
  // A failed run must not leave workers behind.
  for (const c of children) c.kill('SIGKILL');
  await redis.quit();
  await mongo?.close();
});

/**
 * Which processed-store the workers use (Redis under a key prefix, or a Mongo database per point)
 * and how many messages each point sends.
 */
type StoreUnder = { readonly kind: 'redis' | 'mongo'; readonly messages: number };
let under: StoreUnder = { kind: 'redis', messages: MESSAGES };
const storeFor = (storePrefix: string): ProcessedStore =>
  under.kind === 'redis'
    ? createRedisStore({ client: redis, keyPrefix: storePrefix })
    : createMongoStore({ db: mongoDbFor(storePrefix) });
/** One database per point: the Mongo name of a run's store prefix. */
const mongoDbFor = (storePrefix: string): Db => {
  if (under.kind !== 'mongo' || mongo === undefined) throw new Error('no Mongo run');
  return mongo.db(`eo_${storePrefix.replace(/[^a-zA-Z0-9]/g, '_')}`.slice(0, 60));
};

function startWorker(config: CrashWorkerConfig): {
  child: ChildProcess;
  exited: Promise<NodeJS.Signals | null>;
} {
  const child = spawn(process.execPath, workerArgs('test/rabbitmq/crash-worker.ts'), {
    env: { ...process.env, EO_WORKER_CONFIG: JSON.stringify(config) },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  children.add(child);
  child.on('exit', () => children.delete(child));
  const exited = new Promise<NodeJS.Signals | null>((resolve) =>
    child.on('exit', (_code, signal) => resolve(signal)),
  );
  return { child, exited };
}

const storeKey = (i: number) => `default:crash:k${i}`;

/** Every message's record: the ground truth (a SIGKILL can cut the ledger's own writes). */
async function readRecords(storePrefix: string): Promise<Map<string, ProcessedRecord | undefined>> {
  const store = storeFor(storePrefix);
  const keys = Array.from({ length: under.messages }, (_, i) => storeKey(i));
  const records = await Promise.all(keys.map((k) => store.get(k)));
  return new Map(keys.map((k, i) => [k, records[i]]));
}

async function countCompleted(storePrefix: string): Promise<number> {
  // Mongo: COMPLETED elements (no key is used twice here), one query instead of 400 chain reads.
  if (under.kind === 'mongo')
    return mongoDbFor(storePrefix).collection('eo_records').countDocuments({ s: 2 });
  const records = await readRecords(storePrefix);
  return [...records.values()].filter((r) => r?.state === 'COMPLETED').length;
}

async function runPoint(point: KillPoint) {
  const queue = uniqueName(`crash-${point}`);
  const outQueue = `${queue}.out`;
  const ledger = `ledger:${queue}`;
  const raw = await rawChannel();
  await raw.ch.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
  await raw.ch.assertQueue(outQueue, { durable: true });
  for (let i = 0; i < under.messages; i++)
    await raw.publish(queue, { id: `m${i}` }, { 'x-idempotency-key': `k${i}` });
  const storePrefix = `crash:${queue}`;
  const base = {
    queue,
    outQueue,
    ledger,
    storePrefix,
    ...(under.kind === 'mongo' ? { mongoDb: mongoDbFor(storePrefix).databaseName } : {}),
  };
  let kills = 0;
  // Kill at spread-out events so each restart finds work in a different state; the three kills
  // together stay well inside the run (5%, 14%, 23% of the messages: 20, 56, 92 of 400).
  for (let k = 0; point !== 'none' && k < KILLS; k++) {
    // mid-batch counts completeMany calls of >= 2 requests, not deliveries: its worker returns
    // handlers in pairs (see crash-worker.ts), so such a call comes at most every 2 deliveries;
    // dividing by 4 leaves room for pairs that meet other completes: events 5, 14, 23 of 400.
    const at = under.messages * (0.05 + 0.09 * k);
    const killAt = Math.max(1, Math.round(point === 'mid-batch' ? at / 4 : at));
    const worker = startWorker({ ...base, killPoint: point, killAt });
    let settled = false;
    let done = 0;
    const outcome = await Promise.race([
      worker.exited,
      // A worker that finishes the queue without reaching its kill would wait for ever.
      waitUntil(
        async () => {
          if (settled) return true;
          done = await countCompleted(base.storePrefix);
          return (await raw.count(queue)) === 0 && done === under.messages;
        },
        {
          timeoutMs: STALL_MS,
          intervalMs: 250,
          progress: () => done,
          message: () => `${point}: kill #${k + 1} or the end of the queue (completed ${done})`,
        },
      ).then(() => 'finished' as const),
    ]);
    settled = true;
    if (outcome === 'SIGKILL') {
      kills++;
      continue;
    }
    worker.child.kill('SIGTERM');
    await worker.exited;
    break;
  }
  const last = startWorker({ ...base, killPoint: 'none', killAt: 0 });
  const outIds = new Set<string>();
  let state = '';
  let completed = 0;
  let outTotal = 0;
  await waitUntil(
    async () => {
      for (const m of await raw.drain(outQueue)) {
        outTotal++;
        outIds.add(String(m.properties.headers?.['x-idempotency-key']));
      }
      completed = await countCompleted(base.storePrefix);
      const pending = await raw.count(queue);
      state = `completed ${completed}, outgoing ${outIds.size}, queued ${pending}`;
      return completed === under.messages && outIds.size === under.messages && pending === 0;
    },
    {
      timeoutMs: STALL_MS,
      intervalMs: 250,
      progress: () => state,
      message: () => `${point}: all completed and delivered (${state})`,
    },
  );
  last.child.kill('SIGTERM');
  await last.exited;
  const tally = await tallyLedger(redis, ledger, await readRecords(base.storePrefix));
  const dlq = await raw.count(`${queue}.dlq`).catch(() => 0);
  await raw.deleteQueues([queue, outQueue, `${queue}.dlq`, `${queue}.retry.100`, `${queue}.retry.500`]);
  await raw.close();
  await dropLedger(redis, ledger);
  if (under.kind === 'mongo') await mongoDbFor(storePrefix).dropDatabase();
  else await dropRedisPrefix(redis, `${storePrefix}:`);
  return {
    point,
    messages: under.messages,
    kills,
    killsLogged: tally.kills.length,
    cutCompleted: tally.cutCompleted,
    cutNotCompleted: tally.cutNotCompleted,
    batches: `${tally.completeBatches.multi}/${tally.completeBatches.calls} (max ${tally.completeBatches.largest})`,
    multiBatches: tally.completeBatches.multi,
    handlerStarts: tally.handlerStarts,
    applied: tally.applied,
    extraRuns: tally.extraRuns,
    takeovers: tally.takeovers,
    reruns: tally.reruns,
    rerunsOfKilled: tally.rerunsOfKilled,
    rerunsOfNeighbours: tally.rerunsOfNeighbours,
    effects: tally.idempotentEffects,
    duplicateEffects: tally.duplicateEffects,
    doubleCompletions: tally.doubleCompletions,
    completed,
    deadLettered: dlq,
    lost: under.messages - completed - dlq,
    outgoingTotal: outTotal,
    outgoingDistinct: outIds.size,
    problems: tally.problems,
  };
}

function crashMatrix(name: string, timeoutMs: number, use: () => Promise<StoreUnder>): void {
  describe(`rabbitmq crash matrix (SIGKILL at every pipeline point), ${name} store`, () => {
    it(
      'ends every point with one effect per key, re-runs only where a kill caught an effect, nothing lost',
      async () => {
        under = await use();
        const rows = await Promise.all(POINTS.map(runPoint));
        console.log(markdownTable(rows));
        for (const r of rows) {
          expect(r.kills, `${r.point}: the worker was killed`).toBe(r.point === 'none' ? 0 : KILLS);
          expect(r.killsLogged, `${r.point}: every kill is in the ledger`).toBe(r.kills);
          expect(r.problems, `${r.point}: ledger and records disagree`).toEqual([]);
          // The non-idempotent count: every run beyond one per message is the re-run of an attempt a
          // kill caught after its effect — exactly, not at most.
          expect(r.extraRuns, `${r.point}: extra handler runs = re-runs of killed attempts`).toBe(r.reruns);
          // Of the deliveries the kills fired on, only in-handler ones had run their effect — and the
          // not-completed half of a cut batch: each had returned from its handler, so each is re-run
          // once, while the completed half never is (the ledger checks both per key).
          expect(r.rerunsOfKilled, `${r.point}: re-runs of the delivery killed`).toBe(
            r.point === 'in-handler' ? r.kills : r.point === 'mid-batch' ? r.cutNotCompleted : 0,
          );
          // Each mid-batch kill cut a batch of >= 2 in two non-empty halves; no other point cuts one.
          if (r.point === 'mid-batch') {
            expect(
              Math.min(r.cutCompleted, r.cutNotCompleted),
              'mid-batch: keys per half',
            ).toBeGreaterThanOrEqual(r.kills);
          } else {
            expect(r.cutCompleted + r.cutNotCompleted, `${r.point}: keys of cut batches`).toBe(0);
          }
          if (r.point === 'none') {
            expect(r.takeovers, 'none: takeovers').toBe(0);
            // Deliveries that arrive together complete together: batches of >= 2 do happen.
            expect(r.multiBatches, 'none: completeMany calls of >= 2').toBeGreaterThan(0);
          }
          expect(r.effects, `${r.point}: one idempotent effect per key`).toBe(under.messages);
          expect(r.duplicateEffects, `${r.point}: duplicate effects`).toBe(0);
          expect(r.doubleCompletions, `${r.point}: completions per key`).toBe(0);
          expect(r.completed, `${r.point}: completed`).toBe(under.messages);
          expect(r.lost, `${r.point}: lost`).toBe(0);
          expect(r.outgoingDistinct, `${r.point}: outgoing delivered`).toBe(under.messages);
        }
      },
      timeoutMs,
    );
  });
}

crashMatrix('Redis', 300_000, async () => ({ kind: 'redis', messages: MESSAGES }));
// The Mongo store on FerretDB 1.x, whose filtered updates are not atomic: the store's races are
// all inserts, so the same counts must hold. Half the messages: FerretDB 1.x serialises its
// writers, and 400 a point took 4 minutes next to other test files. The kills come at the same
// fractions of the run, so every point is cut three times as on Redis; only the run after the
// last kill is shorter.
crashMatrix('MongoDB', 900_000, async () => {
  mongo ??= await MongoClient.connect(env.mongoUrl);
  return { kind: 'mongo', messages: Math.ceil(MESSAGES / 2) };
});

type Row = Awaited<ReturnType<typeof runPoint>>;
const COLUMNS: [Exclude<keyof Row, 'problems' | 'multiBatches'>, string][] = [
  ['point', 'kill point'],
  ['messages', 'messages'],
  ['kills', 'SIGKILLs'],
  ['batches', 'complete batches >= 2 / all'],
  ['cutCompleted', 'cut batch: completed'],
  ['cutNotCompleted', 'cut batch: not completed'],
  ['handlerStarts', 'handler starts'],
  ['applied', 'non-idempotent effects'],
  ['extraRuns', 'extra runs'],
  ['takeovers', 'takeovers'],
  ['reruns', 'takeovers after effect'],
  ['rerunsOfKilled', 'of killed delivery'],
  ['rerunsOfNeighbours', 'of in-flight neighbours'],
  ['effects', 'idempotent effects'],
  ['duplicateEffects', 'duplicate effects'],
  ['completed', 'COMPLETED records'],
  ['doubleCompletions', 'keys completed twice'],
  ['deadLettered', 'dead-lettered'],
  ['lost', 'lost'],
  ['outgoingTotal', 'outgoing received'],
  ['outgoingDistinct', 'outgoing distinct keys'],
];

/** The counts as a Markdown table, for release notes. */
function markdownTable(rows: Row[]): string {
  const line = (cells: unknown[]) => `| ${cells.join(' | ')} |`;
  const totals = COLUMNS.map(([k]) =>
    k === 'point' ? '**total**' : k === 'batches' ? '' : rows.reduce((n, r) => n + Number(r[k]), 0),
  );
  return [
    line(COLUMNS.map(([, title]) => title)),
    line(COLUMNS.map(([k]) => (k === 'point' ? '---' : '---:'))),
    ...rows.map((r) => line(COLUMNS.map(([k]) => r[k]))),
    line(totals),
  ].join('\n');
}
