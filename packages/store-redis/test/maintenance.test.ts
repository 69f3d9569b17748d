import { type BlobPointer, type BlobStore, ConfigError } from '@exactly-once/core';
import { afterEach, describe, expect, it } from 'vitest';
import type { MaintenancePass, RedisProcessedStore } from '../src/index.js';
import { blobFiles, blobFixture, standalone } from './helpers.js';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setUp(options: { compactAfterMs?: number } = {}) {
  const f = await blobFixture(standalone, 'maint');
  cleanups.push(() => f.close());
  return { ...f, make: () => f.store({ expiredGraceMs: 0, ...options }) };
}

async function complete(
  store: RedisProcessedStore,
  key: string,
  retentionMs: number,
  result?: { kind: 'blob'; pointer: BlobPointer },
) {
  const begun = await store.begin({ key, fingerprint: 'fp', owner: 'w', leaseMs: 30_000 });
  if (begun.status !== 'acquired') throw new Error(`expected acquired, got ${begun.status}`);
  const done = await store.complete({
    key,
    fence: begun.fence,
    outgoing: [],
    retentionMs,
    ...(result ? { result } : {}),
  });
  expect(done).toBe('ok');
}

/** Resolves with the next `count` turns this worker's maintenance reports. */
function turns(count: number): { onPass: (pass: MaintenancePass) => void; seen: Promise<MaintenancePass[]> } {
  const passes: MaintenancePass[] = [];
  let done: (passes: MaintenancePass[]) => void = () => {};
  const seen = new Promise<MaintenancePass[]>((resolve) => {
    done = resolve;
  });
  return {
    onPass: (pass) => {
      passes.push(pass);
      if (passes.length === count) done([...passes]);
    },
    seen,
  };
}

