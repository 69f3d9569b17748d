/**
 * The external ledger of the crash workers (test/kafka/crash-worker.ts,
 * test/rabbitmq/crash-worker.ts): the hooks a worker wraps around the store, the handler and the
 * publisher, the SIGKILL at one pipeline point, and how a crash matrix reads the ledger back.
 *
 * Ledger keys (Redis, owned by the test, never by the SDK):
 *   <ledger>:runs         hash  message key -> handler starts (also runs killed before their effect)
 *   <ledger>:effects      hash  ctx.keyFor('effect') -> message key, HSETNX: the idempotent effect
 *   <ledger>:applied      list  one JSON {key, attempt, pid} per handler run that reached its effect:
 *                               the NON-idempotent effect, never deduplicated. Same MULTI as the
 *                               HSETNX, so a SIGKILL lands before both writes or after both.
 *   <ledger>:completions  hash  store key -> successful completes (fencing allows one)
 *   <ledger>:kills        list  one JSON {point, key, held, state, attempt, recordFence, pid} per
 *                               SIGKILL, written just before it: the delivery the kill point fired
 *                               on, the attempt and fence this worker held on it, and its record as
 *                               the store had it (mid-batch: {point, batch: {completed,
 *                               notCompleted}, pid} instead)
 *   <ledger>:batches      hash  batch size -> completeMany calls of that size (how well completes
 *                               coalesce; mid-batch needs calls of >= 2)
 *
 * When may a handler legitimately run twice? Only when an attempt reached its effect and was then
 * superseded by a takeover: its worker died before `complete` landed. A kill fires on one delivery,
 * but it kills every delivery the process had in flight (prefetch, concurrent partitions), so:
 *   - the delivery a kill fires on: after-begin -> taken over, handler runs once in all;
 *     in-handler -> taken over, handler runs twice; after-complete / after-publish / before-ack ->
 *     COMPLETED, never taken over, runs once; before-commit fires on a batch, not a delivery.
 *   - mid-batch fires on a completeMany call of n >= 2 requests (completes core coalesced: of
 *     RabbitMQ deliveries whose handlers returned together, which its worker arranges under this
 *     point; of Kafka records of different partitions that met in one turn). The first
 *     floor(n/2) requests go through the real completeMany, the kill entry lists them as
 *     `completed` and the rest as `notCompleted` (each with its fence, and the store's state and
 *     attempt just before the kill), and the process dies before the rest is sent, so nothing of
 *     the batch was published, flagged or acked. A request is only sent once its handler returned,
 *     so every one of them had reached its effect:
 *       completed    -> COMPLETED under its own fence at the kill, never taken over, never re-run,
 *                       completed once; its redelivery is a duplicate that publishes its outgoing
 *                       messages from the record;
 *       notCompleted -> still IN_PROGRESS under its own fence at the kill, taken over, and re-run
 *                       exactly once (its killed attempt's effect is a legitimate extra run);
 *       either half, when a later fence held the record at the kill (its worker stalled past the
 *       lease, as the soak's SIGSTOPs do): a superseded attempt, refused if it was sent.
 *   - its neighbours in flight: taken over without a re-run if caught between begin and effect,
 *     re-run if caught between effect and complete, neither once complete landed.
 *   - after-begin and in-handler, when a later fence held the record at the kill: the worker stalled
 *     past its lease between its begin and the kill (a SIGSTOP, or a begin answered while it was
 *     stopped) and another attempt took the key over. The killed attempt is a superseded one: taken
 *     over, and it reached its effect only at in-handler.
 * {@link tallyLedger} checks this per attempt against the store's attempt numbers.
 */
import {
  type BeginResult,
  type CompleteRequest,
  type FencedResult,
  type HandlerContext,
  type ProcessedRecord,
  type ProcessedStore,
  scopeKey,
} from '@exactly-once/core';
import type { Redis } from 'ioredis';

