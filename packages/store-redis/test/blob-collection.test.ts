/**
 * Blob results are collected once their records are past their physical end, on standalone Redis
 * and on the Cluster, with the filesystem blob store: the store goes back to its starting size, and
 * a blob a live record (or nothing the store indexes, e.g. a journaled step's) names is kept.
 */
import { randomUUID } from 'node:crypto';
import type { BlobStore } from '@exactly-once/core';
import { Cluster, type Redis } from 'ioredis';
import { describe, expect, it, vi } from 'vitest';
import { scripts } from '../src/generated/scripts.js';
import type { createRedisStore } from '../src/index.js';
import { blobFiles, blobFixture, cluster, spyOnScript, standalone } from './helpers.js';

/** How many blob index keys (`<prefix>:{<tag>}b`) exist, on every master. */
async function blobIndexKeys(client: Redis | Cluster, prefix: string): Promise<number> {
  let count = 0;
  for (const node of client instanceof Cluster ? client.nodes('master') : [client]) {
    let cursor = '0';
    do {
      const [next, keys] = await node.scan(cursor, 'MATCH', `${prefix}:{*}b`, 'COUNT', 1000);
      cursor = next;
      count += keys.length;
    } while (cursor !== '0');
  }
  return count;
}

async function completeWithBlob(
  store: ReturnType<typeof createRedisStore>,
  blobs: BlobStore,
  key: string,
  retentionMs: number,
) {
  const begun = await store.begin({ key, fingerprint: 'fp', owner: 'w', leaseMs: 30_000 });
  if (begun.status !== 'acquired') throw new Error(`expected acquired, got ${begun.status}`);
  const pointer = await blobs.put(Buffer.from(`result of ${key}`));
  expect(
    await store.complete({
      key,
      fence: begun.fence,
      result: { kind: 'blob', pointer },
      outgoing: [],
      retentionMs,
    }),
  ).toBe('ok');
  return pointer;
}

