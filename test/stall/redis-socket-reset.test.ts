/**
 * A Redis connection that goes silent while staying open (a FreezingProxy between the store's
 * ioredis client and Redis: a dead host or a black-holed link, where no RST ever comes). ioredis
 * has one connection and sends every command down it, so core's `storeTimeoutMs` alone turns each
 * hung call into an outage and the retries hang on the same connection: the consumer stays down
 * until the kernel gives the socket up (about 15 minutes of retransmissions on Linux). ioredis's
 * `socketTimeout`, which the store README recommends, destroys a connection that answers nothing
 * for that long and reconnects: a new connection through the proxy, which is forwarded.
 */
import { createProcessor, type Disposition } from '@exactly-once/core';
import { createRedisStore } from '@exactly-once/store-redis';
import { Redis, type RedisOptions } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';
import { type FreezingProxy, startFreezingProxy } from '../support/freezing-proxy.js';
import { keyedDelivery, untilAckedBy } from '../support/until-acked.js';

const target = new URL(env.redisUrl);
const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

async function clientBehindProxy(options: RedisOptions): Promise<{ proxy: FreezingProxy; client: Redis }> {
  const proxy = await startFreezingProxy({ host: target.hostname, port: Number(target.port || 6379) });
  // The store README's fail-fast client, with or without socketTimeout.
  const client = new Redis({
    host: '127.0.0.1',
    port: proxy.port,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    ...options,
  });
  client.on('error', () => {});
  cleanups.push(
    () => proxy.close(),
    async () => client.disconnect(),
  );
  await new Promise((resolve) => client.once('ready', resolve));
  return { proxy, client };
}

function processorOn(client: Redis, runs: Map<string, number>) {
  return createProcessor<{ k: string }>({
    consumer: 'socket-reset',
    store: createRedisStore({ client, keyPrefix: uniqueName('sr') }),
    leaseMs: 3_000,
    storeTimeoutMs: 1_000,
    retentionCheck: 'off',
    logger: { debug() {}, info() {}, warn() {}, error() {} },
    handler: ({ k }) => {
      runs.set(k, (runs.get(k) ?? 0) + 1);
    },
  });
}

describe('a Redis connection that goes silent and stays open', () => {
  it('with socketTimeout the client reconnects: every message is acked, its handler run once', async () => {
    const { proxy, client } = await clientBehindProxy({ socketTimeout: 1_500 });
    let reconnects = 0;
    client.on('reconnecting', () => reconnects++);
    const runs = new Map<string, number>();
    const p = processorOn(client, runs);
    const outcomes: Disposition[] = [];
    const untilAcked = untilAckedBy(p, outcomes);
    await Promise.all(Array.from({ length: 10 }, (_, i) => untilAcked(`before-${i}`)));
    proxy.freeze();
    expect(proxy.frozen).toBe(1);
    await Promise.all(Array.from({ length: 10 }, (_, i) => untilAcked(`after-${i}`)));

    expect(runs.size).toBe(20);
    expect([...runs.values()].every((n) => n === 1)).toBe(true);
    expect(reconnects).toBeGreaterThan(0);
    expect(outcomes.some((d) => d.action === 'defer' && d.outcome === 'store-unavailable')).toBe(true);
  }, 60_000);

  it('without it every retry waits on the silent connection: nothing is acked', async () => {
    const { proxy, client } = await clientBehindProxy({});
    const runs = new Map<string, number>();
    const p = processorOn(client, runs);
    expect(await p.process(keyedDelivery('warm'))).toMatchObject({ action: 'ack' });
    proxy.freeze();
    const outcomes: Disposition[] = [];
    const until = Date.now() + 5_000;
    while (Date.now() < until) outcomes.push(await p.process(keyedDelivery('stuck')));
    // Each call was given up at storeTimeoutMs (1 s) on the same frozen connection.
    expect(outcomes.length).toBeGreaterThanOrEqual(3);
    expect(outcomes.every((d) => d.action === 'defer' && d.outcome === 'store-unavailable')).toBe(true);
    expect(runs.has('stuck')).toBe(false);
    expect(proxy.frozen).toBe(1);
  }, 30_000);
});
