/**
 * A store connection that stalls: requests already sent are never answered and the connection
 * stays open (a FreezingProxy between the MongoDB store and FerretDB). With the deadline
 * (`storeTimeoutMs`) every message still ends acked, its handler run once; the calls that hung
 * come back as store outages and the messages are tried again. Without it the first message
 * waits for ever.
 */
import { createProcessor, type Disposition } from '@exactly-once/core';
import { createMongoStore } from '@exactly-once/store-mongo';
import { MongoClient } from 'mongodb';
import { afterAll, describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';
import { type FreezingProxy, startFreezingProxy } from '../support/freezing-proxy.js';
import { keyedDelivery, untilAckedBy } from '../support/until-acked.js';

const target = new URL(env.mongoUrl);
const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

async function storeBehindProxy(): Promise<{
  proxy: FreezingProxy;
  store: ReturnType<typeof createMongoStore>;
}> {
  const proxy = await startFreezingProxy({ host: target.hostname, port: Number(target.port || 27017) });
  const client = new MongoClient(`mongodb://127.0.0.1:${proxy.port}/?directConnection=true`, {
    serverSelectionTimeoutMS: 5_000,
  });
  await client.connect();
  const db = client.db(uniqueName('eo_stall').slice(0, 40));
  cleanups.push(
    () => proxy.close(),
    () => client.close(true),
    async () => {
      const direct = new MongoClient(env.mongoUrl);
      await direct.db(db.databaseName).dropDatabase();
      await direct.close();
    },
  );
  const store = createMongoStore({ collection: db.collection('processed'), db });
  await store.ensureIndexes();
  return { proxy, store };
}

describe('a stalled store connection (MongoDB store on FerretDB)', () => {
  it('with storeTimeoutMs every message is acked once: the hung calls fail as outages and are retried', async () => {
    const { proxy, store } = await storeBehindProxy();
    const runs = new Map<string, number>();
    const p = createProcessor<{ k: string }>({
      consumer: 'stall',
      store,
      leaseMs: 3_000,
      storeTimeoutMs: 1_000,
      retentionCheck: 'off',
      handler: ({ k }) => {
        runs.set(k, (runs.get(k) ?? 0) + 1);
      },
    });
    const outcomes: Disposition[] = [];
    const untilAcked = untilAckedBy(p, outcomes);
    await Promise.all(Array.from({ length: 10 }, (_, i) => untilAcked(`before-${i}`)));
    proxy.freeze();
    expect(proxy.frozen).toBeGreaterThan(0);
    await Promise.all(Array.from({ length: 10 }, (_, i) => untilAcked(`after-${i}`)));

    expect([...runs.values()].every((n) => n === 1)).toBe(true);
    expect(runs.size).toBe(20);
    const timedOut = outcomes.filter(
      (d) =>
        d.action === 'defer' &&
        d.outcome === 'store-unavailable' &&
        /did not answer within 1000 ms/.test(d.error?.message ?? ''),
    );
    expect(timedOut.length).toBeGreaterThan(0);
  }, 120_000);

  it('without a deadline a message whose store call hangs waits for ever', async () => {
    const { proxy, store } = await storeBehindProxy();
    const p = createProcessor<{ k: string }>({
      consumer: 'stall',
      store,
      storeTimeoutMs: Number.POSITIVE_INFINITY,
      retentionCheck: 'off',
      handler: () => {},
    });
    expect(await p.process(keyedDelivery('warm'))).toMatchObject({ action: 'ack' });
    proxy.freeze();
    const pending = p.process(keyedDelivery('stuck'));
    const state = await Promise.race([pending, new Promise((r) => setTimeout(r, 4_000, 'still pending'))]);
    expect(state).toBe('still pending');
  }, 30_000);
});
