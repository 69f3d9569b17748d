/**
 * Stuck work: `listInProgress` on the memory store and on the real Redis (standalone and
 * Cluster) and Mongo (FerretDB) stores, `findStuck` per consumer, and the
 * `exactly_once.in_progress.stuck` gauge of `watchStuck`.
 */
import { type Attributes, metrics, type ObservableCallback, type ObservableResult } from '@opentelemetry/api';
import {
  createMemoryStore,
  findStuck,
  type ProcessedStore,
  recordKeyFor,
  scopeKey,
  watchStuck,
} from '@exactly-once/core';
import { createMongoStore } from '@exactly-once/store-mongo';
import { createRedisStore } from '@exactly-once/store-redis';
import { Cluster, Redis } from 'ioredis';
import { MongoClient } from 'mongodb';
import { afterAll, describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';
import { dropRedisPrefix } from '../support/redis.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
});

const stores: [string, () => Promise<ProcessedStore>][] = [
  ['memory', async () => createMemoryStore()],
  [
    'redis standalone',
    async () => {
      const client = new Redis(env.redisUrl, { maxRetriesPerRequest: 2 });
      const keyPrefix = uniqueName('eot-stuck');
      cleanups.push(async () => {
        await dropRedisPrefix(client, `${keyPrefix}:`);
        await client.quit();
      });
      return createRedisStore({ client, keyPrefix });
    },
  ],
  [
    'redis cluster',
    async () => {
      const client = new Cluster(env.redisClusterNodes, { redisOptions: { maxRetriesPerRequest: 2 } });
      const keyPrefix = uniqueName('eot-stuck');
      cleanups.push(async () => {
        await dropRedisPrefix(client, `${keyPrefix}:`);
        await client.quit();
      });
      const store = createRedisStore({ client, keyPrefix });
      await store.checkServer();
      return store;
    },
  ],
  [
    'mongo',
    async () => {
      const client = new MongoClient(env.mongoUrl, { serverSelectionTimeoutMS: 5000 });
      await client.connect();
      const db = client.db(uniqueName('eo_stuck').slice(0, 40));
      cleanups.push(async () => {
        await db.dropDatabase();
        await client.close();
      });
      const store = createMongoStore({ db });
      await store.ensureIndexes();
      return store;
    },
  ],
];

