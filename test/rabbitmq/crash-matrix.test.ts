/**
 * Crash matrix: a consumer process is SIGKILLed at each pipeline point, restarted, and the
 * effects are counted in a ledger it does not own. Every point must end with one effect and one
 * completion per key, nothing lost, every outgoing message delivered.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createRedisStore } from '@exactly-once/store-redis';
import { afterAll, describe, expect, it } from 'vitest';
import { uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';
import type { CrashWorkerConfig, KillPoint } from './crash-worker.js';
import { newRedis, rawChannel } from './helpers.js';

const MESSAGES = Number(process.env.EO_CRASH_MESSAGES ?? 400);
const KILLS = 3;
// 'none' is the baseline: the same run without a kill.
const POINTS = (process.env.EO_CRASH_POINTS?.split(',') ?? [
  'none',
  'after-begin',
  'in-handler',
  'after-complete',
  'after-publish',
  'before-ack',
]) as KillPoint[];
const redis = newRedis();
const children = new Set<ChildProcess>();
afterAll(async () => {
  // A failed run must not leave workers behind.
  for (const c of children) c.kill('SIGKILL');
  await redis.quit();
});

function startWorker(config: CrashWorkerConfig): {
  child: ChildProcess;
  exited: Promise<NodeJS.Signals | null>;
} {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', '--conditions=@exactly-once/source', 'test/rabbitmq/crash-worker.ts'],
    {
      env: { ...process.env, EO_WORKER_CONFIG: JSON.stringify(config) },
      stdio: ['ignore', 'ignore', 'inherit'],
    },
  );
  children.add(child);
  child.on('exit', () => children.delete(child));
  const exited = new Promise<NodeJS.Signals | null>((resolve) =>
    child.on('exit', (_code, signal) => resolve(signal)),
  );
  return { child, exited };
}

/** COMPLETED records in the store: the ground truth (a SIGKILL can cut the ledger's own writes). */
async function countCompleted(storePrefix: string): Promise<number> {
  const store = createRedisStore({ client: redis, keyPrefix: storePrefix });
  const records = await Promise.all(
    Array.from({ length: MESSAGES }, (_, i) => store.get(`default:crash:k${i}`)),
  );
  return records.filter((r) => r?.state === 'COMPLETED').length;
}

async function runPoint(point: KillPoint) {
  const queue = uniqueName(`crash-${point}`);
  const outQueue = `${queue}.out`;
  const ledger = `ledger:${queue}`;
  const raw = await rawChannel();
  await raw.ch.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
  await raw.ch.assertQueue(outQueue, { durable: true });
  for (let i = 0; i < MESSAGES; i++)
    await raw.publish(queue, { id: `m${i}` }, { 'x-idempotency-key': `k${i}` });
  const base = { queue, outQueue, ledger, storePrefix: `crash:${queue}` };
  let kills = 0;
  // Kill at spread-out events so each restart finds work in a different state.
  for (let k = 0; point !== 'none' && k < KILLS; k++) {
    const { exited } = startWorker({ ...base, killPoint: point, killAt: 20 + k * 37 });
    if ((await exited) === 'SIGKILL') kills++;
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
      return completed === MESSAGES && outIds.size === MESSAGES && pending === 0;
    },
    {
      timeoutMs: 120_000,
      intervalMs: 250,
      message: () => `${point}: all completed and delivered (${state})`,
    },
  );
  last.child.kill('SIGTERM');
  await last.exited;
  const runs = Object.values(await redis.hgetall(`${ledger}:runs`)).reduce((n, v) => n + Number(v), 0);
  const completions = Object.values(await redis.hgetall(`${ledger}:completions`)).map(Number);
  const effectEntries = await redis.hgetall(`${ledger}:effects`);
  const effects = Object.keys(effectEntries).length;
  // Effect ids per input key: more than one would mean ctx.keyFor was not stable across runs.
  const perKey = new Map<string, number>();
  for (const key of Object.values(effectEntries)) perKey.set(key, (perKey.get(key) ?? 0) + 1);
  const dlq = await raw.count(`${queue}.dlq`).catch(() => 0);
  await raw.deleteQueues([queue, outQueue, `${queue}.dlq`, `${queue}.retry.100`, `${queue}.retry.500`]);
  await raw.close();
  await redis.del(`${ledger}:runs`, `${ledger}:completions`, `${ledger}:effects`);
  return {
    point,
    messages: MESSAGES,
    kills,
    handlerRuns: runs,
    effects,
    duplicateEffects: [...perKey.values()].reduce((n, c) => n + c - 1, 0),
    keysWithEffect: perKey.size,
    doubleCompletions: completions.filter((c) => c > 1).length,
    completed,
    deadLettered: dlq,
    lost: MESSAGES - completed - dlq,
    outgoingTotal: outTotal,
    outgoingDistinct: outIds.size,
  };
}

describe('rabbitmq crash matrix (SIGKILL at every pipeline point)', () => {
  it('ends every point with one effect per key, nothing lost, every outgoing message delivered', async () => {
    const rows = await Promise.all(POINTS.map(runPoint));
    console.log(markdownTable(rows));
    for (const r of rows) {
      expect(r.kills, `${r.point}: the worker was killed`).toBe(r.point === 'none' ? 0 : KILLS);
      expect(r.effects, `${r.point}: one idempotent effect per key`).toBe(MESSAGES);
      expect(r.keysWithEffect, `${r.point}: every key has its effect`).toBe(MESSAGES);
      expect(r.duplicateEffects, `${r.point}: duplicate effects`).toBe(0);
      expect(r.doubleCompletions, `${r.point}: completions per key`).toBe(0);
      expect(r.completed, `${r.point}: completed`).toBe(MESSAGES);
      expect(r.lost, `${r.point}: lost`).toBe(0);
      expect(r.outgoingDistinct, `${r.point}: outgoing delivered`).toBe(MESSAGES);
    }
  }, 300_000);
});

type Row = Awaited<ReturnType<typeof runPoint>>;
const COLUMNS: [keyof Row, string][] = [
  ['point', 'kill point'],
  ['messages', 'messages'],
  ['kills', 'SIGKILLs'],
  ['handlerRuns', 'handler runs'],
  ['effects', 'effects applied'],
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
    k === 'point' ? '**total**' : rows.reduce((n, r) => n + Number(r[k]), 0),
  );
  return [
    line(COLUMNS.map(([, title]) => title)),
    line(COLUMNS.map(([k]) => (k === 'point' ? '---' : '---:'))),
    ...rows.map((r) => line(COLUMNS.map(([k]) => r[k]))),
    line(totals),
  ].join('\n');
}
