/**
 * The crash ledger's model (crash-ledger.ts) on a real Redis store: a worker that stalls past its
 * lease between its begin and the kill point is a superseded attempt, not a breach. The soak met
 * it when the worker it SIGSTOPped had a begin answer waiting: after the SIGCONT its after-begin
 * kill fired on a key another worker had taken over and completed meanwhile.
 */
import type { BeginRequest, ProcessedRecord, ProcessedStore } from '@exactly-once/core';
import { createRedisStore } from '@exactly-once/store-redis';
import { Redis } from 'ioredis';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { type AppliedEntry, crashKit, dropLedger, ledgerKeys, tallyLedger } from './crash-ledger.js';
import { env, uniqueName } from './env.js';
import { dropRedisPrefix } from './redis.js';
import { waitUntil } from './wait.js';

const redis = new Redis(env.redisUrl);
const prefix = uniqueName('eo-ledger-model');
afterAll(async () => {
  await dropRedisPrefix(redis, prefix);
  redis.disconnect();
});
afterEach(() => vi.restoreAllMocks());

const LEASE_MS = 300;
const request = (key: string, owner: string): BeginRequest => ({
  key,
  fingerprint: 'f',
  owner,
  leaseMs: LEASE_MS,
});

/** A store whose beginMany answers only when `release` is called: the worker's stall. */
function stalling(base: ProcessedStore) {
  let release!: () => void;
  const stalled = new Promise<void>((resolve) => {
    release = resolve;
  });
  const store: ProcessedStore = Object.assign(Object.create(base) as ProcessedStore, {
    async beginMany(requests: readonly BeginRequest[]) {
      const results = await base.beginMany!(requests);
      await stalled;
      return results;
    },
  });
  return { store, release };
}

/**
 * One run of the model: a worker (this process, its SIGKILL intercepted) begins `key` and stalls;
 * another worker takes the key over once the lease ran out, reaches its effect and completes; then
 * the stalled worker's `point` fires. Returns the ledger's problems.
 */
async function staleKill(point: 'after-begin' | 'in-handler'): Promise<readonly string[]> {
  const ledger = uniqueName(`${prefix}:ledger`);
  const base = createRedisStore({ client: redis, keyPrefix: uniqueName(prefix) });
  const key = uniqueName('default:ledger:k');
  const { store, release } = stalling(base);
  const kit = crashKit({ redis, ledger, store, killPoint: point, killAt: 1 });
  const killed = vi.spyOn(process, 'kill').mockImplementation(() => true);
  const applied = (attempt: number, pid: number) =>
    redis.rpush(ledgerKeys(ledger).applied, JSON.stringify({ key, attempt, pid } satisfies AppliedEntry));
  try {
    const stalledBegin = kit.store.beginMany!([request(key, 'stalled')]);
    // Its lease runs out while it is stalled; the other worker takes the key over and completes.
    const taken = await waitUntil(
      async () => {
        const [r] = await base.beginMany!([request(key, 'other')]);
        return r?.status === 'acquired' ? r : undefined;
      },
      { timeoutMs: 10_000, intervalMs: 50 },
    );
    expect(taken.attempt).toBe(2);
    await applied(2, process.pid + 1);
    expect(await base.complete({ key, fence: taken.fence, outgoing: [], retentionMs: 60_000 })).toBe('ok');
    release();
    if (point === 'in-handler') {
      // The stalled attempt's handler reached its effect before the stall ended (a SIGSTOP in it).
      const [mine] = await stalledBegin;
      if (mine?.status !== 'acquired') throw new Error('the stalled worker did not acquire');
      await applied(1, process.pid);
      void kit.hit('in-handler', key, { attempt: mine.attempt, fence: mine.fence });
    } else {
      void stalledBegin;
    }
    await waitUntil(async () => (await redis.llen(ledgerKeys(ledger).kills)) === 1, { timeoutMs: 10_000 });
    expect(killed).toHaveBeenCalledWith(process.pid, 'SIGKILL');
    const records = new Map<string, ProcessedRecord | undefined>([[key, await base.get(key)]]);
    return (await tallyLedger(redis, ledger, records)).problems;
  } finally {
    await dropLedger(redis, ledger);
  }
}

describe('crash ledger model', () => {
  it('explains an after-begin kill whose worker stalled past its lease and was taken over', async () => {
    expect(await staleKill('after-begin')).toEqual([]);
  });

  it('still flags an after-begin kill whose key nobody took over', async () => {
    const ledger = uniqueName(`${prefix}:ledger`);
    const base = createRedisStore({ client: redis, keyPrefix: uniqueName(prefix) });
    const key = uniqueName('default:ledger:k');
    const kit = crashKit({ redis, ledger, store: base, killPoint: 'after-begin', killAt: 1 });
    vi.spyOn(process, 'kill').mockImplementation(() => true);
    try {
      void kit.store.beginMany!([request(key, 'alone')]);
      await waitUntil(async () => (await redis.llen(ledgerKeys(ledger).kills)) === 1, { timeoutMs: 10_000 });
      const records = new Map<string, ProcessedRecord | undefined>([[key, await base.get(key)]]);
      expect((await tallyLedger(redis, ledger, records)).problems).toEqual([
        `after-begin kill of ${key} attempt 1: never taken over`,
      ]);
    } finally {
      await dropLedger(redis, ledger);
    }
  });

  it('explains an in-handler kill whose worker stalled past its lease and was taken over', async () => {
    expect(await staleKill('in-handler')).toEqual([]);
  });
});
