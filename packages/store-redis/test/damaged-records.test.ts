/**
 * Values at a record's name that the store did not write (another type, bytes it cannot decode, a
 * hash that is not the previous layout): each is refused as a CorruptRecordError for its own key,
 * on a standalone server and on a Cluster, and never read as "no record" (which would run a
 * processed key again) nor fails the other keys of its batch (whose leases it would strand).
 */
import { randomUUID } from 'node:crypto';
import { CorruptRecordError, ErrorCode, PartialBatchError } from '@exactly-once/core';
import type { Cluster, Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRedisStore } from '../src/index.js';
import { fingerprintClaimKey, keysFor } from '../src/layout.js';
import { cluster, dropPrefix, standalone, testPrefix } from './helpers.js';

const leaseMs = 30_000;
const fingerprint = 'a'.repeat(64);

/** Ways a record's name gets something else written at it. */
const damages: Record<string, (client: Redis | Cluster, name: Buffer) => Promise<unknown>> = {
  'a string of other bytes': (c, name) => c.set(name, 'garbage'),
  'a record cut short': (c, name) => c.set(name, Buffer.from('C\x00\x00')),
  'a list': (c, name) => c.rpush(name, 'a'),
  'a set': (c, name) => c.sadd(name, 'a'),
  'a hash that is not a record': (c, name) => c.hset(name, 'foo', 'bar'),
};