export type KillPoint =
  | 'none'
  | 'after-begin'
  | 'in-handler'
  | 'after-complete'
  | 'after-publish'
  | 'before-ack'
  | 'before-commit'
  | 'mid-batch';

/** Kill points at which the delivery that fired is already COMPLETED in the store. */
const AFTER_COMPLETE: readonly KillPoint[] = ['after-complete', 'after-publish', 'before-ack'];

/** Outgoing header naming the store key of the delivery that published it (for after-publish). */
export const SUBJECT_HEADER = 'x-crash-store-key';

export interface AppliedEntry {
  readonly key: string;
  readonly attempt: number;
  readonly pid: number;
}

/** One request of the completeMany call a mid-batch kill cut, with its record just before the kill. */
export interface BatchKey {
  readonly key: string;
  /** The fence the request completes under. */
  readonly fence: number;
  /** What the real completeMany answered (completed half only). */
  readonly result?: FencedResult;
  readonly state?: ProcessedRecord['state'];
  readonly recordFence?: number;
  readonly attempt?: number;
}

export interface KillEntry {
  readonly point: KillPoint;
  /** Store key of the delivery the point fired on; absent for batch-level points. */
  readonly key?: string;
  /** The attempt and fence this worker held on `key` (after-begin, in-handler). */
  readonly held?: { readonly attempt: number; readonly fence: number };
  /** Its record as the store had it just before the kill. */
  readonly state?: ProcessedRecord['state'];
  readonly attempt?: number;
  readonly recordFence?: number;
  /** mid-batch: the cut completeMany call, split into the half sent and the half never sent. */
  readonly batch?: { readonly completed: readonly BatchKey[]; readonly notCompleted: readonly BatchKey[] };
  readonly pid: number;
}

export const ledgerKeys = (ledger: string) => ({
  runs: `${ledger}:runs`,
  effects: `${ledger}:effects`,
  applied: `${ledger}:applied`,
  completions: `${ledger}:completions`,
  kills: `${ledger}:kills`,
  batches: `${ledger}:batches`,
});

export interface CrashKit {
  /**
   * The store, with the after-begin, after-complete, mid-batch and before-ack points, the
   * completion count and the completeMany batch sizes.
   */
  readonly store: ProcessedStore;
  /**
   * Counts an event of `point`; at the configured n-th one, records the kill (with the store's
   * view of `storeKey`) and SIGKILLs this process. Never returns then.
   */
  hit(point: KillPoint, storeKey?: string, held?: KillEntry['held']): Promise<void>;
  /** Counts a handler start (first thing in the handler). */
  started(ctx: HandlerContext): Promise<void>;
  /** Applies both effects in one MULTI, then the in-handler point. */
  effect(ctx: HandlerContext): Promise<void>;
  /** Headers for `ctx.publish`, so after-publish knows the delivery it fires on. */
  publishHeaders(ctx: HandlerContext): Record<string, string>;
  /** The after-publish point, for a publisher wrapper: call after the publish was confirmed. */
  published(messages: readonly { readonly headers: Readonly<Record<string, string>> }[]): Promise<void>;
  /**
   * Re-arms the kill at run time: die at the `at`-th event of `point` from now (`none` disarms).
   * The soak (test/soak) picks a point per kill; the crash matrices fix it in the options.
   */
  arm(point: KillPoint, at: number): void;
  /** The point armed now. */
  readonly armed: KillPoint;
}

