/**
 * S5, long-tail retries: a key completed, the hot tier (Redis) forgot it, and a retry comes back:
 * it is answered as a duplicate from the cold tier (Mongo on FerretDB) and the handler does not
 * run again. Real servers only.
 */
import {
  checkRetentionHorizon,
  ConfigError,
  createIdempotentExecutor,
  createTieredStore,
  recordKeyFor,
  resolveRetryPolicy,
  defaultLogger,
  type TieredStore,
} from '@exactly-once/core';
import { createMongoStore } from '@exactly-once/store-mongo';
import { createRedisStore } from '@exactly-once/store-redis';
import { Redis } from 'ioredis';
import { type Db, MongoClient } from 'mongodb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

let redis: Redis;
let mongo: MongoClient;
let db: Db;
let keyPrefix: string;

beforeAll(async () => {
  redis = new Redis(env.redisUrl, { maxRetriesPerRequest: 2 });
  keyPrefix = uniqueName('eot-longtail');
  mongo = new MongoClient(env.mongoUrl, { serverSelectionTimeoutMS: 5000 });
  await mongo.connect();
  db = mongo.db(uniqueName('eo_lt').slice(0, 40));
});

afterAll(async () => {
  await dropRedisPrefix(keyPrefix);
  await redis.quit();
  await db.dropDatabase().catch(() => undefined);
  await mongo.close();
});

