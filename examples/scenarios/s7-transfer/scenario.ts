/**
 * S7 end to end on the local servers. `runTransfers`: many transfers PS-1 (account A) -> PS-2
 * (account B) through the coordinator process, SIGKILLed mid-transfer several times, while PS-2
 * drops every other commit answer. `runParticipantDown`: PS-2 goes down right after it voted, so
 * PS-1 commits and PS-2 never answers; the step stays in doubt, the alerts fire, and the transfer
 * finishes once PS-2 is back. Both read the outcome from the participants' own ledgers.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import {
  decodeResult,
  findStuck,
  type InProgressEntry,
  type ProcessedStore,
  recordKeyFor,
  watchStuck,
} from '@exactly-once/core';
import { createPublisher } from '@exactly-once/rabbitmq';
import { createRedisStore } from '@exactly-once/store-redis';
import amqp from 'amqplib';
import { Redis } from 'ioredis';
import { createCoordinator, type TransferOutcome, type TransferRequested } from './coordinator.js';
import { type Operation, type Participant, startParticipant, type TransferState } from './participant.js';

export const servers = {
  redisUrl: process.env.EO_REDIS_URL ?? 'redis://127.0.0.1:6379',
  amqpUrl: process.env.EO_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672',
};

/** Where the coordinator process is SIGKILLed: right after a participant applied its n-th such call. */
export interface KillPoint {
  readonly participant: 'PS-1' | 'PS-2';
  readonly op: Operation;
  readonly nth: number;
}

export const DEFAULT_KILLS: readonly KillPoint[] = [
  { participant: 'PS-1', op: 'commit', nth: 4 },
  { participant: 'PS-2', op: 'prepare', nth: 12 },
  { participant: 'PS-2', op: 'commit', nth: 18 },
  { participant: 'PS-1', op: 'prepare', nth: 26 },
];

/** One transfer as the participants and the coordinator's record have it. */
export interface TransferCheck {
  readonly transferId: string;
  readonly amount: number;
  readonly coordinator: TransferOutcome['outcome'] | 'not completed';
  readonly ps1: TransferState;
  readonly ps2: TransferState;
  /** Money movements in each participant's ledger for this transfer. */
  readonly ps1Moves: number;
  readonly ps2Moves: number;
  /** Applied exactly once at both, or at neither (released), and the coordinator agrees. */
  readonly consistent: boolean;
}

export interface Money {
  readonly total: number;
  readonly a: number;
  readonly b: number;
  readonly held: number;
  readonly pendingCredits: number;
}

export interface TransfersReport {
  readonly transfers: readonly TransferCheck[];
  readonly committed: number;
  readonly aborted: number;
  readonly kills: number;
  readonly plannedKills: number;
  readonly droppedCommitAnswers: number;
  readonly statusQuestions: number;
  readonly before: Money;
  readonly after: Money;
  /** A's and B's balances as the committed transfers say they must be. */
  readonly expected: { readonly a: number; readonly b: number };
  readonly stuck: readonly InProgressEntry[];
  readonly deadLetters: number;
}

const coordinatorMain = fileURLToPath(new URL('./coordinator-process.ts', import.meta.url));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function money(ps1: Participant, ps2: Participant): Money {
  const sum = (p: Participant) => [...p.balances.values()].reduce((s, v) => s + v, 0);
  // PS-1's prepared debits are held out of its balances; they are still PS-1's money.
  const held = ps1.held();
  return {
    total: sum(ps1) + held + sum(ps2),
    a: ps1.balances.get('A') ?? 0,
    b: ps2.balances.get('B') ?? 0,
    held,
    pendingCredits: ps2.pendingCredits(),
  };
}

