/**
 * collectOrphanBlobs: a blob is deleted only when its run's key is final (COMPLETED, FAILED) and
 * its record does not name it; every other blob is kept. The killed run is what a SIGKILL leaves:
 * its key begun under a lease and its blob stored, nothing completed (test/large-result runs the
 * same with a process killed for real).
 */
import { mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createFsBlobStore, type FsBlobStore } from '../src/blob/fs-blob-store.js';
import { collectOrphanBlobs } from '../src/blob/orphans.js';
import type { BlobPointer } from '../src/blob/types.js';
import type { HandlerContext } from '../src/context.js';
import { Headers } from '../src/headers.js';
import { fingerprint, scopeKey } from '../src/keys.js';
import { createProcessor } from '../src/processor.js';
import { createMemoryStore, type MemoryStore } from '../src/store/memory-store.js';
import { delivery } from './helpers.js';

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function setup() {
  const directory = await mkdtemp(join(tmpdir(), 'eo-orphans-'));
  dirs.push(directory);
  let now = Date.now();
  const store = createMemoryStore({ now: () => now });
  return {
    directory,
    blobs: createFsBlobStore({ directory }),
    store,
    /** Moves the store's clock: leases run out. */
    pass: (ms: number) => {
      now += ms;
    },
  };
}

/** What a worker SIGKILLed after its blob's put leaves: the key begun, the blob owned, no complete. */
async function killedRun(store: MemoryStore, blobs: FsBlobStore, storeKey: string): Promise<BlobPointer> {
  const begun = await store.begin({
    key: storeKey,
    fingerprint: fingerprint({}),
    owner: 'dead',
    leaseMs: 1_000,
  });
  expect(begun.status).toBe('acquired');
  return blobs.put(new TextEncoder().encode(`left by a dead run of ${storeKey}`), { owner: storeKey });
}

async function uris(blobs: FsBlobStore): Promise<string[]> {
  const out: string[] = [];
  for await (const blob of blobs.list()) out.push(blob.uri);
  return out.sort();
}

const collect = (store: MemoryStore, blobs: FsBlobStore) =>
  collectOrphanBlobs({ store, blobs, olderThanMs: 0 });

