/**
 * The processed-store conformance kit: one vitest suite that every {@link ProcessedStore} (and,
 * optionally, its {@link BlobStore}) must pass against its real server.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BlobPointer, BlobStore } from '../blob/types.js';
import { ErrorCode, type ErrorInfo } from '../errors.js';
import type { BeginRequest, CompleteRequest, OutgoingMessage, ProcessedStore } from '../store/types.js';
import { batchConformanceTests } from './batch-conformance.js';
import {
  allBytes,
  bytes,
  expectNow,
  expectStatus,
  HOSTILE_KEYS,
  inline,
  inlineData,
  inState,
  lost,
  message,
  ok,
  plain,
  sleep,
} from './conformance-helpers.js';

/** What a conformance run exercises. */
export interface StoreUnderTest {
  readonly store: ProcessedStore;
  /**
   * The blob store shipped with the processed-store, if any: blob-result pointers are then real.
   * Run {@link describeBlobStoreConformance} for the blob store's own suite.
   */
  readonly blobs?: BlobStore;
  /** Runs once after the suite; without it, `store.close()` is called. */
  readonly teardown?: () => Promise<void>;
}

export interface ConformanceOptions {
  /** Lease used throughout; tests wait for it to pass, so keep it short. Default 300 ms. */
  readonly leaseMs?: number;
  /** Simultaneous `begin` calls racing for one key. Default 16. */
  readonly concurrency?: number;
  /**
   * Run the races on an existing record (takeovers of a passed lease; a stale `complete` against
   * takeovers). Default true. Only turn it off for a test server known not to make conditional
   * updates atomic, and say so where you do: a store that fails them is not safe.
   */
  readonly existingRecordRaces?: boolean;
}

/**
 * Declares a vitest suite that checks a processed-store against the {@link ProcessedStore}
 * contract. Call it at the top level of a test file:
 *
 * ```ts
 * import { describeStoreConformance } from '@exactly-once/core/testing';
 *
 * describeStoreConformance('redis', async () => {
 *   const client = new Redis(process.env.REDIS_URL);
 *   return { store: createRedisStore({ client }), teardown: async () => void (await client.quit()) };
 * });
 * ```
 *
 * It proves the properties the pipeline's exactly-once argument rests on: one winner among
 * racing `begin`s, fencing (a stale holder can change nothing), takeover after lease expiry,
 * retry after release, fingerprint mismatch in every state, durable results and outgoing
 * messages, step journaling, logical expiry, verbatim and isolated keys (`*`, `{`, `$gt`, NUL,
 * 10 KiB...), exact bytes, and deadlines in epoch milliseconds; with `blobs`, verified blob
 * round trips and corruption detection. It leaves open what the contract leaves open, e.g.
 * whether a holder whose lease passed, but whom nobody took over, may still complete.
 *
 * Run it against the real server (not a mock): atomicity, key escaping and server clocks are
 * what it checks. Each test writes under a fresh random key prefix, so runs can share a database;
 * records are not cleaned up, so point it at a disposable one. It sleeps for a few leases in all.
 */
