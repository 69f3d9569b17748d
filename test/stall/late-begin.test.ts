/**
 * A begin that reaches Redis after its caller gave up at `storeTimeoutMs` (the client queued it
 * through an outage, or the network held it: here a proxy holds it). It must take no lease:
 * nobody would hold it or give it back, and the message's next delivery would find its key busy
 * for the whole lease, then take it over as after a crash (an attempt counted, a warning that a
 * worker died when none did).
 */
import { createProcessor, type Disposition, Headers } from '@exactly-once/core';
import { createRedisStore } from '@exactly-once/store-redis';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';
import { startFreezingProxy } from '../support/freezing-proxy.js';
import { dropStorePrefixes, trackedPrefix } from '../support/redis.js';

const target = new URL(env.redisUrl);
const direct = new Redis(env.redisUrl);
const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
  await dropStorePrefixes(direct);
  direct.disconnect();
});

const delivery = (k: string) => ({
  body: new TextEncoder().encode(JSON.stringify({ k })),
  headers: { [Headers.IdempotencyKey]: k, [Headers.RequestId]: `req-${k}` },
  destination: 'orders',
  system: 'test',
});

/** A store whose connection goes through a proxy that can hold requests. */
async function storeBehindProxy() {
  const proxy = await startFreezingProxy({ host: target.hostname, port: Number(target.port || 6379) });
  const client = new Redis(`redis://127.0.0.1:${proxy.port}`);
  cleanups.push(
    () => proxy.close(),
    async () => client.disconnect(),
  );
  const store = createRedisStore({ client, keyPrefix: trackedPrefix(uniqueName('late')) });
  /** Holds what is sent from now, for `ms`, then lets it through; settles once it has run. */
  const holdFor = async (ms: number, send: () => Promise<unknown>) => {
    proxy.hold();
    const sent = send();
    await new Promise((resolve) => setTimeout(resolve, ms));
    proxy.release();
    // Answered after the held requests, on the same connection: they have run by then.
    await client.ping();
    return sent;
  };
  return { store, holdFor };
}

describe('a begin that reaches Redis after its caller gave up', () => {
  it('takes no lease: the deliveries whose begins timed out run at once when they come back', async () => {
    const { store, holdFor } = await storeBehindProxy();
    const runs = new Map<string, number>();
    const p = createProcessor<{ k: string }>({
      consumer: 'late',
      store,
      leaseMs: 60_000,
      storeTimeoutMs: 400,
      retentionCheck: 'off',
      handler: ({ k }) => {
        runs.set(k, (runs.get(k) ?? 0) + 1);
      },
    });
    const keys = Array.from({ length: 5 }, (_, i) => `k-${i}`);
    // The store reads the server's clock from its answers.
    expect(await p.process(delivery('warm'))).toMatchObject({ action: 'ack' });

    // One batch begin, held past storeTimeoutMs.
    const abandoned = (await holdFor(700, () =>
      Promise.all(keys.map((k) => p.process(delivery(k)))),
    )) as Disposition[];
    for (const d of abandoned) expect(d).toMatchObject({ action: 'defer', outcome: 'store-unavailable' });

    // Before, each key was IN_PROGRESS under a lease nobody held, and the deliveries below were
    // answered busy for the lease's 60 s (then taken over, an attempt counted).
    for (const k of keys) expect(await p.lastRunMayHaveDied(delivery(k))).toBe(false);
    const again = await Promise.all(keys.map((k) => p.process(delivery(k))));
    for (const d of again) expect(d).toMatchObject({ action: 'ack', outcome: 'acquired' });
    for (const k of keys) expect(runs.get(k)).toBe(1);
  }, 30_000);

  it('store.begin of one key: answered busy with nothing written', async () => {
    const { store, holdFor } = await storeBehindProxy();
    const request = { key: 'k-1', fingerprint: 'f', owner: 'gone', leaseMs: 60_000 };
    expect(await store.begin({ key: 'warm', fingerprint: 'f', owner: 'w', leaseMs: 1_000 })).toMatchObject({
      status: 'acquired',
    });
    const late = await holdFor(500, () => store.begin({ ...request, abandonAfterMs: 200 }));
    expect(late).toEqual({ status: 'busy', retryAfterMs: 1 });
    expect(await store.get('k-1')).toBeUndefined();
    // A begin still waited for takes its lease as always.
    const waited = await holdFor(100, () => store.begin({ ...request, abandonAfterMs: 5_000 }));
    expect(waited).toMatchObject({ status: 'acquired', kind: 'new', attempt: 1 });
  }, 30_000);
});