describe('collectOrphanBlobs', () => {
  it('deletes the blob of a run that died before complete once the key completed without it; keeps the result blob, which still answers duplicates', async () => {
    const { blobs, store, pass } = await setup();
    const consumer = 'orphans';
    const p = createProcessor({
      consumer,
      store,
      blobs,
      inlineResultBytes: 16,
      retentionCheck: 'off',
      handler: (payload: { n: number }) => ({ report: 'x'.repeat(100), n: payload.n }),
    });
    // A key completed before: its result blob stays throughout.
    expect(await p.process(delivery({}, { [Headers.IdempotencyKey]: 'k0' }))).toMatchObject({
      action: 'ack',
    });
    expect(await uris(blobs)).toHaveLength(1);

    const storeKey = scopeKey('default', consumer, 'k1');
    const dead = await killedRun(store, blobs, storeKey);
    expect(await collect(store, blobs)).toEqual({ examined: 2, deleted: 0, abandonedUploads: 0 }); // IN_PROGRESS: kept
    pass(2_000); // the dead run's lease ran out
    const taken = await p.process(delivery({}, { [Headers.IdempotencyKey]: 'k1' }));
    expect(taken).toMatchObject({ action: 'ack', outcome: 'takeover' });
    expect(await collectOrphanBlobs({ store, blobs, olderThanMs: 0, dryRun: true })).toEqual({
      examined: 3,
      deleted: 1,
    });
    expect(await uris(blobs)).toContain(dead.uri); // a dry run deletes nothing

    expect(await collect(store, blobs)).toEqual({ examined: 3, deleted: 1, abandonedUploads: 0 });
    const left = await uris(blobs);
    expect(left).not.toContain(dead.uri);
    expect(left).toHaveLength(2);
    const again = await p.process(delivery({}, { [Headers.IdempotencyKey]: 'k1' }));
    expect(again).toMatchObject({ action: 'ack', outcome: 'duplicate', result: { kind: 'blob' } });
    const pointer = (again as { result: { pointer: BlobPointer } }).result.pointer;
    expect(JSON.parse(new TextDecoder().decode(await blobs.get(pointer)))).toMatchObject({
      report: 'x'.repeat(100),
    });
    expect(await collect(store, blobs)).toEqual({ examined: 2, deleted: 0, abandonedUploads: 0 });
  });

  it('keeps what a final record names inside its result or outgoing messages, and what it cannot judge', async () => {
    const { blobs, store } = await setup();
    const consumer = 'named';
    const stored: Record<string, BlobPointer> = {};
    const p = createProcessor({
      consumer,
      store,
      blobs,
      inlineResultBytes: 4_096,
      retentionCheck: 'off',
      publisher: { publish: async () => undefined },
      handler: async (payload: { as: string }, ctx: HandlerContext) => {
        const pointer = await ctx.storeBlob(new TextEncoder().encode(`attachment for ${payload.as}`));
        stored[payload.as] = pointer;
        if (payload.as === 'inline') return { attachment: pointer };
        if (payload.as === 'blob') return { attachment: pointer, padding: 'p'.repeat(8_192) };
        if (payload.as === 'outgoing') ctx.publish('mail', { attachment: pointer });
        return { done: true }; // 'unnamed': stored, then not kept anywhere
      },
    });
    for (const as of ['inline', 'blob', 'outgoing', 'unnamed']) {
      expect(await p.process(delivery({ as }, { [Headers.IdempotencyKey]: as }))).toMatchObject({
        action: 'ack',
      });
    }
    const noOwner = await blobs.put(new TextEncoder().encode('put by hand, no owner'));
    const otherStore = await blobs.put(new TextEncoder().encode('a key this store does not hold'), {
      owner: scopeKey('default', 'elsewhere', 'k'),
    });

    // Too young for the default hour: nothing is even looked at.
    expect(await collectOrphanBlobs({ store, blobs })).toEqual({
      examined: 0,
      deleted: 0,
      abandonedUploads: 0,
    });
    const before = await uris(blobs);
    expect(await collect(store, blobs)).toMatchObject({ deleted: 1 });
    expect(await uris(blobs)).toEqual(before.filter((uri) => uri !== stored.unnamed?.uri));
    for (const kept of [stored.inline, stored.blob, stored.outgoing, noOwner, otherStore]) {
      expect(await uris(blobs)).toContain(kept?.uri);
    }
  });

  it('with whenRecordGone: delete, also the blobs of keys whose records are gone (a ctx.storeBlob pointer inside an expired result)', async () => {
    const { blobs, store, pass } = await setup();
    const p = createProcessor({
      consumer: 'gone',
      store,
      blobs,
      retentionMs: 60_000,
      retentionCheck: 'off',
      handler: async (_: unknown, ctx: HandlerContext) => ({
        attachment: await ctx.storeBlob(new Uint8Array(8)),
      }),
    });
    expect(await p.process(delivery({}, { [Headers.IdempotencyKey]: 'k' }))).toMatchObject({ action: 'ack' });
    expect(await collect(store, blobs)).toEqual({ examined: 1, deleted: 0, abandonedUploads: 0 }); // named by its result
    pass(61_000); // the record expired
    expect(await collect(store, blobs)).toEqual({ examined: 1, deleted: 0, abandonedUploads: 0 }); // kept by default
    expect(await collectOrphanBlobs({ store, blobs, olderThanMs: 0, whenRecordGone: 'delete' })).toEqual({
      examined: 1,
      deleted: 1,
      abandonedUploads: 0,
    });
    expect(await uris(blobs)).toEqual([]);
  });

  it('deletes the blob of a run whose key then FAILED', async () => {
    const { blobs, store } = await setup();
    const storeKey = scopeKey('default', 'failing', 'k');
    const begun = await store.begin({ key: storeKey, fingerprint: 'fp', owner: 'w', leaseMs: 10_000 });
    if (begun.status !== 'acquired') throw new Error(begun.status);
    const pointer = await blobs.put(new TextEncoder().encode('of a failed run'), { owner: storeKey });
    const error = { name: 'Error', message: 'no', code: 'HANDLER_FAILED', retryable: false };
    expect(await store.fail(storeKey, begun.fence, error, 60_000)).toBe('ok');
    expect(await collect(store, blobs)).toEqual({ examined: 1, deleted: 1, abandonedUploads: 0 });
    expect(await uris(blobs)).not.toContain(pointer.uri);
  });

  it('then removes the partial files of puts killed midway, once untouched for abandonedAfterMs; a dry run leaves them', async () => {
    // Before: only a later put removed them (at most hourly), so a store that stopped storing
    // blobs kept them for ever, and no pass reported them.
    const { directory, store } = await setup();
    const blobs = createFsBlobStore({ directory, abandonedAfterMs: 60_000 });
    const old = join(directory, '.tmp-killed');
    const fresh = join(directory, '.tmp-under-way');
    await writeFile(old, 'half a blob');
    await writeFile(fresh, 'a put still writing');
    const twoMinutesAgo = new Date(Date.now() - 120_000);
    await utimes(old, twoMinutesAgo, twoMinutesAgo);
    expect(await collectOrphanBlobs({ store, blobs, dryRun: true })).toEqual({ examined: 0, deleted: 0 });
    expect(await collectOrphanBlobs({ store, blobs })).toEqual({
      examined: 0,
      deleted: 0,
      abandonedUploads: 1,
    });
    expect(await readdir(directory)).toEqual(['.tmp-under-way']);
  });
});