export function describeStoreConformance(
  name: string,
  setup: () => Promise<StoreUnderTest> | StoreUnderTest,
  options: ConformanceOptions = {},
): void {
  const leaseMs = options.leaseMs ?? 300;
  const concurrency = options.concurrency ?? 16;
  // Long enough for a lease (or a short retention) to have passed on the store's clock too.
  const pastLease = leaseMs + Math.max(100, Math.ceil(leaseMs / 2));
  const shortRetentionMs = 200;
  /** Lease of racers that must not see one another's lease pass, however slow the machine. */
  const raceLeaseMs = 60_000;
  const pastRetention = shortRetentionMs + 200;
  const retentionMs = 600_000;
  const boom: ErrorInfo = { name: 'Error', code: 'ERROR', message: 'boom: retryable' };
  const fatal: ErrorInfo = { name: 'PermanentError', code: ErrorCode.Permanent, message: 'bad order' };

  describe(`ProcessedStore conformance: ${name}`, () => {
    let sut: StoreUnderTest | undefined;
    beforeAll(async () => {
      sut = await setup();
    });
    afterAll(async () => {
      if (sut?.teardown) await sut.teardown();
      else await sut?.store.close?.();
    });

    const store = (): ProcessedStore => {
      if (sut === undefined) throw new Error('conformance setup did not run');
      return sut.store;
    };
    const keys = (): ((suffix?: string) => string) => {
      const prefix = `eo-conformance:${randomUUID()}:`;
      return (suffix = 'key') => prefix + suffix;
    };
    const request = (key: string, extra: Partial<BeginRequest> = {}): BeginRequest => ({
      key,
      fingerprint: 'fp-1',
      owner: 'worker-a',
      leaseMs,
      ...extra,
    });
    const acquire = async (key: string, extra: Partial<BeginRequest> = {}) =>
      expectStatus(await store().begin(request(key, extra)), 'acquired');
    const freshKey = (): string => keys()();
    const completeWith = (key: string, fence: number, extra: Partial<CompleteRequest> = {}) =>
      store().complete({ key, fence, outgoing: [], retentionMs, ...extra });

    /** Acquires `count` fresh keys, then waits once for all their leases to pass. */
    const acquireAndLetPass = async (count: number) => {
      const held: [string, Awaited<ReturnType<typeof acquire>>][] = [];
      for (let k = 0; k < count; k++) {
        const key = freshKey();
        held.push([key, await acquire(key)]);
      }
      await sleep(pastLease);
      return held;
    };

    batchConformanceTests(store, leaseMs);

    it('begin on an absent key acquires a new lease: attempt 1, no steps', async () => {
      const key = freshKey();
      const acquired = await acquire(key);
      expect(acquired.kind).toBe('new');
      expect(Number.isSafeInteger(acquired.fence) && acquired.fence >= 1).toBe(true);
      expect(acquired.attempt).toBe(1);
      expect(Object.keys(acquired.steps)).toEqual([]);
    });

    it('a new record starts its fence at store time (ms), so fences never repeat after deletion', async () => {
      const acquired = await acquire(freshKey());
      expect(Math.abs(acquired.fence - Date.now()), `fence ${acquired.fence} is not store time`).toBeLessThan(
        5000,
      );
    });

    it('begin while the lease is live is busy, with 0 < retryAfterMs <= leaseMs', async () => {
      const key = freshKey();
      const acquired = await acquire(key);
      const busy = expectStatus(await store().begin(request(key, { owner: 'worker-b' })), 'busy');
      expect(busy.retryAfterMs).toBeGreaterThan(0);
      expect(busy.retryAfterMs).toBeLessThanOrEqual(leaseMs);
      expect(busy.record).toMatchObject({
        key,
        state: 'IN_PROGRESS',
        fence: acquired.fence,
        owner: 'worker-a',
      });
    });

    it('begin with a different fingerprint is a mismatch in every state', async () => {
      const key = keys();
      const other = { fingerprint: 'fp-2', owner: 'worker-b' };
      await acquire(key('live'));
      const released = await acquire(key('released'));
      await ok(store().release(key('released'), released.fence, boom));
      const completed = await acquire(key('completed'));
      await ok(completeWith(key('completed'), completed.fence));
      const failed = await acquire(key('failed'));
      await ok(store().fail(key('failed'), failed.fence, fatal, retentionMs));
      for (const [suffix, state] of [
        ['live', 'IN_PROGRESS'],
        ['released', 'IN_PROGRESS'],
        ['completed', 'COMPLETED'],
        ['failed', 'FAILED'],
      ] as const) {
        const mismatch = expectStatus(await store().begin(request(key(suffix), other)), 'mismatch');
        expect(mismatch.record).toMatchObject({ key: key(suffix), state, fingerprint: 'fp-1' });
      }
    });

    if (options.existingRecordRaces !== false) {
      it(`${concurrency} racing takeovers of a passed lease: exactly one acquires (5 keys)`, async () => {
        // One wait for all five leases to pass: each key is then raced in turn.
        const held = await acquireAndLetPass(5);
        for (const [key, first] of held) {
          // The racers' own leases are long: on a loaded machine a slow racer could otherwise see
          // the winner's lease pass too, and take over from it, rightly.
          const results = await Promise.all(
            Array.from({ length: concurrency }, (_, i) =>
              store().begin(request(key, { owner: `w${i}`, leaseMs: raceLeaseMs })),
            ),
          );
          const winners = results.filter((r) => r.status === 'acquired');
          expect(winners).toHaveLength(1);
          expect(winners[0]).toMatchObject({ kind: 'takeover', fence: first.fence + 1 });
        }
      });

      it('a stale holder completing while others take over: exactly one of them wins (5 keys)', async () => {
        const held = await acquireAndLetPass(5);
        for (const [key, stale] of held) {
          const [completed, ...begins] = await Promise.all([
            completeWith(key, stale.fence),
            ...Array.from({ length: 8 }, (_, i) =>
              store().begin(request(key, { owner: `w${i}`, leaseMs: raceLeaseMs })),
            ),
          ]);
          const takeovers = begins.filter((r) => r.status === 'acquired').length;
          expect(takeovers + (completed === 'ok' ? 1 : 0)).toBe(1);
          expect((await store().get(key))?.state).toBe(completed === 'ok' ? 'COMPLETED' : 'IN_PROGRESS');
        }
      });
    }

    it(`${concurrency} concurrent begins on one key: exactly one acquires, the rest are busy (20 keys)`, async () => {
      const key = keys();
      for (let k = 0; k < 20; k++) {
        const results = await Promise.all(
          Array.from({ length: concurrency }, (_, i) =>
            store().begin(request(key(`k${k}`), { owner: `w${i}` })),
          ),
        );
        const acquired = results.filter((r) => r.status === 'acquired');
        expect(acquired).toHaveLength(1);
        const busy = results.filter((r) => r.status === 'busy');
        expect(busy).toHaveLength(concurrency - 1);
        for (const r of busy) expect(r.record?.fence).toBe(acquired[0]?.fence);
      }
    });

    it('extend with the holding fence pushes the lease out; with any other fence it is lost', async () => {
      const key = freshKey();
      const acquired = await acquire(key);
      await lost(store().extend(key, acquired.fence + 1, leaseMs));
      await lost(store().extend(key, acquired.fence - 1, leaseMs));
      await ok(store().extend(key, acquired.fence, leaseMs * 3));
      await sleep(pastLease);
      expectStatus(await store().begin(request(key, { owner: 'worker-b' })), 'busy');
    });

    it('after the lease passes, begin takes over: fence + 1, attempt 2, steps kept', async () => {
      const key = freshKey();
      const first = await acquire(key);
      await ok(store().saveStep(key, first.fence, 'charge', bytes([7])));
      await sleep(pastLease);
      const second = await acquire(key, { owner: 'worker-b' });
      expect(second).toMatchObject({ kind: 'takeover', fence: first.fence + 1, attempt: 2 });
      expect(plain(second.steps.charge?.result)).toEqual([7]);
      expect(await store().get(key)).toMatchObject({ state: 'IN_PROGRESS', owner: 'worker-b' });
    });

    it('after a takeover the old fence is lost for every fenced operation and changes nothing', async () => {
      const key = freshKey();
      const first = await acquire(key);
      await sleep(pastLease);
      await acquire(key, { owner: 'worker-b' });
      const before = await store().get(key);
      const stale = first.fence;
      await lost(store().extend(key, stale, leaseMs * 10));
      await lost(store().saveStep(key, stale, 'zombie', bytes([1])));
      await lost(store().release(key, stale, boom));
      await lost(store().fail(key, stale, fatal, retentionMs));
      await lost(completeWith(key, stale));
      expect(await store().get(key)).toEqual(before);
    });

    it('complete keeps result, unpublished outgoing messages, timestamps and trace id; begin is a duplicate', async () => {
      const key = freshKey();
      const acquired = await acquire(key);
      const outgoing = [message('m1'), message('m2')];
      const traceId = 'trace-1-span-1';
      await ok(completeWith(key, acquired.fence, { result: inline([1, 2, 3]), outgoing, traceId }));
      const { record } = expectStatus(await store().begin(request(key, { owner: 'worker-b' })), 'duplicate');
      expect(record).toMatchObject({ key, fingerprint: 'fp-1', state: 'COMPLETED', fence: acquired.fence });
      expect(record.traceId).toBe(traceId);
      expect(inlineData(record)).toEqual([1, 2, 3]);
      expect(record.outgoing.map((m) => `${m.id}:${m.published}`)).toEqual(['m1:false', 'm2:false']);
      expectNow(record.completedAt);
      expect(Math.abs(record.expiresAt - record.completedAt - retentionMs)).toBeLessThanOrEqual(1000);
      expect(await store().get(key)).toEqual(record);
    });

    it('a duplicate answer says how long ago its record completed, on the store clock (begin and beginMany)', async () => {
      const key = freshKey();
      const acquired = await acquire(key);
      await ok(completeWith(key, acquired.fence));
      const first = expectStatus(await store().begin(request(key)), 'duplicate');
      // Optional in the contract: a store that cannot tell leaves it out.
      if (first.completedAgoMs === undefined) return;
      const since = performance.now();
      expect(first.completedAgoMs).toBeGreaterThanOrEqual(0);
      expect(first.completedAgoMs).toBeLessThan(5_000);
      await sleep(pastLease);
      const ask = store().beginMany;
      const [again] = ask ? await ask.call(store(), [request(key)]) : [await store().begin(request(key))];
      const later = expectStatus(again as NonNullable<typeof again>, 'duplicate');
      const slept = performance.now() - since;
      // The store's clock moved as this one did, give or take its granularity.
      expect(later.completedAgoMs).toBeGreaterThanOrEqual(first.completedAgoMs + pastLease - 20);
      expect(later.completedAgoMs).toBeLessThanOrEqual(first.completedAgoMs + slept + 1_000);
    });

    it('a repeated complete under the same fence answers ok and changes nothing; other fences are lost', async () => {
      // The caller of a complete whose answer was lost (a timeout, a dropped connection) asks again.
      const key = freshKey();
      const acquired = await acquire(key);
      await ok(completeWith(key, acquired.fence, { result: inline([1]), outgoing: [message('m1')] }));
      await store().markPublished(key, acquired.fence, ['m1']);
      const before = await store().get(key);
      await ok(completeWith(key, acquired.fence, { result: inline([2]), outgoing: [message('m2')] }));
      expect(await store().get(key)).toEqual(before);
      await lost(completeWith(key, acquired.fence + 1));
      await lost(completeWith(key, acquired.fence - 1));
      expect(await store().get(key)).toEqual(before);
    });

    it('a repeated fail under the same fence answers ok and changes nothing; other fences and a cleared record are lost', async () => {
      const key = freshKey();
      const acquired = await acquire(key);
      await ok(store().fail(key, acquired.fence, fatal, retentionMs));
      const before = await store().get(key);
      await ok(store().fail(key, acquired.fence, fatal, retentionMs));
      expect(await store().get(key)).toEqual(before);
      await lost(store().fail(key, acquired.fence + 1, fatal, retentionMs));
      await lost(store().fail(key, acquired.fence - 1, fatal, retentionMs));
      expect(await store().get(key)).toEqual(before);
      // An operator's clear ended it: not this holder's fail.
      expect(await store().clear(key)).toBe('cleared');
      await lost(store().fail(key, acquired.fence, fatal, retentionMs));
      expect(await store().get(key)).toBeUndefined();
    });

    it('a blob result pointer round-trips exactly', async () => {
      const key = freshKey();
      const pointer: BlobPointer = sut?.blobs
        ? await sut.blobs.put(bytes([1, 2, 3]))
        : { uri: 'conformance:blob/1', size: 123_456, sha256: 'ab'.repeat(32) };
      const acquired = await acquire(key);
      await ok(completeWith(key, acquired.fence, { result: { kind: 'blob', pointer } }));
      const { record } = expectStatus(await store().begin(request(key)), 'duplicate');
      expect(record.result).toEqual({ kind: 'blob', pointer });
    });

    it("a streamed result's blob pointer keeps its raw mark", async () => {
      const key = freshKey();
      const pointer: BlobPointer = { uri: 'conformance:blob/raw', size: 7, sha256: 'cd'.repeat(32) };
      const acquired = await acquire(key);
      await ok(completeWith(key, acquired.fence, { result: { kind: 'blob', pointer, raw: true } }));
      const { record } = expectStatus(await store().begin(request(key)), 'duplicate');
      expect(record.result).toEqual({ kind: 'blob', pointer, raw: true });
    });

    it('markPublished flags only the given ids, is idempotent and ignores unknown ids', async () => {
      const key = freshKey();
      const acquired = await acquire(key);
      const outgoing = [message('a'), message('b'), message('c')];
      await ok(completeWith(key, acquired.fence, { outgoing }));
      const flags = async () =>
        inState(await store().get(key), 'COMPLETED').outgoing.map((m) => `${m.id}:${m.published}`);
      await store().markPublished(key, acquired.fence, ['a', 'c', 'unknown']);
      expect(await flags()).toEqual(['a:true', 'b:false', 'c:true']);
      await store().markPublished(key, acquired.fence, ['a']);
      await store().markPublished(key, acquired.fence, []);
      expect(await flags()).toEqual(['a:true', 'b:false', 'c:true']);
    });

    it('markPublished with another fence than the completing one flags nothing', async () => {
      // A straggler from an earlier incarnation of the key (its record expired and the key was
      // begun and completed again) must not mark the newer record's messages as confirmed.
      const key = freshKey();
      const acquired = await acquire(key);
      await ok(completeWith(key, acquired.fence, { outgoing: [message('a'), message('b')] }));
      await store().markPublished(key, acquired.fence - 1, ['a']);
      await store().markPublished(key, acquired.fence + 1, ['b']);
      const flags = inState(await store().get(key), 'COMPLETED').outgoing.map((m) => m.published);
      expect(flags).toEqual([false, false]);
    });

    it('clear forgets COMPLETED and FAILED records; the next begin starts anew with a higher fence', async () => {
      for (const finish of ['complete', 'fail'] as const) {
        const key = freshKey();
        const first = await acquire(key);
        if (finish === 'complete') await ok(completeWith(key, first.fence, { outgoing: [message('m')] }));
        else await ok(store().fail(key, first.fence, fatal, retentionMs));
        expect(await store().clear(key)).toBe('cleared');
        expect(await store().get(key)).toBeUndefined();
        expect(await store().clear(key)).toBe('absent');
        const again = await acquire(key, { fingerprint: 'another payload' });
        expect(again).toMatchObject({ kind: 'new', attempt: 1 });
        expect(again.fence).toBeGreaterThan(first.fence);
        await store().markPublished(key, first.fence, ['m']);
        expect(await store().get(key)).toMatchObject({ state: 'IN_PROGRESS', fence: again.fence });
      }
    });

    it('clear keeps a record under a live lease (busy) and forgets a released one', async () => {
      const key = freshKey();
      const held = await acquire(key);
      expect(await store().clear(key)).toBe('busy');
      expect(await store().get(key)).toMatchObject({ state: 'IN_PROGRESS', fence: held.fence });
      await ok(store().release(key, held.fence, boom));
      expect(await store().clear(key)).toBe('cleared');
      await lost(completeWith(key, held.fence));
      expect(await store().get(key)).toBeUndefined();
      expect(await store().clear(freshKey())).toBe('absent');
    });

    it('clear with failedFence deletes only that FAILED record; a record completed or failed again since is kept (changed)', async () => {
      // Two replays of one letter: the second read FAILED before the first cleared it, and
      // clears after the first's copy COMPLETED the key anew. Its clear must keep that record.
      const key = freshKey();
      const first = await acquire(key);
      await ok(store().fail(key, first.fence, fatal, retentionMs));
      expect(await store().clear(key, { failedFence: first.fence + 1 })).toBe('changed');
      expect(await store().get(key)).toMatchObject({ state: 'FAILED', fence: first.fence });
      expect(await store().clear(key, { failedFence: first.fence })).toBe('cleared');
      const replay = await acquire(key);
      expect(await store().clear(key, { failedFence: first.fence })).toBe('changed');
      await ok(completeWith(key, replay.fence));
      expect(await store().clear(key, { failedFence: first.fence })).toBe('changed');
      expectStatus(await store().begin(request(key)), 'duplicate');

      // Failed again under a newer fence: the stale clear keeps it too.
      const again = freshKey();
      const one = await acquire(again);
      await ok(store().fail(again, one.fence, fatal, retentionMs));
      expect(await store().clear(again, { failedFence: one.fence })).toBe('cleared');
      const two = await acquire(again);
      await ok(store().release(again, two.fence, boom));
      expect(await store().clear(again, { failedFence: one.fence })).toBe('changed');
      const three = await acquire(again);
      await ok(store().fail(again, three.fence, fatal, retentionMs));
      expect(await store().clear(again, { failedFence: one.fence })).toBe('changed');
      expect(await store().get(again)).toMatchObject({ state: 'FAILED', fence: three.fence });
      expect(await store().clear(freshKey(), { failedFence: one.fence })).toBe('absent');
    });

    it('release keeps the record IN_PROGRESS with leaseUntil 0 and lastError; begin retries at once', async () => {
      const key = freshKey();
      const first = await acquire(key);
      await ok(store().release(key, first.fence, boom));
      // The repeat of a release whose answer was lost: `ok`, and the attempt is counted once.
      await ok(store().release(key, first.fence, boom));
      const released = inState(await store().get(key), 'IN_PROGRESS');
      expect(released.leaseUntil).toBe(0);
      expect(released.lastError).toEqual(boom);
      const second = await acquire(key, { owner: 'worker-b' });
      expect(second).toMatchObject({ kind: 'retry', fence: first.fence + 1, attempt: 2 });
    });

    it('release notRun gives the lease back without counting the attempt or replacing the last error', async () => {
      const key = freshKey();
      const first = await acquire(key);
      await ok(store().release(key, first.fence, boom));
      const second = await acquire(key);
      expect(second).toMatchObject({ kind: 'retry', attempt: 2 });
      // The second lease is given back before its handler started (an ordered delivery's turn).
      await ok(store().release(key, second.fence, fatal, { notRun: true }));
      const released = inState(await store().get(key), 'IN_PROGRESS');
      expect(released.leaseUntil).toBe(0);
      expect(released.lastError).toEqual(boom);
      const third = await acquire(key, { owner: 'worker-b' });
      expect(third).toMatchObject({ kind: 'retry', fence: second.fence + 1, attempt: 2 });
      await lost(store().release(key, second.fence, fatal, { notRun: true }));
    });

    it('release notRun of a takeover keeps the key a takeover, without counting the attempt', async () => {
      const key = freshKey();
      await acquire(key);
      await sleep(pastLease);
      const second = await acquire(key, { owner: 'worker-b' });
      expect(second).toMatchObject({ kind: 'takeover', attempt: 2 });
      // Given back before its handler started: the run that died under the first lease is still
      // the key's last run, so the next begin is a takeover again, as attempt 2 again.
      await ok(store().release(key, second.fence, fatal, { notRun: true, takenOver: true }));
      const released = inState(await store().get(key), 'IN_PROGRESS');
      expect(released.leaseUntil).toBeLessThanOrEqual(Date.now());
      expect(released.leaseUntil).not.toBe(0);
      const third = await acquire(key, { owner: 'worker-c' });
      expect(third).toMatchObject({ kind: 'takeover', fence: second.fence + 1, attempt: 2 });
    });

    it('extend after a release is lost and leaves the key released (a late extension revives nothing)', async () => {
      // An extension given up at its deadline may land after the run released the key: it must
      // not make the lease live again (the retry would wait a lease, then come as a takeover).
      const k = keys();
      const released = await acquire(k('released'));
      await ok(store().release(k('released'), released.fence, boom));
      await lost(store().extend(k('released'), released.fence, leaseMs * 10));
      expect(inState(await store().get(k('released')), 'IN_PROGRESS').leaseUntil).toBe(0);
      expect(await acquire(k('released'), { owner: 'worker-b' })).toMatchObject({
        kind: 'retry',
        attempt: 2,
      });

      const givenBack = await acquire(k('given back'));
      await ok(store().release(k('given back'), givenBack.fence, fatal, { notRun: true }));
      await lost(store().extend(k('given back'), givenBack.fence, leaseMs * 10));
      expect(await acquire(k('given back'), { owner: 'worker-b' })).toMatchObject({
        kind: 'retry',
        attempt: 1,
      });
    });

    it('extend after a takeover is given back unrun is lost; the key stays a takeover', async () => {
      const key = freshKey();
      await acquire(key);
      await sleep(pastLease);
      const second = await acquire(key, { owner: 'worker-b' });
      await ok(store().release(key, second.fence, fatal, { notRun: true, takenOver: true }));
      await lost(store().extend(key, second.fence, leaseMs * 10));
      expect(await acquire(key, { owner: 'worker-c' })).toMatchObject({ kind: 'takeover', attempt: 2 });
    });

    it('fail makes the record FAILED; begin then answers failed with the error', async () => {
      const key = freshKey();
      const acquired = await acquire(key);
      await ok(store().fail(key, acquired.fence, fatal, retentionMs));
      const { record } = expectStatus(await store().begin(request(key)), 'failed');
      expect(record).toMatchObject({ key, state: 'FAILED', error: fatal, attempt: 1 });
      expectNow(record.failedAt);
      expect(Math.abs(record.expiresAt - record.failedAt - retentionMs)).toBeLessThanOrEqual(1000);
      expect(await store().get(key)).toEqual(record);
    });

    it('saveStep journals steps the next attempt receives; a stale fence is lost', async () => {
      const key = freshKey();
      const first = await acquire(key);
      await ok(store().saveStep(key, first.fence, 'charge', bytes([1, 2, 3])));
      await ok(store().saveStep(key, first.fence, 'empty', new Uint8Array(0)));
      await ok(store().release(key, first.fence, boom));
      const second = await acquire(key);
      expect(second.kind).toBe('retry');
      expect(plain(second.steps.charge?.result)).toEqual([1, 2, 3]);
      expect(second.steps.charge?.state).toBe('done');
      expect(plain(second.steps.empty?.result)).toEqual([]);
      expect(second.steps.empty?.state).toBe('done');
      expectNow(second.steps.charge?.at ?? 0);
      await lost(store().saveStep(key, first.fence, 'zombie', bytes([0])));
      await ok(store().saveStep(key, second.fence, 'ship', bytes([4])));
      const steps = inState(await store().get(key), 'IN_PROGRESS').steps;
      expect(Object.keys(steps).sort()).toEqual(['charge', 'empty', 'ship']);
    });

    // markStepStarted is optional in the contract: a store without it cannot serve `reconcile`
    // steps (core refuses them loudly), and these tests pass vacuously.
    it('markStepStarted journals an in-doubt step the next attempt sees as started; saveStep makes it done', async () => {
      const mark = store().markStepStarted?.bind(store());
      if (mark === undefined) return;
      const key = freshKey();
      const first = await acquire(key);
      const odd = 'pay.$set{x}*\u0000é';
      await ok(mark(key, first.fence, 'charge'));
      await ok(mark(key, first.fence, odd));
      await ok(store().saveStep(key, first.fence, 'quote', bytes([9])));
      const read = inState(await store().get(key), 'IN_PROGRESS').steps;
      expect(read.charge).toMatchObject({ state: 'started' });
      expect(plain(read.charge?.result)).toEqual([]);
      expectNow(read.charge?.at ?? 0);
      await ok(store().release(key, first.fence, boom));

      const second = await acquire(key);
      expect(second.kind).toBe('retry');
      expect(second.steps.charge?.state).toBe('started');
      expect(second.steps[odd]?.state).toBe('started');
      expect(second.steps.quote?.state).toBe('done');
      expect(plain(second.steps.quote?.result)).toEqual([9]);
      // The stale holder can neither mark nor finish a step any more.
      await lost(mark(key, first.fence, 'zombie'));
      await lost(store().saveStep(key, first.fence, 'charge', bytes([0])));
      // Done overrides started (an empty result included).
      await ok(store().saveStep(key, second.fence, 'charge', bytes([7])));
      await ok(store().saveStep(key, second.fence, odd, new Uint8Array(0)));
      await ok(mark(key, second.fence, 'ship'));
      const steps = inState(await store().get(key), 'IN_PROGRESS').steps;
      expect(Object.keys(steps).sort()).toEqual(['charge', odd, 'quote', 'ship'].sort());
      expect(steps.charge?.state).toBe('done');
      expect(plain(steps.charge?.result)).toEqual([7]);
      expect(steps[odd]?.state).toBe('done');
      expect(plain(steps[odd]?.result)).toEqual([]);

      // A takeover sees the same: started steps stay started, done ones done.
      await sleep(pastLease);
      const third = await acquire(key, { owner: 'worker-b' });
      expect(third.kind).toBe('takeover');
      expect(third.steps.ship?.state).toBe('started');
      expect(third.steps.charge?.state).toBe('done');
      await lost(mark(key, second.fence, 'late'));
      expect(inState(await store().get(key), 'IN_PROGRESS').steps.late).toBeUndefined();
    });

    it('markStepStarted on an absent, completed or failed record is lost and changes nothing', async () => {
      const mark = store().markStepStarted?.bind(store());
      if (mark === undefined) return;
      await lost(mark(freshKey(), 1, 's'));
      const absent = freshKey();
      await lost(mark(absent, 1, 's'));
      expect(await store().get(absent)).toBeUndefined();
      const done = freshKey();
      const a = await acquire(done);
      await ok(mark(done, a.fence, 's'));
      await ok(completeWith(done, a.fence));
      const before = await store().get(done);
      await lost(mark(done, a.fence, 's'));
      expect(await store().get(done)).toEqual(before);
      const failed = freshKey();
      const b = await acquire(failed);
      await ok(store().fail(failed, b.fence, fatal, retentionMs));
      await lost(mark(failed, b.fence, 's'));
      expect(await store().get(failed)).toMatchObject({ state: 'FAILED' });
    });

    it('a COMPLETED record reads as absent after its retention; begin then starts anew', async () => {
      const key = freshKey();
      const first = await acquire(key);
      await ok(completeWith(key, first.fence, { retentionMs: shortRetentionMs }));
      await sleep(pastRetention);
      expect(await store().get(key)).toBeUndefined();
      await store().markPublished(key, first.fence, ['x']);
      // Once expired, the key is free: even another payload is accepted.
      const again = await acquire(key, { fingerprint: 'fp-2' });
      expect(again).toMatchObject({ kind: 'new', attempt: 1 });
    });

    it('a FAILED record reads as absent after its retention; begin then starts anew', async () => {
      const key = freshKey();
      const first = await acquire(key);
      await ok(store().fail(key, first.fence, fatal, shortRetentionMs));
      await sleep(pastRetention);
      expect(await store().get(key)).toBeUndefined();
      expect(await acquire(key)).toMatchObject({ kind: 'new', attempt: 1 });
    });

    it('hostile keys are stored verbatim and isolated from each other', async () => {
      const key = keys();
      // Decoys that a key read as a pattern, a path or a C string would reach.
      const decoys = ['', 'a', 'ab', 'b', 'tag', 'k', 'x', 'ключ'];
      const fences = await Promise.all(
        decoys.map(async (d) => (await acquire(key(d), { fingerprint: 'decoy' })).fence),
      );
      for (const [i, suffix] of HOSTILE_KEYS.entries()) {
        expect(await store().get(key(suffix))).toBeUndefined();
        const acquired = await acquire(key(suffix), { fingerprint: `fp-${i}` });
        expect(acquired).toMatchObject({ kind: 'new', attempt: 1 });
        const outgoing = [message('m')];
        await ok(completeWith(key(suffix), acquired.fence, { result: inline([i]), outgoing }));
        await store().markPublished(key(suffix), acquired.fence, ['m']);
      }
      for (const [i, suffix] of HOSTILE_KEYS.entries()) {
        const record = inState(await store().get(key(suffix)), 'COMPLETED');
        // Not toBe: a failure would print a 10 KiB key.
        expect(record.key === key(suffix) && record.fingerprint === `fp-${i}`).toBe(true);
        expect(inlineData(record)).toEqual([i]);
        const again = await store().begin(request(key(suffix), { fingerprint: `fp-${i}` }));
        expect(expectStatus(again, 'duplicate').record.key === key(suffix)).toBe(true);
      }
      for (const [i, decoy] of decoys.entries()) {
        const record = inState(await store().get(key(decoy)), 'IN_PROGRESS');
        expect(record).toMatchObject({ key: key(decoy), fingerprint: 'decoy', fence: fences[i], attempt: 1 });
      }
    });

    it('every byte value in results and outgoing bodies, and headers, round-trip exactly', async () => {
      const key = freshKey();
      const acquired = await acquire(key);
      const data = allBytes();
      const headers = {
        traceparent: `00-${'a1'.repeat(16)}-${'b2'.repeat(8)}-01`,
        empty: '',
        'ü-ключ': '🔑 "\\',
      };
      const routed = { id: 'routed', destination: 'orders.out', routingKey: 'rk.1', headers };
      const outgoing: OutgoingMessage[] = [
        { ...routed, body: data.slice().reverse() },
        { id: 'plain', destination: 'topic', body: data, headers: {} },
      ];
      await ok(completeWith(key, acquired.fence, { result: inline(data), outgoing }));
      for (const record of [
        inState(await store().get(key), 'COMPLETED'),
        expectStatus(await store().begin(request(key)), 'duplicate').record,
      ]) {
        expect(inlineData(record)).toEqual(plain(data));
        const [first, second] = record.outgoing;
        expect(first).toMatchObject(routed);
        expect(plain(first?.body)).toEqual(plain(data).reverse());
        expect(second?.routingKey).toBeUndefined();
        expect(second?.headers).toEqual({});
        expect(plain(second?.body)).toEqual(plain(data));
      }
    });

    it('stored bytes never alias the caller’s arrays', async () => {
      const key = freshKey();
      const acquired = await acquire(key);
      const step = bytes([1]);
      await ok(store().saveStep(key, acquired.fence, 's', step));
      step[0] = 99;
      const result = bytes([2]);
      const body = bytes([3]);
      await ok(store().release(key, acquired.fence, boom));
      const again = await acquire(key);
      expect(plain(again.steps.s?.result)).toEqual([1]);
      const outgoing = [{ ...message('m'), body }];
      await ok(completeWith(key, again.fence, { result: inline(result), outgoing }));
      result[0] = 99;
      body[0] = 99;
      const read = inState(await store().get(key), 'COMPLETED');
      if (read.result?.kind === 'inline') read.result.data[0] = 98;
      expect(plain(read.outgoing[0]?.body)).toEqual([3]);
      expect(inlineData(inState(await store().get(key), 'COMPLETED'))).toEqual([2]);
    });

    it('fenced operations on an absent key are lost and create nothing', async () => {
      const key = freshKey();
      await lost(store().extend(key, 1, leaseMs));
      await lost(store().saveStep(key, 1, 's', bytes([1])));
      await lost(store().release(key, 1, boom));
      await lost(store().fail(key, 1, fatal, retentionMs));
      await lost(completeWith(key, 1));
      await store().markPublished(key, 1, ['m']);
      expect(await store().get(key)).toBeUndefined();
    });

    it('deadlines and timestamps are epoch milliseconds on a clock within 5 s of this one', async () => {
      const key = freshKey();
      const acquired = await acquire(key);
      expectNow(acquired.leaseUntil - leaseMs);
      await ok(completeWith(key, acquired.fence));
      expectNow(inState(await store().get(key), 'COMPLETED').completedAt);
    });
  });
}

/** Suffixes that break stores which build key patterns, JSON queries or paths from keys. */