export function crashKit(options: {
  readonly redis: Redis;
  readonly ledger: string;
  readonly store: ProcessedStore;
  readonly killPoint?: KillPoint | undefined;
  readonly killAt?: number | undefined;
  /** Namespace of the consumer's store keys. Default `default`. */
  readonly namespace?: string;
}): CrashKit {
  const { redis, store: base } = options;
  const keys = ledgerKeys(options.ledger);
  let killPoint = options.killPoint ?? 'none';
  let killAt = options.killAt;
  const namespace = options.namespace ?? 'default';
  let events = 0;

  /** Counts an event of `point`: true at the configured n-th one, when the process must die. */
  const fires = (point: KillPoint) => point === killPoint && ++events === killAt;
  const kill = async (entry: KillEntry): Promise<never> => {
    await redis.rpush(keys.kills, JSON.stringify(entry));
    console.log(`killing at ${entry.point} #${events}`);
    process.kill(process.pid, 'SIGKILL');
    return new Promise<never>(() => {});
  };

  const hit = async (point: KillPoint, storeKey?: string, held?: KillEntry['held']): Promise<void> => {
    if (!fires(point)) return;
    const record = storeKey === undefined ? undefined : await base.get(storeKey);
    await kill({
      point,
      ...(storeKey === undefined ? {} : { key: storeKey }),
      ...(held === undefined ? {} : { held }),
      ...(record ? { state: record.state, attempt: record.attempt, recordFence: record.fence } : {}),
      pid: process.pid,
    });
  };

  /**
   * The mid-batch point: sends the first half of the batch through the real store, records the
   * kill with the keys of both halves as the store has them now, and dies before the second half
   * is sent.
   */
  const cutBatch = async (
    send: (requests: readonly CompleteRequest[]) => Promise<FencedResult[]>,
    requests: readonly CompleteRequest[],
  ): Promise<never> => {
    const half = Math.floor(requests.length / 2);
    const results = await send(requests.slice(0, half));
    await countCompletions(requests.length, requests.slice(0, half), results);
    const snapshot = async (r: CompleteRequest, result?: FencedResult): Promise<BatchKey> => {
      const record = await base.get(r.key);
      return {
        key: r.key,
        fence: r.fence,
        ...(result === undefined ? {} : { result }),
        ...(record ? { state: record.state, recordFence: record.fence, attempt: record.attempt } : {}),
      };
    };
    const [completed, notCompleted] = await Promise.all([
      Promise.all(requests.slice(0, half).map((r, i) => snapshot(r, results[i]))),
      Promise.all(requests.slice(half).map((r) => snapshot(r))),
    ]);
    return kill({ point: 'mid-batch', batch: { completed, notCompleted }, pid: process.pid });
  };

  /** Counts a completeMany call of `size` and the completions the store accepted, in one round trip. */
  const countCompletions = async (
    size: number,
    requests: readonly CompleteRequest[],
    results: readonly FencedResult[],
  ) => {
    const tx = redis.multi().hincrby(keys.batches, String(size), 1);
    for (const [i, r] of requests.entries()) if (results[i] === 'ok') tx.hincrby(keys.completions, r.key, 1);
    await tx.exec();
  };

  const afterBegin = async (key: string, r: BeginResult) => {
    if (r.status === 'acquired') await hit('after-begin', key, { attempt: r.attempt, fence: r.fence });
  };
  const afterComplete = async (key: string, r: FencedResult) => {
    if (r !== 'ok') return;
    await redis.hincrby(keys.completions, key, 1);
    await hit('after-complete', key);
  };
  // Every method it does not hook falls through to the real store (the contract keeps growing).
  // Core prefers a batch form where the store has one, so those carry the same hooks, per request.
  const store: ProcessedStore = Object.assign(Object.create(base) as ProcessedStore, {
    async begin(request) {
      const r = await base.begin(request);
      await afterBegin(request.key, r);
      return r;
    },
    async complete(request) {
      const r = await base.complete(request);
      await afterComplete(request.key, r);
      return r;
    },
    // markPublished is the pipeline's last step before the ack.
    async markPublished(key, fence, ids) {
      await base.markPublished(key, fence, ids);
      await hit('before-ack', key);
    },
  } satisfies Pick<ProcessedStore, 'begin' | 'complete' | 'markPublished'>);
  const { beginMany, completeMany, markPublishedMany } = base;
  if (beginMany) {
    store.beginMany = async (requests) => {
      const results = await beginMany.call(base, requests);
      for (const [i, r] of results.entries()) await afterBegin(requests[i]!.key, r);
      return results;
    };
  }
  if (completeMany) {
    const send = (requests: readonly CompleteRequest[]) => completeMany.call(base, requests);
    store.completeMany = async (requests) => {
      if (requests.length >= 2 && fires('mid-batch')) return cutBatch(send, requests);
      const results = await send(requests);
      await countCompletions(requests.length, requests, results);
      for (const [i, r] of results.entries()) if (r === 'ok') await hit('after-complete', requests[i]!.key);
      return results;
    };
  }
  if (markPublishedMany) {
    store.markPublishedMany = async (requests) => {
      await markPublishedMany.call(base, requests);
      for (const r of requests) await hit('before-ack', r.key);
    };
  }

  const storeKeyOf = (ctx: HandlerContext) => scopeKey(namespace, ctx.consumer, ctx.key);

  return {
    store,
    hit,
    async started(ctx) {
      await redis.hincrby(keys.runs, ctx.key, 1);
    },
    async effect(ctx) {
      const storeKey = storeKeyOf(ctx);
      const applied: AppliedEntry = { key: storeKey, attempt: ctx.attempt, pid: process.pid };
      await redis
        .multi()
        .hsetnx(keys.effects, ctx.keyFor('effect'), ctx.key)
        .rpush(keys.applied, JSON.stringify(applied))
        .exec();
      await hit('in-handler', storeKey, { attempt: ctx.attempt, fence: ctx.fence });
    },
    publishHeaders: (ctx) => ({ [SUBJECT_HEADER]: storeKeyOf(ctx) }),
    async published(messages) {
      await hit('after-publish', messages[0]?.headers[SUBJECT_HEADER]);
    },
    arm(point, at) {
      killPoint = point;
      killAt = at;
      events = 0;
    },
    get armed() {
      return killPoint;
    },
  };
}