describe('startMaintenance', () => {
  it('compacts old records and collects the blobs of expired ones in the background', async () => {
    // Prepare: records to compact (completed, retention 1 h) and blob results whose records expire at once
    const { blobs, directory, make } = await setUp({ compactAfterMs: 0 });
    const store = make();
    for (let i = 0; i < 20; i++) await complete(store, `kept-${i}`, 3_600_000);
    for (let i = 0; i < 10; i++) {
      const pointer = await blobs.put(Buffer.from(`result ${i}`));
      await complete(store, `expiring-${i}`, 1, { kind: 'blob', pointer });
    }
    expect(await blobFiles(directory)).toBe(10);

    // Act
    const { onPass, seen } = turns(1);
    store.startMaintenance({ everyMs: 20, blobs, onPass });
    const [pass] = await seen;

    // Assert: the turn ran both parts; the records answer as compacted, the blobs are gone
    expect(pass).toMatchObject({ ran: true, compaction: { compacted: 20 }, blobs: { deleted: 10 } });
    expect(pass?.ran && pass.durationMs).toBeGreaterThanOrEqual(0);
    const again = await store.begin({ key: 'kept-3', fingerprint: 'fp', owner: 'w2', leaseMs: 30_000 });
    expect(again).toMatchObject({ status: 'duplicate', record: { compacted: true } });
    expect(await blobFiles(directory)).toBe(0);
  });

  it('with orphanBlobs, also deletes the blob of a run that died before complete once its key completed without it', async () => {
    const { blobs, directory, make } = await setUp();
    const store = make();
    // A dead run: its key begun, its blob stored under the key, then a takeover completed the key.
    const dead = await store.begin({ key: 'o-1', fingerprint: 'fp', owner: 'dead', leaseMs: 1 });
    if (dead.status !== 'acquired') throw new Error(dead.status);
    const orphan = await blobs.put(Buffer.from('left by the dead run'), { owner: 'o-1' });
    await new Promise((r) => setTimeout(r, 20));
    const taken = await store.begin({ key: 'o-1', fingerprint: 'fp', owner: 'w', leaseMs: 30_000 });
    if (taken.status !== 'acquired') throw new Error(taken.status);
    const named = await blobs.put(Buffer.from('the result'), { owner: 'o-1' });
    const result = { kind: 'blob', pointer: named } as const;
    expect(
      await store.complete({ key: 'o-1', fence: taken.fence, result, outgoing: [], retentionMs: 3_600_000 }),
    ).toBe('ok');

    const { onPass, seen } = turns(1);
    store.startMaintenance({ everyMs: 20, blobs, onPass, orphanBlobs: { olderThanMs: 0 } });
    const [pass] = await seen;
    expect(pass).toMatchObject({
      ran: true,
      blobs: { deleted: 0 },
      orphanBlobs: { examined: 2, deleted: 1 },
    });
    await expect(blobs.get(orphan)).rejects.toThrow();
    expect((await blobs.get(named)).byteLength).toBeGreaterThan(0);
    expect(await blobFiles(directory)).toBe(2); // the result and its owner file
  });

  it('workers take turns: while another worker holds the interval, a worker skips its pass', async () => {
    // Prepare: another worker took this interval's turn
    const { client, prefix, blobs, make } = await setUp();
    await client.set(`${prefix}:maintenance`, 'another-worker', 'PX', 60_000);
    const store = make();

    // Act
    const { onPass, seen } = turns(3);
    store.startMaintenance({ everyMs: 10, blobs, onPass });

    // Assert
    expect(await seen).toEqual([{ ran: false }, { ran: false }, { ran: false }]);
  });

  it('a worker asks for its first turn at once, so one restarted more often than everyMs still runs passes', async () => {
    // An outside test: a sweeper killed every few seconds, with a longer everyMs, never ran a pass.
    const { blobs, make } = await setUp();
    const { onPass, seen } = turns(1);
    const stop = make().startMaintenance({ everyMs: 3_600_000, blobs, onPass });
    const [pass] = await seen;
    stop();
    expect(pass).toMatchObject({ ran: true });
  });

  it('one of two workers runs each interval', async () => {
    // Prepare: two workers of one deployment, whose first turns come at the same moment
    const { blobs, make } = await setUp();
    const first = turns(1);
    const second = turns(1);

    // Act
    make().startMaintenance({ everyMs: 300, blobs, onPass: first.onPass });
    make().startMaintenance({ everyMs: 300, blobs, onPass: second.onPass });
    const passes = [...(await first.seen), ...(await second.seen)];

    // Assert
    expect(passes.filter((p) => p.ran)).toHaveLength(1);
  });

  it('close() stops maintenance and waits for the pass under way', async () => {
    // Prepare: a blob store whose deletes are slow, so close() comes during a pass
    const { blobs, make } = await setUp();
    const store = make();
    const pointer = await blobs.put(Buffer.from('slow'));
    await complete(store, 'slow-blob', 1, { kind: 'blob', pointer });
    let deleting: (() => void) | undefined;
    const started = new Promise<void>((resolve) => {
      deleting = resolve;
    });
    let deleted = false;
    const slowBlobs: BlobStore = {
      put: (source) => blobs.put(source),
      stream: (p) => blobs.stream(p),
      get: (p) => blobs.get(p),
      delete: async (p) => {
        deleting?.();
        await new Promise((resolve) => setTimeout(resolve, 200));
        await blobs.delete(p);
        deleted = true;
      },
    };
    const passes: MaintenancePass[] = [];
    store.startMaintenance({ everyMs: 10, blobs: slowBlobs, onPass: (p) => passes.push(p) });
    await started;

    // Act
    await store.close();

    // Assert: the pass finished before close() returned, and no pass ran after it
    expect(deleted).toBe(true);
    const after = passes.length;
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(passes.length).toBe(after);
  });

  it('a pass that fails is reported and the next interval runs anyway', async () => {
    // Prepare: a blob store that fails its first delete
    const { blobs, make } = await setUp();
    const store = make();
    for (let i = 0; i < 2; i++) {
      await complete(store, `b-${i}`, 1, { kind: 'blob', pointer: await blobs.put(Buffer.from(`r${i}`)) });
    }
    let failures = 0;
    const flaky: BlobStore = {
      put: (source) => blobs.put(source),
      stream: (p) => blobs.stream(p),
      get: (p) => blobs.get(p),
      delete: async (p) => {
        if (failures++ === 0) throw new Error('blob store down');
        await blobs.delete(p);
      },
    };
    const errors: unknown[] = [];
    const { onPass, seen } = turns(2);

    // Act: the turn key lasts one interval, so each turn of this lone worker runs
    store.startMaintenance({ everyMs: 10, blobs: flaky, onPass, onError: (e) => errors.push(e) });
    const passes = await seen;

    // Assert
    expect(errors).toHaveLength(1);
    expect(passes[1]).toMatchObject({ ran: true });
  });

  it('refuses an interval <= 0, and a store with nothing to maintain', async () => {
    const { blobs, make } = await setUp();
    const store = make();
    expect(() => store.startMaintenance({ everyMs: 0, blobs })).toThrow(ConfigError);
    expect(() => store.startMaintenance({ everyMs: 1000 })).toThrow(/nothing to do/);
    expect(() => store.startMaintenance({ everyMs: 1000, orphanBlobs: {} })).toThrow(
      /orphanBlobs needs blobs/,
    );
  });
});