describe.each(stores)('listInProgress / findStuck: %s', (_name, open) => {
  it('lists IN_PROGRESS records older than the threshold, per consumer, with key, owner, attempt, fence, lease, start', async () => {
    const store = await open();
    expect(store.listInProgress).toBeTypeOf('function');
    const begin = (key: string, owner = 'w1', leaseMs = 60_000) =>
      store.begin({ key, fingerprint: 'fp', owner, leaseMs });
    const hostile = 'k*{x}$gt\u0000.é';
    const stuckKey = recordKeyFor({ namespace: 'ns', consumer: 'billing', key: hostile });
    const before = Date.now();
    const stuck = await begin(stuckKey, 'worker-7');
    const done = await begin(scopeKey('ns', 'billing', 'done'));
    const other = await begin(scopeKey('ns', 'billing-other', 'x'));
    expect([stuck.status, done.status, other.status]).toEqual(['acquired', 'acquired', 'acquired']);
    if (done.status === 'acquired') {
      await store.complete({
        key: scopeKey('ns', 'billing', 'done'),
        fence: done.fence,
        outgoing: [],
        retentionMs: 60_000,
      });
    }
    await sleep(400);
    const fresh = await begin(scopeKey('ns', 'billing', 'fresh'));
    expect(fresh.status).toBe('acquired');

    const found = await findStuck(store, { namespace: 'ns', consumer: 'billing', olderThanMs: 300 });
    expect(found.map((e) => e.key)).toEqual([stuckKey]);
    const [entry] = found;
    expect(entry).toMatchObject({ owner: 'worker-7', attempt: 1 });
    if (stuck.status === 'acquired')
      expect(entry).toMatchObject({ fence: stuck.fence, leaseUntil: stuck.leaseUntil });
    expect(Math.abs((entry?.startedAt ?? 0) - before)).toBeLessThan(5_000);

    // The other consumer is separate; a larger threshold finds nothing; a tiny one finds both.
    expect(
      (await findStuck(store, { namespace: 'ns', consumer: 'billing-other', olderThanMs: 300 })).length,
    ).toBe(1);
    expect(await findStuck(store, { namespace: 'ns', consumer: 'billing', olderThanMs: 60_000 })).toEqual([]);
    const all = await findStuck(store, { namespace: 'ns', consumer: 'billing', olderThanMs: 0 });
    expect(all.map((e) => e.key).sort()).toEqual([scopeKey('ns', 'billing', 'fresh'), stuckKey].sort());
    expect(
      (await findStuck(store, { namespace: 'ns', consumer: 'billing', olderThanMs: 0, limit: 1 })).length,
    ).toBe(1);
  });

  it('a takeover restarts the attempt clock; a completed record is no longer stuck', async () => {
    const store = await open();
    const key = scopeKey('ns2', 'orders', 'k1');
    const first = await store.begin({ key, fingerprint: 'fp', owner: 'a', leaseMs: 200 });
    await sleep(450);
    expect((await findStuck(store, { namespace: 'ns2', consumer: 'orders', olderThanMs: 400 })).length).toBe(
      1,
    );
    const second = await store.begin({ key, fingerprint: 'fp', owner: 'b', leaseMs: 60_000 });
    expect(second).toMatchObject({ status: 'acquired', kind: 'takeover', attempt: 2 });
    expect(await findStuck(store, { namespace: 'ns2', consumer: 'orders', olderThanMs: 400 })).toEqual([]);
    const now = await findStuck(store, { namespace: 'ns2', consumer: 'orders', olderThanMs: 0 });
    expect(now).toMatchObject([{ key, owner: 'b', attempt: 2 }]);
    if (second.status === 'acquired') {
      expect(await store.complete({ key, fence: second.fence, outgoing: [], retentionMs: 60_000 })).toBe(
        'ok',
      );
    }
    expect(first.status).toBe('acquired');
    expect(await findStuck(store, { namespace: 'ns2', consumer: 'orders', olderThanMs: 0 })).toEqual([]);
  });
});

describe('watchStuck', () => {
  it('reports exactly_once.in_progress.stuck per consumer through the metrics API', async () => {
    const callbacks: ObservableCallback[] = [];
    const names: string[] = [];
    const gauge = {
      addCallback: (cb: ObservableCallback) => void callbacks.push(cb),
      removeCallback: (cb: ObservableCallback) => void callbacks.splice(callbacks.indexOf(cb), 1),
    };
    const meter = new Proxy(
      {},
      {
        get: (_t, prop) =>
          prop === 'createObservableGauge'
            ? (name: string) => {
                names.push(name);
                return gauge;
              }
            : () => undefined,
      },
    );
    metrics.setGlobalMeterProvider({ getMeter: () => meter as never });
    try {
      const store = createMemoryStore();
      await store.begin({
        key: scopeKey('default', 'mail', 'a'),
        fingerprint: 'f',
        owner: 'w',
        leaseMs: 60_000,
      });
      const watch = watchStuck(store, { consumer: 'mail', olderThanMs: 0, intervalMs: 50 });
      await sleep(120);
      expect(names).toEqual(['exactly_once.in_progress.stuck']);
      expect(watch.count).toBe(1);
      const seen: [number, Attributes | undefined][] = [];
      const result: ObservableResult = {
        observe: (value, attributes) => void seen.push([value, attributes]),
      };
      for (const cb of callbacks) await cb(result);
      expect(seen).toEqual([[1, { 'exactly_once.consumer': 'mail', 'exactly_once.namespace': 'default' }]]);
      watch.stop();
      expect(callbacks).toHaveLength(0);
    } finally {
      metrics.disable();
    }
  });
});
