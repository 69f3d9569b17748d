/**
 * Compaction markers against real servers: a compacted key answers duplicate (or mismatch)
 * exactly like its full record did, never for a key that was not processed, and only until the
 * record's own expiry.
 */
import { randomUUID } from 'node:crypto';
import type { Cluster, Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRedisStore, type RedisProcessedStore } from '../src/index.js';
import { keysFor } from '../src/layout.js';
import { cluster, dropPrefix, sleep, standalone, testPrefix } from './helpers.js';

const owner = 'worker-a';
const leaseMs = 30_000;
const retentionMs = 600_000;
const HOSTILE = [
  '*',
  '{',
  '}',
  '{tag}',
  '$gt',
  '\u0000',
  'a\u0000b',
  '?[a-z]',
  'ключ-🔑',
  'x'.repeat(10 * 1024),
];

for (const [name, connect] of [
  ['standalone', standalone],
  ['cluster', cluster],
] as const) {
  describe(`compaction markers (${name})`, () => {
    let client: Redis | Cluster;
    let store: RedisProcessedStore;
    const keyPrefix = testPrefix('markers');

    beforeAll(() => {
      client = connect();
      store = createRedisStore({ client, keyPrefix, compactAfterMs: 0 });
    });
    afterAll(async () => {
      await dropPrefix(client, keyPrefix);
      await client.quit();
    });

    const process = async (key: string, fingerprint: string, retention = retentionMs, published = true) => {
      const begun = await store.begin({ key, fingerprint, owner, leaseMs });
      if (begun.status !== 'acquired') throw new Error(`expected acquired, got ${begun.status}`);
      const outgoing = [{ id: `${key}/out`, destination: 'out', body: Uint8Array.of(1), headers: {} }];
      const result = { kind: 'inline' as const, data: Uint8Array.of(42) };
      expect(
        await store.complete({ key, fence: begun.fence, result, outgoing, retentionMs: retention }),
      ).toBe('ok');
      if (published) await store.markPublished(key, begun.fence, [outgoing[0]?.id ?? '']);
    };

    it('compacted keys answer duplicate or mismatch exactly; other keys stay new', async () => {
      const run = randomUUID();
      const done = [
        ...Array.from({ length: 300 }, (_, i) => `${run}:done:${i}`),
        ...HOSTILE.map((h) => `${run}:${h}`),
      ];
      for (const key of done) await process(key, `fp:${key}`);
      const before = await store.get(done[0] ?? '');
      const stats = await store.compactCompleted({ batchSize: 50, concurrency: 64 });
      expect(stats.compacted).toBeGreaterThanOrEqual(done.length);
      for (const key of done) {
        // The full record is gone; a marker stands in for it.
        expect(await client.exists(keysFor(keyPrefix, key).record)).toBe(0);
        const duplicate = await store.begin({ key, fingerprint: `fp:${key}`, owner, leaseMs });
        expect(duplicate).toMatchObject({
          status: 'duplicate',
          record: { key, state: 'COMPLETED', compacted: true, outgoing: [], fingerprint: `fp:${key}` },
        });
        expect(duplicate.status === 'duplicate' && duplicate.record.result).toBeUndefined();
        const mismatch = await store.begin({ key, fingerprint: 'another payload', owner, leaseMs });
        expect(mismatch.status).toBe('mismatch');
        expect(mismatch.status === 'mismatch' && mismatch.record.fingerprint).toMatch(
          /^compacted:[0-9a-f]{16}$/,
        );
      }
      // The marker keeps the record's exact expiry.
      const marker = await store.get(done[0] ?? '');
      expect(marker).toMatchObject({
        state: 'COMPLETED',
        compacted: true,
        expiresAt: before?.state === 'COMPLETED' ? before.expiresAt : -1,
      });
      // Keys never processed (including near-misses of processed ones) are not answered by markers.
      for (const key of [
        `${run}:done:300`,
        `${run}:done:`,
        `${run}:`,
        `${run}:x`,
        `${run}:{tag`,
        `${run}:\u0000\u0000`,
      ]) {
        expect(await store.get(key)).toBeUndefined();
        expect(await store.begin({ key, fingerprint: 'fp', owner, leaseMs })).toMatchObject({
          status: 'acquired',
          kind: 'new',
          attempt: 1,
        });
      }
    });

    it('records with unconfirmed outgoing messages are kept until they are confirmed', async () => {
      const key = `${randomUUID()}:pending`;
      await process(key, 'fp', retentionMs, false);
      const first = await store.compactCompleted({ concurrency: 64 });
      expect(first.deferred).toBeGreaterThanOrEqual(1);
      const kept = await store.get(key);
      expect(kept).toMatchObject({ state: 'COMPLETED', outgoing: [{ published: false }] });
      expect(kept && 'compacted' in kept).toBe(false);
      await store.markPublished(key, kept?.fence ?? 0, [`${key}/out`]);
      await store.compactCompleted({ concurrency: 64 });
      expect(await store.get(key)).toMatchObject({ state: 'COMPLETED', compacted: true });
    });

    it('a marker reads as absent after the record’s retention, and the key starts anew', async () => {
      const key = `${randomUUID()}:short`;
      await process(key, 'fp', 8000);
      await store.compactCompleted({ concurrency: 64 });
      const marker = await store.get(key);
      expect(marker).toMatchObject({ compacted: true });
      await sleep((marker?.state === 'COMPLETED' ? marker.expiresAt : 0) - Date.now() + 300);
      expect(await store.get(key)).toBeUndefined();
      const again = await store.begin({ key, fingerprint: 'other', owner, leaseMs });
      expect(again).toMatchObject({ status: 'acquired', kind: 'new', attempt: 1 });
      expect(again.status === 'acquired' && Math.abs(again.fence - Date.now())).toBeLessThan(5000);
    });

    it('records inside the hot window are not compacted', async () => {
      const hot = createRedisStore({ client, keyPrefix, compactAfterMs: 3_600_000 });
      const key = `${randomUUID()}:hot`;
      const begun = await hot.begin({ key, fingerprint: 'fp', owner, leaseMs });
      if (begun.status !== 'acquired') throw new Error(begun.status);
      await hot.complete({ key, fence: begun.fence, outgoing: [], retentionMs });
      await hot.compactCompleted({ concurrency: 64 });
      const record = await hot.get(key);
      expect(record?.state === 'COMPLETED' && 'compacted' in record).toBe(false);
    });
  });
}