/** What a crash matrix reads back from the ledger and the store after a run. */
export interface LedgerTally {
  /** Handler starts (`:runs`), killed ones included. */
  readonly handlerStarts: number;
  /** Handler runs that reached their effect: the non-idempotent count. */
  readonly applied: number;
  /** `applied` minus COMPLETED records: handler runs beyond one per completed message. */
  readonly extraRuns: number;
  /** Distinct ctx.keyFor('effect') values: the idempotent effect. */
  readonly idempotentEffects: number;
  /** keyFor values beyond one per message key (keyFor not stable across attempts). */
  readonly duplicateEffects: number;
  /** Keys whose store completion the worker saw succeed more than once. */
  readonly doubleCompletions: number;
  /** Acquisitions after the first, from the records' attempt numbers. */
  readonly takeovers: number;
  /** Superseded attempts that had reached the effect: the legitimate re-runs. */
  readonly reruns: number;
  /** Of `reruns`, attempts a kill point fired on (in-handler kills, mid-batch `notCompleted`). */
  readonly rerunsOfKilled: number;
  /** Of `reruns`, neighbours in flight in a killed worker. */
  readonly rerunsOfNeighbours: number;
  readonly kills: readonly KillEntry[];
  /** Keys of the batches mid-batch kills cut: completed before the kill, and never sent. */
  readonly cutCompleted: number;
  readonly cutNotCompleted: number;
  /** completeMany calls: all, those of >= 2 requests, and the largest. */
  readonly completeBatches: { readonly calls: number; readonly multi: number; readonly largest: number };
  /** Every breach of the model above, one line each; empty when the run is explained. */
  readonly problems: readonly string[];
}

/**
 * Reads the ledger and checks it attempt by attempt against the final records (`records`: store
 * key -> record, one per message). A run is explained when, for every key:
 *   - no attempt reached the effect twice, and none above the record's final attempt did;
 *   - a COMPLETED record's final attempt reached it exactly once; a FAILED one's never ran;
 *   - every earlier attempt that reached it ran in a worker that was SIGKILLed;
 * and every kill fired where its point says (see the module comment).
 */