describe.each([
  ['standalone', standalone],
  ['cluster', cluster],
] as const)('damaged records (%s)', (_, connect) => {
  let client: Redis | Cluster;
  const keyPrefix = testPrefix('damaged');
  beforeAll(() => {
    client = connect();
  });
  afterAll(async () => {
    await dropPrefix(client, keyPrefix);
    await client.quit();
  });

  /** A completed key, then damaged as `damage` says. */
  async function damagedKey(damage: keyof typeof damages): Promise<string> {
    const store = createRedisStore({ client, keyPrefix });
    const key = `damaged:${randomUUID()}`;
    const begun = await store.begin({ key, fingerprint, owner: 'w', leaseMs });
    if (begun.status !== 'acquired') throw new Error('not acquired');
    expect(await store.complete({ key, fence: begun.fence, outgoing: [], retentionMs: 60_000 })).toBe('ok');
    const name = keysFor(keyPrefix, key).record;
    await client.del(name);
    await damages[damage]?.(client, name);
    return key;
  }

  it.each(Object.keys(damages))(
    '%s: refused for that key alone in a batch; the others are begun',
    async (damage) => {
      const store = createRedisStore({ client, keyPrefix });
      const bad = await damagedKey(damage);
      const good = [`good:${randomUUID()}`, `good:${randomUUID()}`];
      const requests = [good[0], bad, good[1]].map((key) => ({
        key: key as string,
        fingerprint,
        owner: 'w',
        leaseMs,
      }));
      const error = await store.beginMany?.(requests).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(PartialBatchError);
      const partial = error as PartialBatchError;
      expect([...partial.errors.keys()]).toEqual([1]);
      const refused = partial.errors.get(1);
      expect(refused).toBeInstanceOf(CorruptRecordError);
      expect(refused).toMatchObject({ code: ErrorCode.CorruptRecord, key: bad, retryable: false });
      expect(partial.answers[0]).toMatchObject({ status: 'acquired', kind: 'new' });
      expect(partial.answers[2]).toMatchObject({ status: 'acquired', kind: 'new' });

      // Alone, through every call that reads it: refused, never "no record"; fenced writes lose.
      await expect(store.begin({ key: bad, fingerprint, owner: 'w', leaseMs })).rejects.toMatchObject({
        code: ErrorCode.CorruptRecord,
        key: bad,
        // What the batch answer says, without where Redis raised it.
        detail: (refused as CorruptRecordError).detail,
      });
      await expect(store.get(bad)).rejects.toBeInstanceOf(CorruptRecordError);
      await expect(
        store.beginMany?.([{ key: bad, fingerprint, owner: 'w', leaseMs }]),
      ).rejects.toBeInstanceOf(CorruptRecordError);
      expect(await store.extend(bad, 1, leaseMs)).toBe('lost');
      expect(await store.complete({ key: bad, fence: 1, outgoing: [], retentionMs: 60_000 })).toBe('lost');
      // Nothing was written over it: an operator finds it as it was.
      expect(await client.type(keysFor(keyPrefix, bad).record)).not.toBe('none');
    },
  );

  it('a field that does not decode (an error that is not the JSON the store writes): that key refused, the batch begun', async () => {
    // Before: a plain SyntaxError failed the whole batch as an outage, and the leases the script
    // had written for the other keys were held by nobody.
    const store = createRedisStore({ client, keyPrefix });
    const failed = `undecodable:${randomUUID()}`;
    const begun = await store.begin({ key: failed, fingerprint, owner: 'w', leaseMs });
    if (begun.status !== 'acquired') throw new Error('not acquired');
    await store.fail(failed, begun.fence, { name: 'E', code: 'C', message: 'm' }, 60_000);
    await client.hset(Buffer.concat([keysFor(keyPrefix, failed).record, Buffer.from('x')]), 'e', 'not json');
    const good = [`good:${randomUUID()}`, `good:${randomUUID()}`];
    const error = await store
      .beginMany?.(
        [good[0], failed, good[1]].map((key) => ({ key: key as string, fingerprint, owner: 'w', leaseMs })),
      )
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(error).toBeInstanceOf(PartialBatchError);
    expect((error as PartialBatchError).errors.get(1)).toMatchObject({
      code: ErrorCode.CorruptRecord,
      key: failed,
    });
    expect((error as PartialBatchError).answers[0]).toMatchObject({ status: 'acquired' });
    expect((error as PartialBatchError).answers[2]).toMatchObject({ status: 'acquired' });
    await expect(store.begin({ key: failed, fingerprint, owner: 'w', leaseMs })).rejects.toBeInstanceOf(
      CorruptRecordError,
    );
    await expect(store.get(failed)).rejects.toBeInstanceOf(CorruptRecordError);
  });

  it('a record of the previous layout whose extras name holds another type is refused and kept, never deleted', async () => {
    // Before: the conversion deleted the record before its extras write failed (a script is not
    // rolled back), and the next begin took the processed key as new.
    const store = createRedisStore({ client, keyPrefix });
    const key = `legacy:${randomUUID()}`;
    const name = keysFor(keyPrefix, key).record;
    const time = Number((await client.time())[0]) * 1000;
    await client.hset(name, {
      s: 'C',
      n: '5',
      a: '1',
      f: 'fp',
      c: String(time),
      x: String(time + 3_600_000),
      e: '["E","C","m"]',
    });
    await client.pexpireat(name, time + 3_700_000);
    await client.set(Buffer.concat([name, Buffer.from('x')]), 'garbage');
    for (let i = 0; i < 2; i++) {
      await expect(store.begin({ key, fingerprint, owner: 'w', leaseMs })).rejects.toBeInstanceOf(
        CorruptRecordError,
      );
    }
    expect(await client.type(name)).toBe('hash');
  });

  it("listInProgress (the CLI's stuck) skips damaged values and lists the work in progress beside them", async () => {
    const store = createRedisStore({ client, keyPrefix });
    for (const damage of Object.keys(damages)) await damagedKey(damage);
    await client.set(keysFor(keyPrefix, `listed:${randomUUID()}`).record, Buffer.from('I garbage'));
    const held = `listed:${randomUUID()}`;
    expect(await store.begin({ key: held, fingerprint, owner: 'w', leaseMs })).toMatchObject({
      status: 'acquired',
    });
    const listed = await store.listInProgress?.({ olderThanMs: 0, limit: 100, prefix: 'listed:' });
    expect(listed?.map((e) => e.key)).toEqual([held]);
  });

  it("damage at a record's other keys: a damaged extras hash refuses the key, a damaged marker bucket the keys of its slot (nothing left behind), a damaged index is let go", async () => {
    const store = createRedisStore({ client, keyPrefix, indexBlobs: true, compactAfterMs: 1 });
    // Extras (steps, outgoing): the holder's step writes lose, then the key is refused.
    const stepped = `extras:${randomUUID()}`;
    const held = await store.begin({ key: stepped, fingerprint, owner: 'w', leaseMs });
    if (held.status !== 'acquired') throw new Error('not acquired');
    expect(await store.saveStep(stepped, held.fence, 'charge', Uint8Array.of(1))).toBe('ok');
    const extras = Buffer.concat([keysFor(keyPrefix, stepped).record, Buffer.from('x')]);
    await client.del(extras);
    await client.set(extras, 'garbage');
    expect(await store.saveStep(stepped, held.fence, 'email', Uint8Array.of(2))).toBe('lost');
    await expect(store.get(stepped)).rejects.toMatchObject({ code: ErrorCode.CorruptRecord, key: stepped });

    // A marker bucket: its keys are refused one by one, the others of the batch begun; the record
    // the refused begin wrote is gone again (no later copy can take it over and run).
    const inSlot = `bucket:${randomUUID()}`;
    const beside = `bucket:${randomUUID()}`;
    await client.rpush(keysFor(keyPrefix, inSlot).markers, 'not a bucket');
    const error = await store
      .beginMany?.([inSlot, beside].map((key) => ({ key, fingerprint, owner: 'w', leaseMs })))
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect((error as PartialBatchError).errors.get(0)).toMatchObject({
      code: ErrorCode.CorruptRecord,
      key: inSlot,
    });
    expect((error as PartialBatchError).answers[1]).toMatchObject({ status: 'acquired' });
    expect(await client.type(keysFor(keyPrefix, inSlot).record)).toBe('none');

    // The blob and completion indexes: the completion lands all the same (the record unindexed).
    const indexed = `index:${randomUUID()}`;
    const begun = await store.begin({ key: indexed, fingerprint, owner: 'w', leaseMs });
    if (begun.status !== 'acquired') throw new Error('not acquired');
    await client.set(keysFor(keyPrefix, indexed).blobs, 'garbage');
    await client.set(keysFor(keyPrefix, indexed).index, 'garbage');
    const pointer = { uri: 'fs:b-1', size: 1, sha256: 'a'.repeat(64) };
    expect(
      await store.complete({
        key: indexed,
        fence: begun.fence,
        result: { kind: 'blob', pointer },
        outgoing: [],
        retentionMs: 60_000,
      }),
    ).toBe('ok');
    expect(await store.get(indexed)).toMatchObject({ state: 'COMPLETED', result: { kind: 'blob', pointer } });
  });

  it('a marker bucket cut short refuses the keys of its slot; a compaction or blob collection pass skips what is damaged and goes on', async () => {
    const store = createRedisStore({ client, keyPrefix, compactAfterMs: 1, indexBlobs: true });
    const complete = async (
      key: string,
      result?: { kind: 'blob'; pointer: { uri: string; size: number; sha256: string } },
    ) => {
      const begun = await store.begin({ key, fingerprint, owner: 'w', leaseMs });
      if (begun.status !== 'acquired') throw new Error('not acquired');
      await store.complete({
        key,
        fence: begun.fence,
        outgoing: [],
        retentionMs: 60_000,
        ...(result ? { result } : {}),
      });
    };
    // Compacted, then its slot's bucket cut by a byte: before, the key read as new and ran again.
    const compacted = `compacted:${randomUUID()}`;
    await complete(compacted);
    await new Promise((resolve) => setTimeout(resolve, 5));
    expect((await store.compactCompleted()).compacted).toBeGreaterThanOrEqual(1);
    const bucket = keysFor(keyPrefix, compacted).markers;
    const bytes = await client.getBuffer(bucket);
    await client.set(bucket, (bytes as Buffer).subarray(0, (bytes as Buffer).length - 1));
    await expect(store.begin({ key: compacted, fingerprint, owner: 'w', leaseMs })).rejects.toMatchObject({
      code: ErrorCode.CorruptRecord,
    });

    // A damaged record and a damaged completion index beside healthy ones: the pass goes on. Keys
    // of the slot whose bucket was cut are refused (above): none is taken here.
    const keys: string[] = [];
    while (keys.length < 20) {
      const key = `pass:${randomUUID()}`;
      if (!keysFor(keyPrefix, key).markers.equals(bucket)) keys.push(key);
    }
    for (const key of keys)
      await complete(key, { kind: 'blob', pointer: { uri: `fs:${key}`, size: 1, sha256: 'a'.repeat(64) } });
    await client.set(keysFor(keyPrefix, keys[0] as string).record, 'garbage');
    await client.del(keysFor(keyPrefix, keys[1] as string).index);
    await client.hset(keysFor(keyPrefix, keys[1] as string).index, 'not', 'an index');
    await client.del(keysFor(keyPrefix, keys[2] as string).blobs);
    await client.hset(keysFor(keyPrefix, keys[2] as string).blobs, 'not', 'an index');
    await new Promise((resolve) => setTimeout(resolve, 5));
    const stats = await store.compactCompleted();
    expect(stats.damaged).toBeGreaterThanOrEqual(1);
    expect(stats.compacted).toBeGreaterThanOrEqual(15);
    const blobs = { delete: async () => true } as unknown as Parameters<typeof store.collectBlobs>[0];
    const collected = await store.collectBlobs(blobs);
    expect(collected.damaged).toBeGreaterThanOrEqual(1);
  });

  it('a damaged payload-guard claim is refused for its key, not taken for an outage', async () => {
    const store = createRedisStore({ client, keyPrefix });
    const claim = fingerprintClaimKey(keyPrefix, 'default:c', fingerprint);
    await client.hset(claim, 'not', 'a claim');
    await expect(store.claimFingerprint?.('default:c', fingerprint, 'k-1', 60_000)).rejects.toMatchObject({
      code: ErrorCode.CorruptRecord,
      key: 'k-1',
    });
    await client.del(claim);
  });

  it('a record damaged while its run holds it: the completion is lost, the batch beside it completes', async () => {
    const store = createRedisStore({ client, keyPrefix });
    const keys = [`held:${randomUUID()}`, `held:${randomUUID()}`];
    const fences: number[] = [];
    for (const key of keys) {
      const begun = await store.begin({ key, fingerprint, owner: 'w', leaseMs });
      if (begun.status !== 'acquired') throw new Error('not acquired');
      fences.push(begun.fence);
    }
    await client.set(keysFor(keyPrefix, keys[0] as string).record, 'garbage');
    const completed = await store.completeMany?.(
      keys.map((key, i) => ({ key, fence: fences[i] as number, outgoing: [], retentionMs: 60_000 })),
    );
    expect(completed).toEqual(['lost', 'ok']);
  });
});