/** The transfers of a run: mostly A -> B; two too large for A, two to an account PS-2 does not have. */
export function plannedTransfers(run: string, count: number): TransferRequested[] {
  return Array.from({ length: count }, (_, i) => ({
    transferId: `tr-${run}-${String(i + 1).padStart(3, '0')}`,
    from: { participant: 'PS-1', account: 'A' },
    to: { participant: 'PS-2', account: i === 8 || i === 26 ? 'B-closed' : 'B' },
    amount: i === 13 || i === 32 ? 1_000_000 : 50 + ((i * 37) % 200),
  }));
}

async function outcomeOf(store: ProcessedStore, transferId: string) {
  const record = await store.get(recordKeyFor({ consumer: 'transfers', key: transferId }));
  if (record?.state !== 'COMPLETED' || record.result?.kind !== 'inline') return undefined;
  return decodeResult(record.result.data) as TransferOutcome;
}

function check(
  t: TransferRequested,
  ps1: Participant,
  ps2: Participant,
  outcome?: TransferOutcome,
): TransferCheck {
  const s1 = ps1.transfers.get(t.transferId) ?? 'unknown';
  const s2 = ps2.transfers.get(t.transferId) ?? 'unknown';
  const m1 = ps1.ledger.filter((e) => e.transferId === t.transferId).length;
  const m2 = ps2.ledger.filter((e) => e.transferId === t.transferId).length;
  const released = (s: TransferState) => s === 'aborted' || s === 'refused';
  const consistent =
    outcome?.outcome === 'committed'
      ? s1 === 'committed' && s2 === 'committed' && m1 === 1 && m2 === 1
      : outcome?.outcome === 'aborted' && released(s1) && released(s2) && m1 === 0 && m2 === 0;
  return {
    transferId: t.transferId,
    amount: t.amount,
    coordinator: outcome?.outcome ?? 'not completed',
    ps1: s1,
    ps2: s2,
    ps1Moves: m1,
    ps2Moves: m2,
    consistent,
  };
}