export async function tallyLedger(
  redis: Redis,
  ledger: string,
  records: ReadonlyMap<string, ProcessedRecord | undefined>,
): Promise<LedgerTally> {
  const keys = ledgerKeys(ledger);
  const [runs, effects, appliedRaw, completions, killsRaw, batches] = await Promise.all([
    redis.hvals(keys.runs),
    redis.hvals(keys.effects),
    redis.lrange(keys.applied, 0, -1),
    redis.hvals(keys.completions),
    redis.lrange(keys.kills, 0, -1),
    redis.hgetall(keys.batches),
  ]);
  const applied = appliedRaw.map((s) => JSON.parse(s) as AppliedEntry);
  const kills = killsRaw.map((s) => JSON.parse(s) as KillEntry);
  const killedPids = new Set(kills.map((k) => k.pid));
  const problems: string[] = [];

  // key -> attempt -> runs of that attempt that reached the effect
  const byKey = new Map<string, Map<number, AppliedEntry[]>>();
  for (const a of applied) {
    if (!records.has(a.key)) problems.push(`${a.key}: effect of a key that is not a message of this run`);
    const attempts = byKey.get(a.key) ?? new Map<number, AppliedEntry[]>();
    attempts.set(a.attempt, [...(attempts.get(a.attempt) ?? []), a]);
    byKey.set(a.key, attempts);
  }

  let takeovers = 0;
  let completed = 0;
  const superseded = new Set<string>(); // `${key}#${attempt}` of superseded attempts with an effect
  for (const [key, record] of records) {
    if (!record) continue; // lost: the matrix counts it
    takeovers += record.attempt - 1;
    if (record.state === 'COMPLETED') completed++;
    const attempts = byKey.get(key) ?? new Map<number, AppliedEntry[]>();
    for (const [attempt, entries] of attempts) {
      if (entries.length > 1)
        problems.push(`${key}: attempt ${attempt} reached its effect ${entries.length}x`);
      if (attempt > record.attempt) {
        problems.push(`${key}: attempt ${attempt} ran after the final attempt ${record.attempt}`);
      } else if (attempt < record.attempt) {
        superseded.add(`${key}#${attempt}`);
        for (const e of entries) {
          if (!killedPids.has(e.pid)) {
            problems.push(`${key}: attempt ${attempt} was superseded though its worker (pid ${e.pid}) lived`);
          }
        }
      }
    }
    const final = attempts.get(record.attempt)?.length ?? 0;
    if (record.state === 'COMPLETED' && final !== 1) {
      problems.push(`${key}: completing attempt ${record.attempt} reached its effect ${final}x, not once`);
    }
    if (record.state !== 'COMPLETED' && final !== 0) {
      problems.push(`${key}: ${record.state} attempt ${record.attempt} ran the handler`);
    }
  }

  let rerunsOfKilled = 0;
  let cutCompleted = 0;
  let cutNotCompleted = 0;
  for (const k of kills) {
    if (k.point === 'mid-batch') {
      const { completed: sent = [], notCompleted: cut = [] } = k.batch ?? {};
      if (sent.length === 0 || cut.length === 0) {
        problems.push(
          `mid-batch kill (pid ${k.pid}): batch of ${sent.length} + ${cut.length}, not cut in two`,
        );
      }
      cutCompleted += sent.length;
      cutNotCompleted += cut.length;
      for (const b of [...sent, ...cut]) {
        const half = b.result === undefined ? 'not completed' : 'completed';
        const what = `mid-batch kill of ${b.key} (${half}) attempt ${b.attempt}`;
        const final = records.get(b.key);
        if (!final || b.attempt === undefined) {
          problems.push(`${what}: no record`);
          continue;
        }
        // A complete is only requested once the handler returned: its effect happened, by this pid.
        const killed = [...(byKey.get(b.key)?.values() ?? [])].flat().filter((e) => e.pid === k.pid);
        if (killed.length === 0) problems.push(`${what}: did not reach its effect`);
        if (b.recordFence !== undefined && b.recordFence > b.fence) {
          // Its holder stalled past the lease before the kill and another worker took the key over:
          // the request was already stale, so the store must have refused it, and the killed
          // attempt is a superseded one (counted with the reruns of the other workers' keys).
          if (b.result === 'ok') problems.push(`${what}: completed under a superseded fence`);
          for (const e of killed) {
            if (e.attempt >= final.attempt)
              problems.push(`${what}: killed attempt ${e.attempt} not superseded`);
          }
          continue;
        }
        if (b.recordFence !== b.fence)
          problems.push(`${what}: fence ${b.recordFence} at the kill, not ${b.fence}`);
        if (b.result !== undefined) {
          if (b.result !== 'ok' || b.state !== 'COMPLETED') {
            problems.push(`${what}: ${b.result}, record ${b.state} at the kill`);
          }
          if (final.attempt !== b.attempt) problems.push(`${what}: taken over to attempt ${final.attempt}`);
        } else {
          if (b.state !== 'IN_PROGRESS') problems.push(`${what}: record was ${b.state} at the kill`);
          if (final.attempt <= b.attempt) problems.push(`${what}: never taken over`);
          if (superseded.has(`${b.key}#${b.attempt}`)) rerunsOfKilled++;
        }
      }
      continue;
    }
    if (k.key === undefined) continue;
    const attempt = k.held?.attempt ?? k.attempt;
    const what = `${k.point} kill of ${k.key} attempt ${attempt}`;
    const final = records.get(k.key);
    if (!final || attempt === undefined) {
      problems.push(`${what}: no record`);
      continue;
    }
    if (k.point === 'after-begin' || k.point === 'in-handler') {
      // Reached by this very worker: another attempt of the same number cannot be this one's.
      const reachedEffect = (byKey.get(k.key)?.get(attempt) ?? []).some((e) => e.pid === k.pid);
      const stale = k.held !== undefined && k.recordFence !== undefined && k.recordFence > k.held.fence;
      if (!stale && k.state !== 'IN_PROGRESS') problems.push(`${what}: record was ${k.state} at the kill`);
      if (final.attempt <= attempt) problems.push(`${what}: never taken over`);
      if (reachedEffect !== (k.point === 'in-handler')) {
        problems.push(`${what}: ${reachedEffect ? 'reached' : 'did not reach'} its effect`);
      }
      if (k.point === 'in-handler' && superseded.has(`${k.key}#${attempt}`)) rerunsOfKilled++;
    } else if (AFTER_COMPLETE.includes(k.point)) {
      if (k.state !== 'COMPLETED') problems.push(`${what}: record was ${k.state} at the kill`);
      if (final.attempt !== k.attempt) problems.push(`${what}: taken over to attempt ${final.attempt}`);
    }
  }

  const perKey = new Map<string, number>();
  for (const key of effects) perKey.set(key, (perKey.get(key) ?? 0) + 1);
  const sizes = Object.entries(batches).map(([size, calls]) => [Number(size), Number(calls)] as const);
  return {
    handlerStarts: runs.reduce((n, v) => n + Number(v), 0),
    applied: applied.length,
    extraRuns: applied.length - completed,
    idempotentEffects: effects.length,
    duplicateEffects: [...perKey.values()].reduce((n, c) => n + c - 1, 0),
    doubleCompletions: completions.filter((c) => Number(c) > 1).length,
    takeovers,
    reruns: superseded.size,
    rerunsOfKilled,
    rerunsOfNeighbours: superseded.size - rerunsOfKilled,
    kills,
    cutCompleted,
    cutNotCompleted,
    completeBatches: {
      calls: sizes.reduce((n, [, c]) => n + c, 0),
      multi: sizes.reduce((n, [size, c]) => n + (size >= 2 ? c : 0), 0),
      largest: sizes.reduce((m, [size]) => Math.max(m, size), 0),
    },
    problems,
  };
}

/** Deletes the ledger's keys. */
export async function dropLedger(redis: Redis, ledger: string): Promise<void> {
  await redis.del(...Object.values(ledgerKeys(ledger)));
}