async function dropRedisPrefix(prefix: string): Promise<number> {
  let cursor = '0';
  let dropped = 0;
  do {
    const [next, keys] = await redis.scanBuffer(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next.toString();
    for (const key of keys) dropped += await redis.unlink(key);
  } while (cursor !== '0');
  return dropped;
}

function tiered(label: string, hotRetentionMs: number): { store: TieredStore; prefix: string } {
  const prefix = `${keyPrefix}:${label}`;
  const hot = createRedisStore({ client: redis, keyPrefix: prefix, expiredGraceMs: 1_000 });
  const cold = createMongoStore({ db, collectionName: `records_${label}` });
  return { store: createTieredStore({ hot, cold, hotRetentionMs }), prefix };
}

describe('tiered store: long-tail retries (hot Redis forgot the key)', () => {
  it('after the hot retention passed, a retry is a duplicate answered from cold; the handler runs once', async () => {
    const { store } = tiered('expiry', 400);
    const consumer = 'payments';
    const runs: string[] = [];
    const executor = createIdempotentExecutor<{ amount: number }, { charge: string }>({ consumer, store });
    const handler = async (p: { amount: number }) => {
      runs.push(`charge ${p.amount}`);
      return { charge: `ch_${runs.length}` };
    };
    const first = await executor.execute({ key: 'req-25h', payload: { amount: 100 } }, handler);
    expect(first).toMatchObject({ status: 'completed', result: { charge: 'ch_1' } });

    const key = recordKeyFor({ consumer, key: 'req-25h' });
    expect((await store.hot.get(key))?.state).toBe('COMPLETED');
    await sleep(700); // the hot tier's retention passes ("25 hours later")
    expect(await store.hot.get(key)).toBeUndefined();
    expect((await store.cold.get(key))?.state).toBe('COMPLETED');

    const retry = await executor.execute({ key: 'req-25h', payload: { amount: 100 } }, handler);
    expect(retry).toMatchObject({ status: 'duplicate', result: { charge: 'ch_1' } });
    expect(runs).toEqual(['charge 100']);
    // And again: hot does not shadow cold after answering from it.
    const again = await executor.execute({ key: 'req-25h', payload: { amount: 100 } }, handler);
    expect(again.status).toBe('duplicate');
    expect(runs).toHaveLength(1);
  });

  it('after Redis evicted the key (deleted outright), a retry is a duplicate from cold', async () => {
    const { store, prefix } = tiered('evicted', 3_600_000);
    const consumer = 'orders';
    let runs = 0;
    const executor = createIdempotentExecutor<string, number>({ consumer, store });
    const handler = async () => ++runs;
    expect((await executor.execute({ key: 'k-1', payload: 'p' }, handler)).status).toBe('completed');
    expect(await dropRedisPrefix(prefix)).toBeGreaterThan(0);
    expect(await store.hot.get(recordKeyFor({ consumer, key: 'k-1' }))).toBeUndefined();
    const retry = await executor.execute({ key: 'k-1', payload: 'p' }, handler);
    expect(retry).toMatchObject({ status: 'duplicate', result: 1 });
    expect(runs).toBe(1);
    // A different payload under the same key is still a mismatch, answered from cold.
    await expect(executor.execute({ key: 'k-1', payload: 'other' }, handler)).rejects.toMatchObject({
      outcome: 'mismatch',
    });
    expect(runs).toBe(1);
  });

  it('a crash between the cold commit and the hot write: the next delivery is a duplicate', async () => {
    const { store } = tiered('crash', 3_600_000);
    const key = 'ns:c:crash-between-writes';
    const begun = await store.begin({ key, fingerprint: 'fp', owner: 'w1', leaseMs: 300 });
    expect(begun.status).toBe('acquired');
    // Emulate the commit point, then a crash: cold COMPLETED under its own claim, hot untouched.
    const claim = await store.cold.get(key);
    expect(claim?.state).toBe('IN_PROGRESS');
    expect(
      await store.cold.complete({ key, fence: claim?.fence ?? 0, outgoing: [], retentionMs: 86_400_000 }),
    ).toBe('ok');
    expect((await store.hot.get(key))?.state).toBe('IN_PROGRESS');
    await sleep(500); // the dead worker's hot lease passes
    const next = await store.begin({ key, fingerprint: 'fp', owner: 'w2', leaseMs: 300 });
    expect(next.status).toBe('duplicate');
    expect((await store.get(key))?.state).toBe('COMPLETED');
  });

  it('a stale holder cannot commit after a newer worker took the key over in both tiers', async () => {
    const { store } = tiered('stale', 3_600_000);
    const key = 'ns:c:stale';
    const a = await store.begin({ key, fingerprint: 'fp', owner: 'a', leaseMs: 200 });
    await sleep(400);
    const b = await store.begin({ key, fingerprint: 'fp', owner: 'b', leaseMs: 5_000 });
    expect(a.status === 'acquired' && b.status === 'acquired' && b.fence > a.fence).toBe(true);
    if (a.status !== 'acquired' || b.status !== 'acquired') return;
    expect(await store.complete({ key, fence: a.fence, outgoing: [], retentionMs: 60_000 })).toBe('lost');
    expect(await store.fail(key, a.fence, { name: 'E', code: 'E', message: 'x' }, 60_000)).toBe('lost');
    expect(await store.cold.get(key)).toMatchObject({ state: 'IN_PROGRESS' });
    expect(await store.complete({ key, fence: b.fence, outgoing: [], retentionMs: 60_000 })).toBe('ok');
    expect((await store.cold.get(key))?.state).toBe('COMPLETED');
  });
});

describe('retention horizon with a tiered store', () => {
  const base = {
    retry: resolveRetryPolicy(undefined),
    redeliveryHorizonMs: 86_400_000,
    leaseMs: 30_000,
    logger: defaultLogger,
    consumer: 'c',
  };

  it('checks the cold tier retention, not the hot one', () => {
    const { store } = tiered('horizon', 3_600_000);
    // Processor retention of 1 hour is too short on its own...
    expect(() => checkRetentionHorizon({ ...base, retentionMs: 3_600_000 }, 'error')).toThrow(ConfigError);
    // ...and on a tiered store that keeps cold records for the requested retention too.
    expect(() => checkRetentionHorizon({ ...base, retentionMs: 3_600_000, store }, 'error')).toThrow(
      ConfigError,
    );
    // A cold tier that keeps records for 30 days satisfies it.
    const longCold = createTieredStore({
      hot: store.hot,
      cold: store.cold,
      hotRetentionMs: 3_600_000,
      coldRetentionMs: 30 * 86_400_000,
    });
    expect(longCold.effectiveRetentionMs(3_600_000)).toBe(30 * 86_400_000);
    expect(() =>
      checkRetentionHorizon({ ...base, retentionMs: 3_600_000, store: longCold }, 'error'),
    ).not.toThrow();
    expect(() =>
      createIdempotentExecutor({ consumer: 'c', store: longCold, retentionMs: 3_600_000 }),
    ).not.toThrow();
  });
});