async function cleanUp(run: string, queue: string, redis: Redis) {
  const conn = await amqp.connect(servers.amqpUrl);
  const ch = await conn.createChannel();
  for (const q of [queue, `${queue}.dlq`, `${queue}.retry.100`, `${queue}.retry.1000`])
    await ch.deleteQueue(q);
  await conn.close();
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `s7-${run}:*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length > 0) await redis.unlink(...keys);
  } while (cursor !== '0');
}

/**
 * Deletes the run's queues and keys, then quits the client. A failure here (a connection the
 * server dropped during the run: ioredis's "Connection is closed.") is logged and not thrown: it
 * must not replace the scenario's own result or error.
 */
async function cleanUpAndQuit(run: string, queue: string, redis: Redis, log: (line: string) => void) {
  try {
    await cleanUp(run, queue, redis);
  } catch (error) {
    log(`clean-up failed: ${(error as Error).message}`);
  }
  await redis.quit().catch(() => redis.disconnect());
}

async function deadLetters(queue: string): Promise<number> {
  const conn = await amqp.connect(servers.amqpUrl);
  try {
    return (await (await conn.createChannel()).checkQueue(`${queue}.dlq`)).messageCount;
  } finally {
    await conn.close();
  }
}

export async function runTransfers(
  options: { transfers?: number; kills?: readonly KillPoint[]; log?: (line: string) => void } = {},
): Promise<TransfersReport> {
  const log = options.log ?? (() => {});
  const kills = options.kills ?? DEFAULT_KILLS;
  const run = randomBytes(5).toString('hex');
  const queue = `s7.${run}.transfers`;
  const redis = new Redis(servers.redisUrl, { maxRetriesPerRequest: 3 });
  redis.on('error', (error: Error) => log(`redis: ${error.message}`)); // ioredis reconnects by itself
  const store = createRedisStore({ client: redis, keyPrefix: `s7-${run}` });
  const ps1 = await startParticipant('PS-1', { A: 10_000 });
  const ps2 = await startParticipant('PS-2', { B: 0 }, { dropCommitAnswerEvery: 2 });
  const before = money(ps1, ps2);
  let child: ChildProcess | undefined;
  let killed = 0;
  for (const p of [ps1, ps2]) {
    p.faults.afterApply = (op, transferId, count) => {
      if (!kills.some((k) => k.participant === p.name && k.op === op && k.nth === count)) return;
      // The call is applied; the coordinator dies before the answer reaches it.
      log(`SIGKILL the coordinator: ${p.name} applied ${op} #${count} (${transferId})`);
      child?.kill('SIGKILL');
    };
  }
  const startCoordinator = async () => {
    const proc = spawn(
      process.execPath,
      ['--import', 'tsx', '--conditions=@exactly-once/source', coordinatorMain],
      {
        env: {
          ...process.env,
          EO_S7_COORDINATOR: JSON.stringify({
            amqpUrl: servers.amqpUrl,
            redisUrl: servers.redisUrl,
            queue,
            keyPrefix: `s7-${run}`,
            participants: { 'PS-1': ps1.url, 'PS-2': ps2.url },
          }),
        },
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    const exited = new Promise<NodeJS.Signals | null>((resolve) =>
      proc.on('exit', (_c, signal) => resolve(signal)),
    );
    const ready = new Promise<void>((resolve) =>
      proc.stdout?.on('data', (d: Buffer) => d.includes('ready') && resolve()),
    );
    child = proc;
    return { proc, exited, ready };
  };

  const transfers = plannedTransfers(run, options.transfers ?? 40);
  const publisher = createPublisher({ connection: servers.amqpUrl });
  try {
    let current = await startCoordinator();
    await Promise.race([current.ready, current.exited]); // it declares the queue
    for (const t of transfers)
      await publisher.send(queue, t, { idempotencyKey: t.transferId, requestId: t.transferId });
    log(`${transfers.length} transfers published`);
    const allDone = async () => {
      for (const t of transfers) if (!(await outcomeOf(store, t.transferId))) return false;
      return true;
    };
    const deadline = Date.now() + 240_000;
    for (;;) {
      const signal = await Promise.race([
        current.exited,
        (async () => {
          while (!(await allDone())) {
            if (Date.now() > deadline) throw new Error('transfers not all completed in time');
            await sleep(250);
          }
          return 'done' as const;
        })(),
      ]);
      if (signal === 'done') break;
      if (signal !== 'SIGKILL') throw new Error(`coordinator exited on its own (${signal})`);
      killed++;
      current = await startCoordinator(); // the broker redelivers what the dead one held
    }
    current.proc.kill('SIGTERM');
    await current.exited;

    const checks: TransferCheck[] = [];
    for (const t of transfers) checks.push(check(t, ps1, ps2, await outcomeOf(store, t.transferId)));
    const committed = transfers.filter((_, i) => checks[i]?.coordinator === 'committed');
    const sent = committed.reduce((s, t) => s + t.amount, 0);
    return {
      transfers: checks,
      committed: committed.length,
      aborted: checks.filter((c) => c.coordinator === 'aborted').length,
      kills: killed,
      plannedKills: kills.length,
      droppedCommitAnswers: ps2.calls.droppedAnswers,
      statusQuestions: ps1.calls.status + ps2.calls.status,
      before,
      after: money(ps1, ps2),
      expected: { a: before.a - sent, b: before.b + sent },
      stuck: await findStuck(store, { consumer: 'transfers', olderThanMs: 0 }),
      deadLetters: await deadLetters(queue),
    };
  } finally {
    child?.kill('SIGKILL');
    await publisher.close();
    await ps1.close();
    await ps2.close();
    await cleanUpAndQuit(run, queue, redis, log);
  }
}

export interface ParticipantDownReport {
  readonly transferId: string;
  /** While PS-2 was down: the states at both, the step alerts and the stuck records. */
  readonly duringOutage: {
    readonly ps1: TransferState;
    readonly ps2: TransferState;
    readonly stepAlerts: readonly string[];
    readonly stuck: readonly InProgressEntry[];
    readonly money: Money;
  };
  readonly after: TransferCheck;
  readonly before: Money;
  readonly money: Money;
  readonly stuckAfter: number;
}

/** The stuck alert's threshold, standing for the scenario's 10 minutes. */
export const STUCK_AFTER_MS = 1_000;

export async function runParticipantDown(
  options: { log?: (line: string) => void } = {},
): Promise<ParticipantDownReport> {
  const log = options.log ?? (() => {});
  const run = randomBytes(5).toString('hex');
  const queue = `s7.${run}.transfers`;
  const redis = new Redis(servers.redisUrl, { maxRetriesPerRequest: 3 });
  redis.on('error', (error: Error) => log(`redis: ${error.message}`)); // ioredis reconnects by itself
  const store = createRedisStore({ client: redis, keyPrefix: `s7-${run}` });
  const ps1 = await startParticipant('PS-1', { A: 1_000 });
  const ps2 = await startParticipant('PS-2', { B: 0 });
  const before = money(ps1, ps2);
  const [transfer] = plannedTransfers(run, 1) as [TransferRequested];
  // PS-2 votes yes, then goes down: PS-1 will acknowledge the commit, PS-2 will not answer.
  ps2.faults.afterApply = (op) => {
    if (op === 'prepare') ps2.faults.down = true;
  };
  const stepAlerts: string[] = [];
  const coordinator = createCoordinator({
    amqpUrl: servers.amqpUrl,
    queue,
    store,
    participants: { 'PS-1': ps1.url, 'PS-2': ps2.url },
    onStepEvent: (e) => stepAlerts.push(`${e.type}: step ${e.step} of ${e.key} failed ${e.failures} times`),
  });
  const watch = watchStuck(store, { consumer: 'transfers', olderThanMs: STUCK_AFTER_MS, intervalMs: 1_000 });
  const publisher = createPublisher({ connection: servers.amqpUrl });
  try {
    await coordinator.start();
    await publisher.send(queue, transfer, {
      idempotencyKey: transfer.transferId,
      requestId: transfer.transferId,
    });
    const until = async (what: string, ok: () => boolean | Promise<boolean>) => {
      const deadline = Date.now() + 60_000;
      while (!(await ok())) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await sleep(100);
      }
    };
    await until('the step alert and the stuck gauge', () => stepAlerts.length > 0 && (watch.count ?? 0) > 0);
    const stuck = await findStuck(store, { consumer: 'transfers', olderThanMs: STUCK_AFTER_MS });
    const duringOutage = {
      ps1: ps1.transfers.get(transfer.transferId) ?? 'unknown',
      ps2: ps2.transfers.get(transfer.transferId) ?? 'unknown',
      stepAlerts: [...stepAlerts],
      stuck,
      money: money(ps1, ps2),
    };
    log(`PS-2 down: PS-1 ${duringOutage.ps1}, PS-2 ${duringOutage.ps2}; ${stepAlerts[0]}`);
    log(`stuck alert: ${stuck.map((e) => e.key).join(', ')}`);

    ps2.faults.down = false; // "hours later"
    await until(
      'the transfer to complete',
      async () => (await outcomeOf(store, transfer.transferId)) !== undefined,
    );
    const after = check(transfer, ps1, ps2, await outcomeOf(store, transfer.transferId));
    await until('the stuck gauge back to 0', async () => (await watch.refresh()) === 0);
    log(`PS-2 back: asked, committed; PS-1 ${after.ps1}, PS-2 ${after.ps2}`);
    return {
      transferId: transfer.transferId,
      duringOutage,
      after,
      before,
      money: money(ps1, ps2),
      stuckAfter: (await findStuck(store, { consumer: 'transfers', olderThanMs: 0 })).length,
    };
  } finally {
    watch.stop();
    ps2.faults.down = false;
    await coordinator.stop();
    await publisher.close();
    await ps1.close();
    await ps2.close();
    await cleanUpAndQuit(run, queue, redis, log);
  }
}