describe.each([
  ['standalone', standalone],
  ['cluster', cluster],
] as const)('blob collection on Redis %s', (name, connect: () => Redis | Cluster) => {
  it('1,000 blob results whose records expired are deleted; the blob store is back at its starting size', async () => {
    // Prepare
    const f = await blobFixture(connect, 'blobs');
    const { blobs, directory } = f;
    const store = f.store({ expiredGraceMs: 0 });
    const unreferenced = await blobs.put(
      Buffer.from('a step journaled this pointer; no record result names it'),
    );
    const start = await blobFiles(directory);
    const live = await completeWithBlob(store, blobs, `live-${randomUUID()}`, 3_600_000);
    const keys = Array.from({ length: 1_000 }, (_, i) => `k-${i}-${randomUUID()}`);
    for (let i = 0; i < keys.length; i += 50) {
      // Retention of 3 s: the writes end before the first record expires, even on a loaded machine
      // (200 ms did not, and the early pass found them all expired).
      await Promise.all(keys.slice(i, i + 50).map((key) => completeWithBlob(store, blobs, key, 3_000)));
    }
    expect(await blobFiles(directory)).toBe(start + 1_001);
    try {
      // Act: before expiry nothing goes; after it every expired record's blob does.
      const early = await store.collectBlobs(blobs);
      await new Promise((r) => setTimeout(r, 3_200));
      const late = await store.collectBlobs(blobs);
      const again = await store.collectBlobs(blobs);
      // Assess
      expect(early.deleted).toBeLessThan(1_000);
      expect(early.deleted + late.deleted).toBe(1_000);
      expect(again.deleted).toBe(0);
      expect(await blobFiles(directory)).toBe(start + 1);
      expect((await blobs.get(live)).byteLength).toBeGreaterThan(0);
      expect((await blobs.get(unreferenced)).byteLength).toBeGreaterThan(0);
    } finally {
      await f.close();
    }
  }, 120_000);

  it('a pass reads the indexes of up to 256 tags of a node per call, and works only on tags with due entries', async () => {
    // One ZRANGE per tag made a pass 65,536 calls even with nothing to collect: seconds under load.
    const f = await blobFixture(connect, 'blobs-calls');
    const { client, blobs, directory } = f;
    const store = f.store({ expiredGraceMs: 0 });
    const start = await blobFiles(directory);
    try {
      for (let i = 0; i < 3; i++) await completeWithBlob(store, blobs, `c-${i}-${randomUUID()}`, 50);
      await new Promise((r) => setTimeout(r, 200));
      const reads = spyOnScript(client, scripts.blobsDue);
      const commands = vi.spyOn(client, 'call');
      const masters = client instanceof Cluster ? client.nodes('master').length : 1;
      try {
        expect((await store.collectBlobs(blobs)).deleted).toBe(3);
        expect(reads.mock.calls.length).toBeLessThanOrEqual(65_536 / 256 + masters);
        // TIME, then one ZREM per entry: no tag is read alone (no batch was full).
        expect(commands.mock.calls.map((c) => String(c[0]))).toEqual(['TIME', 'ZREM', 'ZREM', 'ZREM']);
      } finally {
        reads.mockRestore();
        commands.mockRestore();
      }
      expect(await blobFiles(directory)).toBe(start);
    } finally {
      await f.close();
    }
  }, 60_000);

  // A stale slot map is a Cluster's.
  if (name === 'cluster')
    it('a pass under a stale slot map (a resharding) reads tag by tag where a call met a key of another node', async () => {
      const f = await blobFixture(connect, 'blobs-stale');
      const { client, blobs, directory } = f;
      const store = f.store({ expiredGraceMs: 0 });
      const start = await blobFiles(directory);
      const map = client as unknown as { slots: string[][] };
      const real = map.slots;
      try {
        for (let i = 0; i < 12; i++) await completeWithBlob(store, blobs, `s-${i}-${randomUUID()}`, 50);
        await new Promise((r) => setTimeout(r, 200));
        // Every slot mapped to the first slot's node: each call of 256 tags names keys of the
        // other masters, which Redis refuses ("non local key").
        map.slots = real.map(() => [...(real[0] as string[])]);
        expect((await store.collectBlobs(blobs)).deleted).toBe(12);
        expect(await blobFiles(directory)).toBe(start);
      } finally {
        map.slots = real;
        await f.close();
      }
    }, 120_000);

  it('a pass one blob delete fails rejects only after its other workers stopped; none deletes after it', async () => {
    // Prepare: 40 expired blob results; the blob store refuses the third delete.
    const f = await blobFixture(connect, 'blobs-fail');
    const fs = f.blobs;
    let deletes = 0;
    const blobs: BlobStore = {
      ...fs,
      put: (bytes) => fs.put(bytes),
      get: (pointer) => fs.get(pointer),
      delete: async (pointer) => {
        const n = ++deletes;
        await new Promise((r) => setTimeout(r, 5));
        if (n === 3) throw new Error('blob store refused');
        return fs.delete(pointer);
      },
    };
    const store = f.store({ expiredGraceMs: 0 });
    try {
      for (let i = 0; i < 40; i++) await completeWithBlob(store, fs, `f-${i}-${randomUUID()}`, 50);
      await new Promise((r) => setTimeout(r, 200));
      // Act
      const pass = await store.collectBlobs(blobs, { concurrency: 8 }).then(
        () => undefined,
        (error: unknown) => error,
      );
      const atRejection = deletes;
      await new Promise((r) => setTimeout(r, 300));
      // Assess
      expect(pass).toBeInstanceOf(Error);
      expect(deletes).toBe(atRejection);
      expect(deletes).toBeLessThan(40);
    } finally {
      await f.close();
    }
  }, 60_000);

  it('indexBlobs: false adds nothing to the blob index (a store whose blobs another collection deletes)', async () => {
    const f = await blobFixture(connect, 'blobs-off');
    const { client, prefix, blobs } = f;
    const store = f.store({ indexBlobs: false });
    try {
      for (let i = 0; i < 20; i++)
        await completeWithBlob(store, blobs, `off-${i}-${randomUUID()}`, 3_600_000);
      expect(await blobIndexKeys(client, prefix)).toBe(0);
      expect((await store.collectBlobs(blobs)).deleted).toBe(0);
    } finally {
      await f.close();
    }
  }, 60_000);

  it('a blob already gone (an orphan pass deleted it) is not counted; its index entry goes', async () => {
    // An outside test: maintenance's onPass counted 278 deletions for 273 blobs.
    const f = await blobFixture(connect, 'blobs-gone');
    const { client, prefix, blobs } = f;
    const store = f.store({ expiredGraceMs: 0 });
    try {
      const gone = await completeWithBlob(store, blobs, `gone-${randomUUID()}`, 1);
      await completeWithBlob(store, blobs, `there-${randomUUID()}`, 1);
      await blobs.delete(gone);
      await new Promise((resolve) => setTimeout(resolve, 20));
      expect(await store.collectBlobs(blobs)).toEqual({ deleted: 1, damaged: 0 });
      expect(await blobIndexKeys(client, prefix)).toBe(0);
    } finally {
      await f.close();
    }
  }, 60_000);

  it("a pointer this blob store refuses (another store's) is dropped like a blob already gone; the pass goes on", async () => {
    // Before: its BlobIntegrityError failed the pass at that entry, every pass after it too, and
    // the tags after it were never collected (consumers of a prefix moved from GridFS to files).
    const f = await blobFixture(connect, 'blobs-foreign');
    const { client, prefix, blobs, directory } = f;
    const store = f.store({ expiredGraceMs: 0 });
    try {
      const key = `foreign-${randomUUID()}`;
      const begun = await store.begin({ key, fingerprint: 'fp', owner: 'w', leaseMs: 30_000 });
      if (begun.status !== 'acquired') throw new Error(begun.status);
      const gridfs = { uri: `gridfs:${'a'.repeat(24)}`, size: 3, sha256: 'b'.repeat(64) };
      expect(
        await store.complete({
          key,
          fence: begun.fence,
          result: { kind: 'blob', pointer: gridfs },
          outgoing: [],
          retentionMs: 1,
        }),
      ).toBe('ok');
      await completeWithBlob(store, blobs, `there-${randomUUID()}`, 1);
      await new Promise((resolve) => setTimeout(resolve, 20));
      expect(await store.collectBlobs(blobs)).toEqual({ deleted: 1, damaged: 0 });
      expect(await blobIndexKeys(client, prefix)).toBe(0);
      expect(await blobFiles(directory)).toBe(0);
    } finally {
      await f.close();
    }
  }, 60_000);

  it("a compacted record's blob is collected at compaction, not at the record's original end", async () => {
    // Before: the marker keeps no pointer, yet the blob stayed for the whole retention.
    const f = await blobFixture(connect, 'blobs-compact');
    const { blobs, directory } = f;
    const store = f.store({ compactAfterMs: 0, expiredGraceMs: 0 });
    const kept = f.store({ keyPrefix: `${f.prefix}-kept`, compactAfterMs: 3_600_000, expiredGraceMs: 0 });
    try {
      // Prepare: an hour's retention each; one store compacts at once, the other keeps full records
      const keys = Array.from({ length: 10 }, (_, i) => `c-${i}-${randomUUID()}`);
      for (const key of keys) await completeWithBlob(store, blobs, key, 3_600_000);
      await completeWithBlob(kept, blobs, `live-${randomUUID()}`, 3_600_000);
      expect(await blobFiles(directory)).toBe(11);

      // Act
      expect((await store.compactCompleted()).compacted).toBe(10);
      const collected = (await store.collectBlobs(blobs)).deleted + (await kept.collectBlobs(blobs)).deleted;

      // Assert: the compacted records' blobs went; the full record's stays; the keys still answer
      expect(collected).toBe(10);
      expect(await blobFiles(directory)).toBe(1);
      const again = await store.begin({
        key: keys[0] as string,
        fingerprint: 'fp',
        owner: 'w2',
        leaseMs: 1_000,
      });
      expect(again).toMatchObject({ status: 'duplicate', record: { compacted: true } });
    } finally {
      await f.close();
    }
  }, 60_000);
});
