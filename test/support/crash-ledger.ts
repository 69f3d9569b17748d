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
 *   <ledger>:kills        list  one JSON {point, key, state, attempt, pid} per SIGKILL, written just
 *                               before it: the delivery the kill point fired on, as the store had it
 *
 * When may a handler legitimately run twice? Only when an attempt reached its effect and was then
 * superseded by a takeover: its worker died before `complete` landed. A kill fires on one delivery,
 * but it kills every delivery the process had in flight (prefetch, concurrent partitions), so:
 *   - the delivery a kill fires on: after-begin -> taken over, handler runs once in all;
 *     in-handler -> taken over, handler runs twice; after-complete / after-publish / before-ack ->
 *     COMPLETED, never taken over, runs once; before-commit fires on a batch, not a delivery.
 *   - its neighbours in flight: taken over without a re-run if caught between begin and effect,
 *     re-run if caught between effect and complete, neither once complete landed.
 * {@link tallyLedger} checks this per attempt against the store's attempt numbers.
 */
import {
  type BeginResult,
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
  | 'before-commit';

/** Kill points at which the delivery that fired is already COMPLETED in the store. */
const AFTER_COMPLETE: readonly KillPoint[] = ['after-complete', 'after-publish', 'before-ack'];

/** Outgoing header naming the store key of the delivery that published it (for after-publish). */
export const SUBJECT_HEADER = 'x-crash-store-key';

export interface AppliedEntry {
  readonly key: string;
  readonly attempt: number;
  readonly pid: number;
}

export interface KillEntry {
  readonly point: KillPoint;
  /** Store key of the delivery the point fired on; absent for batch-level points. */
  readonly key?: string;
  /** Its record as the store had it just before the kill. */
  readonly state?: ProcessedRecord['state'];
  readonly attempt?: number;
  readonly pid: number;
}

export const ledgerKeys = (ledger: string) => ({
  runs: `${ledger}:runs`,
  effects: `${ledger}:effects`,
  applied: `${ledger}:applied`,
  completions: `${ledger}:completions`,
  kills: `${ledger}:kills`,
});

export interface CrashKit {
  /** The store, with the after-begin, after-complete and before-ack points and the completion count. */
  readonly store: ProcessedStore;
  /**
   * Counts an event of `point`; at the configured n-th one, records the kill (with the store's
   * view of `storeKey`) and SIGKILLs this process. Never returns then.
   */
  hit(point: KillPoint, storeKey?: string): Promise<void>;
  /** Counts a handler start (first thing in the handler). */
  started(ctx: HandlerContext): Promise<void>;
  /** Applies both effects in one MULTI, then the in-handler point. */
  effect(ctx: HandlerContext): Promise<void>;
  /** Headers for `ctx.publish`, so after-publish knows the delivery it fires on. */
  publishHeaders(ctx: HandlerContext): Record<string, string>;
  /** The after-publish point, for a publisher wrapper: call after the publish was confirmed. */
  published(messages: readonly { readonly headers: Readonly<Record<string, string>> }[]): Promise<void>;
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
  const killPoint = options.killPoint ?? 'none';
  const namespace = options.namespace ?? 'default';
  let events = 0;

  const hit = async (point: KillPoint, storeKey?: string): Promise<void> => {
    if (point !== killPoint || ++events !== options.killAt) return;
    const record = storeKey === undefined ? undefined : await base.get(storeKey);
    const entry: KillEntry = {
      point,
      ...(storeKey === undefined ? {} : { key: storeKey }),
      ...(record ? { state: record.state, attempt: record.attempt } : {}),
      pid: process.pid,
    };
    await redis.rpush(keys.kills, JSON.stringify(entry));
    console.log(`killing at ${point} #${events}`);
    process.kill(process.pid, 'SIGKILL');
    await new Promise<never>(() => {});
  };

  const afterBegin = async (key: string, r: BeginResult) => {
    if (r.status === 'acquired') await hit('after-begin', key);
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
    store.completeMany = async (requests) => {
      const results = await completeMany.call(base, requests);
      for (const [i, r] of results.entries()) await afterComplete(requests[i]!.key, r);
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
      await hit('in-handler', storeKey);
    },
    publishHeaders: (ctx) => ({ [SUBJECT_HEADER]: storeKeyOf(ctx) }),
    async published(messages) {
      await hit('after-publish', messages[0]?.headers[SUBJECT_HEADER]);
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
  /** Of `reruns`, attempts a kill point fired on (in-handler kills). */
  readonly rerunsOfKilled: number;
  /** Of `reruns`, neighbours in flight in a killed worker. */
  readonly rerunsOfNeighbours: number;
  readonly kills: readonly KillEntry[];
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
  const [runs, effects, appliedRaw, completions, killsRaw] = await Promise.all([
    redis.hvals(keys.runs),
    redis.hvals(keys.effects),
    redis.lrange(keys.applied, 0, -1),
    redis.hvals(keys.completions),
    redis.lrange(keys.kills, 0, -1),
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
  for (const k of kills) {
    if (k.key === undefined) continue;
    const what = `${k.point} kill of ${k.key} attempt ${k.attempt}`;
    const final = records.get(k.key);
    if (!final || k.attempt === undefined) {
      problems.push(`${what}: no record`);
      continue;
    }
    const reachedEffect = byKey.get(k.key)?.has(k.attempt) ?? false;
    if (k.point === 'after-begin' || k.point === 'in-handler') {
      if (k.state !== 'IN_PROGRESS') problems.push(`${what}: record was ${k.state} at the kill`);
      if (final.attempt <= k.attempt) problems.push(`${what}: never taken over`);
      if (reachedEffect !== (k.point === 'in-handler')) {
        problems.push(`${what}: ${reachedEffect ? 'reached' : 'did not reach'} its effect`);
      }
      if (k.point === 'in-handler' && superseded.has(`${k.key}#${k.attempt}`)) rerunsOfKilled++;
    } else if (AFTER_COMPLETE.includes(k.point)) {
      if (k.state !== 'COMPLETED') problems.push(`${what}: record was ${k.state} at the kill`);
      if (final.attempt !== k.attempt) problems.push(`${what}: taken over to attempt ${final.attempt}`);
    }
  }

  const perKey = new Map<string, number>();
  for (const key of effects) perKey.set(key, (perKey.get(key) ?? 0) + 1);
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
    problems,
  };
}

/** Deletes the ledger's keys. */
export async function dropLedger(redis: Redis, ledger: string): Promise<void> {
  await redis.del(...Object.values(ledgerKeys(ledger)));
}
