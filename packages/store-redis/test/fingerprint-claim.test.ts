/**
 * claimFingerprint (the payload guard's store operation) on the real Redis servers, the guard in
 * the pipeline on Redis, and what a claim costs in memory (MEMORY USAGE).
 */
import { createProcessor, Headers, type Logger } from '@exactly-once/core';
import { describeFingerprintClaimConformance } from '@exactly-once/core/testing';
import { afterAll, describe, expect, it } from 'vitest';
import { createRedisStore } from '../src/index.js';
import { fingerprintClaimKey } from '../src/layout.js';
import { cluster, dropPrefix, standalone, testPrefix } from './helpers.js';

for (const [name, connect] of [
  ['redis standalone', standalone],
  ['redis cluster', cluster],
] as const) {
  describeFingerprintClaimConformance(name, async () => {
    const client = connect();
    const keyPrefix = testPrefix('fpclaim');
    const store = createRedisStore({ client, keyPrefix });
    return {
      store,
      teardown: async () => {
        await dropPrefix(client, keyPrefix);
        await client.quit();
      },
    };
  });
}

describe('redis claimFingerprint', () => {
  const client = standalone();
  const keyPrefix = testPrefix('fpguard');
  const store = createRedisStore({ client, keyPrefix });
  afterAll(async () => {
    await dropPrefix(client, keyPrefix);
    await client.quit();
  });
  const enc = new TextEncoder();
  const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {} };

  it('is one SET NX GET PX under the prefix, hash-tagged by the fingerprint, expiring with the window', async () => {
    const fingerprint = 'ab'.repeat(32);
    expect(await store.claimFingerprint('default:billing', fingerprint, 'k1', 60_000)).toBeUndefined();
    const name = fingerprintClaimKey(keyPrefix, 'default:billing', fingerprint);
    expect(name.toString()).toBe(`${keyPrefix}:{f${fingerprint}}p:default:billing`);
    expect(await client.get(name)).toBe('k1');
    const pttl = await client.pttl(name);
    expect(pttl).toBeGreaterThan(50_000);
    expect(pttl).toBeLessThanOrEqual(60_000);
  });

  it('costs a few hundred bytes at most per claim (MEMORY USAGE), reported here', async () => {
    const sizes: number[] = [];
    for (let i = 0; i < 20; i++) {
      const fingerprint = Buffer.from(`${i}`.padStart(32, '0')).toString('hex');
      // A realistic key: a UUID-sized idempotency key, scope `<namespace>:<consumer>`.
      const key = `7c9e6679-7425-40de-944b-e07fc1f90a${`${i}`.padStart(2, '0')}`;
      await store.claimFingerprint('default:billing', fingerprint, key, 86_400_000);
      const usage = await client.call(
        'MEMORY',
        'USAGE',
        fingerprintClaimKey(keyPrefix, 'default:billing', fingerprint),
      );
      sizes.push(Number(usage));
    }
    const average = sizes.reduce((a, b) => a + b, 0) / sizes.length;
    console.log(
      `redis claimFingerprint: MEMORY USAGE ${Math.min(...sizes)}-${Math.max(...sizes)} bytes per claim (avg ${average})`,
    );
    expect(average).toBeGreaterThan(0);
    expect(average).toBeLessThan(512);
  });

  it('guards the pipeline on Redis: a new key for the same payload is dead-lettered, the old key is a duplicate', async () => {
    const p = createProcessor({
      consumer: 'billing',
      store,
      retentionCheck: 'off',
      logger: quiet,
      payloadGuard: { windowMs: 60_000, action: 'dead-letter' },
      handler: () => 'charged',
    });
    const body = enc.encode(JSON.stringify({ user: 1, amount: 100 }));
    const d = (k: string) => ({
      body,
      headers: { [Headers.IdempotencyKey]: k },
      destination: 'q',
      system: 'test',
    });
    expect(await p.process(d('pay-1'))).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(await p.process(d('pay-1'))).toMatchObject({ action: 'ack', outcome: 'duplicate' });
    expect(await p.process(d('pay-1-retry'))).toMatchObject({
      action: 'dead-letter',
      outcome: 'payload-reuse',
      reason: { error: { code: 'DUPLICATE_PAYLOAD' } },
    });
  });

  it('a key reused for another payload is refused and gives that payload back for a new key', async () => {
    const charged: number[] = [];
    const p = createProcessor<{ amount: number }>({
      consumer: 'refunds',
      store,
      retentionCheck: 'off',
      logger: quiet,
      payloadGuard: { windowMs: 60_000, action: 'dead-letter' },
      handler: (m) => {
        charged.push(m.amount);
        return 'charged';
      },
    });
    const d = (k: string, amount: number) => ({
      body: enc.encode(JSON.stringify({ amount })),
      headers: { [Headers.IdempotencyKey]: k },
      destination: 'q',
      system: 'test',
    });
    expect(await p.process(d('K1', 500))).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(await p.process(d('K1', 700))).toMatchObject({ action: 'dead-letter', outcome: 'mismatch' });
    expect(await p.process(d('K2', 700))).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(await p.process(d('K3', 700))).toMatchObject({ action: 'dead-letter', outcome: 'payload-reuse' });
    expect(charged).toEqual([500, 700]);
  });
});
