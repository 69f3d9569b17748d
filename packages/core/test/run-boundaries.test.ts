/**
 * Defects outside the happy path: blobs under journaled steps, child keys across namespaces,
 * payloads that overflow a walk, key spaces, a context used after its run, unbounded runs and
 * deferrals, leases during large uploads, results too big for the store.
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createFsBlobStore } from '../src/blob/fs-blob-store.js';
import { resultStream } from '../src/blob/result-stream.js';
import type { BlobPointer, BlobStore } from '../src/blob/types.js';
import type { HandlerContext } from '../src/context.js';
import { RecordTooLargeError, StoreUnavailableError } from '../src/errors.js';
import { Headers } from '../src/headers.js';
import { normalizeKey, scopeKey, sha256Hex } from '../src/keys.js';
import { createProcessor } from '../src/processor.js';
import { withFaults } from '../src/store/faulty-store.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import type { ProcessedStore } from '../src/store/types.js';
import { deferred, delivery, recordingPublisher, withHeldExtensions } from './helpers.js';

const key = (k: string) => ({ [Headers.IdempotencyKey]: k });
const fast = { leaseMs: 300, retentionCheck: 'off' as const, retry: { maxAttempts: 3, initialDelayMs: 10 } };
const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});
async function fsBlobs(): Promise<BlobStore> {
  const directory = await mkdtemp(join(tmpdir(), 'eo-blobs-'));
  dirs.push(directory);
  return createFsBlobStore({ directory });
}
const pdf = () => new Uint8Array(4096).fill(7);

describe('blobs stored inside a journaled step survive the run that stored them', () => {
  it('a retry replays the step and can still read the blob its pointer names', async () => {
    const blobs = await fsBlobs();
    let failLater = true;
    const read: number[] = [];
    const p = createProcessor({
      consumer: 'render',
      store: createMemoryStore(),
      blobs,
      ...fast,
      handler: async (_: unknown, ctx: HandlerContext) => {
        const pointer = await ctx.step('render', () => ctx.storeBlob(pdf()));
        await ctx.step('mail', () => {
          if (failLater) throw new Error('smtp down');
          return true;
        });
        read.push((await blobs.get(pointer)).byteLength);
        return pointer;
      },
    });
    expect(await p.process(delivery({}, key('b1')))).toMatchObject({ action: 'retry' });
    failLater = false;
    expect(await p.process(delivery({}, key('b1')))).toMatchObject({ action: 'ack' });
    expect(read).toEqual([4096]);
  });

  it("a stale run's lease-lost path does not delete the new owner's replayed blob", async () => {
    const blobs = await fsBlobs();
    const store = createMemoryStore();
    const gate = deferred();
    const stepped = deferred();
    let pointer: BlobPointer | undefined;
    const stale = createProcessor({
      consumer: 'render',
      // Its heartbeats never reach the store: the lease runs out while it stalls.
      store: withFaults(store, { failWhen: (op) => op === 'extend' }),
      blobs,
      ...fast,
      heartbeatMs: 100,
      handler: async (_: unknown, ctx: HandlerContext) => {
        pointer = await ctx.step('render', () => ctx.storeBlob(pdf()));
        stepped.resolve();
        await gate.promise; // stalls past its lease
        throw new Error('too late anyway');
      },
    });
    const staleRun = stale.process(delivery({}, key('b2')));
    // The rival comes once the step is journaled: before, a loaded machine let the stale lease
    // (then 60 ms) run out inside the step itself, and the blob was never the stale run's.
    await stepped.promise;
    const rival = createProcessor({
      consumer: 'render',
      store,
      blobs,
      ...fast,
      handler: async (_: unknown, ctx: HandlerContext) => {
        const replayed = await ctx.step('render', () => ctx.storeBlob(pdf()));
        gate.resolve();
        await staleRun; // the stale run finishes (lease lost) before this run reads its blob
        return (await blobs.get(replayed)).byteLength;
      },
    });
    let d = await rival.process(delivery({}, key('b2')));
    for (let i = 0; d.action === 'defer' && i < 100; i++) {
      await new Promise((r) => setTimeout(r, 20));
      d = await rival.process(delivery({}, key('b2')));
    }
    expect(d).toMatchObject({ action: 'ack', outcome: 'takeover' });
    expect(pointer).toBeDefined();
    expect((await blobs.get(pointer as BlobPointer)).byteLength).toBe(4096);
  });

  it('blobs of a run that is retried are deleted when no journaled step names them', async () => {
    const directory = await mkdtemp(join(tmpdir(), 'eo-blobs-'));
    dirs.push(directory);
    const blobs = createFsBlobStore({ directory });
    let fail = true;
    const p = createProcessor({
      consumer: 'render',
      store: createMemoryStore(),
      blobs,
      ...fast,
      handler: async (_: unknown, ctx: HandlerContext) => {
        await ctx.storeBlob(pdf());
        if (fail) throw new Error('transient');
      },
    });
    expect(await p.process(delivery({}, key('b3')))).toMatchObject({ action: 'retry' });
    const files = async () =>
      (await Promise.all((await readdir(directory)).map((d) => readdir(join(directory, d))))).flat();
    expect(await files()).toEqual([]);
    fail = false;
    expect(await p.process(delivery({}, key('b3')))).toMatchObject({ action: 'ack' });
  });
});

describe('child keys', () => {
  it('differ between namespaces (tenants) with the same consumer and business key', async () => {
    const seen: Record<string, { keyFor: string; child: string | undefined }> = {};
    for (const namespace of ['tenant-a', 'tenant-b']) {
      const publisher = recordingPublisher();
      const p = createProcessor({
        consumer: 'billing',
        namespace,
        store: createMemoryStore(),
        publisher,
        ...fast,
        handler: (_: unknown, ctx: HandlerContext) => {
          seen[namespace] = { keyFor: ctx.keyFor('charge'), child: undefined };
          ctx.publish('payments', { ok: true }, { name: 'captured' });
        },
      });
      await p.process(delivery({}, key('order-1')));
      (seen[namespace] as { child: string | undefined }).child =
        publisher.sent[0]?.headers[Headers.IdempotencyKey];
    }
    expect(seen['tenant-a']?.keyFor).not.toBe(seen['tenant-b']?.keyFor);
    expect(seen['tenant-a']?.child).toBeDefined();
    expect(seen['tenant-a']?.child).not.toBe(seen['tenant-b']?.child);
  });
});

describe('hostile payloads and key spaces', () => {
  it('a JSON body nested 100k deep is dead-lettered as MalformedMessageError, not a RangeError', async () => {
    const body = `${'['.repeat(100_000)}${']'.repeat(100_000)}`;
    let runs = 0;
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      ...fast,
      handler: () => {
        runs++;
      },
    });
    const d = await p.process(delivery(body, key('deep')));
    expect(d).toMatchObject({ action: 'dead-letter', outcome: 'invalid' });
    if (d.action === 'dead-letter') {
      expect(d.reason.error).toMatchObject({ name: 'MalformedMessageError', code: 'MALFORMED_MESSAGE' });
    }
    expect(runs).toBe(0);
  });

  it('every dead-letter reason is a library error, also for a foreign permanent handler error', async () => {
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      ...fast,
      fingerprint: () => {
        throw new RangeError('selector blew up');
      },
      handler: () => undefined,
    });
    const byFingerprint = await p.process(delivery({}, key('f1')));
    if (byFingerprint.action !== 'dead-letter') throw new Error('expected dead-letter');
    expect(byFingerprint.reason.error.code).toBe('MALFORMED_MESSAGE');

    const q = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      ...fast,
      handler: () => {
        throw Object.assign(new TypeError('bad card'), { retryable: false });
      },
    });
    const byHandler = await q.process(delivery({}, key('f2')));
    if (byHandler.action !== 'dead-letter') throw new Error('expected dead-letter');
    expect(byHandler.reason.error).toMatchObject({ name: 'HandlerFailedError', code: 'HANDLER_FAILED' });
    expect(byHandler.reason.error.message).toContain('TypeError: bad card');
  });

  it('a literal key that looks like a hashed key never collides with the hashed form of a long key', () => {
    const long = 'k'.repeat(300);
    const hashed = normalizeKey(long);
    expect(hashed.startsWith('sha256:')).toBe(true);
    expect(normalizeKey(`sha256:${sha256Hex(long)}`)).not.toBe(hashed);
    expect(normalizeKey(hashed)).not.toBe(hashed);
    expect(normalizeKey('order-1')).toBe('order-1');
  });
});

describe('a context used after its run', () => {
  it('ctx.publish, ctx.step and ctx.storeBlob throw once the handler has returned', async () => {
    let saved: HandlerContext | undefined;
    const publisher = recordingPublisher();
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      publisher,
      blobs: await fsBlobs(),
      ...fast,
      handler: (_: unknown, ctx: HandlerContext) => {
        saved = ctx;
      },
    });
    expect(await p.process(delivery({}, key('late')))).toMatchObject({ action: 'ack' });
    const ctx = saved as HandlerContext;
    expect(() => ctx.publish('payments', { late: true })).toThrow(/after the handler/);
    await expect(ctx.step('late', () => 1)).rejects.toThrow(/after the handler/);
    await expect(ctx.storeBlob(pdf())).rejects.toThrow(/after the handler/);
    expect(publisher.sent).toEqual([]);
  });
});

describe('the context handed to a handler', () => {
  it('works through methods taken off it (destructured), and shows text headers', async () => {
    const publisher = recordingPublisher();
    const seen: { headers?: Readonly<Record<string, string>>; keys?: string[]; step?: number } = {};
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      publisher,
      ...fast,
      handler: async (_: unknown, ctx: HandlerContext) => {
        const { keyFor, publish, step, headers, key: messageKey } = ctx;
        seen.headers = headers;
        seen.keys = [messageKey, keyFor('charge'), ctx.keyFor('charge')];
        seen.step = await step('count', () => 41 + 1);
        publish('emails', { to: 'a@example.com' }, { name: 'receipt' });
      },
    });
    const headers = { ...key('detached'), 'x-note': new TextEncoder().encode('bytes as text') };
    expect(await p.process(delivery({}, headers))).toMatchObject({ action: 'ack' });
    expect(seen.headers).toEqual({ [Headers.IdempotencyKey]: 'detached', 'x-note': 'bytes as text' });
    expect(seen.keys?.[0]).toBe('detached');
    expect(seen.keys?.[1]).toMatch(/^eo2-/);
    expect(seen.keys?.[2]).toBe(seen.keys?.[1]);
    expect(seen.step).toBe(42);
    expect(publisher.sent.map((m) => m.destination)).toEqual(['emails']);
  });
});

describe('bounded runs and deferrals', () => {
  it('a hung handler is given up after maxRunMs: signal aborted, retry scheduled, key held until its lease runs out', async () => {
    const store = createMemoryStore();
    let aborted = false;
    const p = createProcessor({
      consumer: 'c',
      store,
      ...fast,
      // A lease well past maxRunMs: the key is still held when the next delivery comes, however
      // long giving the run up took on a loaded machine (300 ms was not always enough).
      leaseMs: 1_000,
      heartbeatMs: 50,
      maxRunMs: 200,
      handler: (_: unknown, ctx: HandlerContext) =>
        new Promise<never>(() => {
          ctx.signal.addEventListener('abort', () => {
            aborted = true;
          });
        }),
    });
    const d = await p.process(delivery({}, key('hung')));
    expect(d).toMatchObject({ action: 'retry', error: { name: 'RunTimeoutError', code: 'RUN_TIMEOUT' } });
    expect(aborted).toBe(true);
    // Not released while the handler still runs; no longer heartbeated either, so its lease ends.
    const held = await store.get('default:c:hung');
    expect(held).toMatchObject({ state: 'IN_PROGRESS', attempt: 1 });
    expect(held?.state === 'IN_PROGRESS' && held.leaseUntil).toBeGreaterThan(0);
    expect(await p.process(delivery({}, key('hung')))).toMatchObject({ action: 'defer', outcome: 'busy' });
    await new Promise((r) => setTimeout(r, 1_200));
    // The lease ran out: the next delivery takes the key over, as after a crash.
    const next = p.process(delivery({}, key('hung')));
    await new Promise((r) => setTimeout(r, 50));
    expect(await store.get('default:c:hung')).toMatchObject({ state: 'IN_PROGRESS', attempt: 2 });
    void next;
  });

  it('the retry of a run given up at maxRunMs starts after its handler returned, not beside it', async () => {
    const store = createMemoryStore();
    const ledger: string[] = []; // the provider: it does not deduplicate
    const firstCallMayLand = deferred();
    let runs = 0;
    const p = createProcessor({
      consumer: 'c',
      store,
      ...fast,
      // The given-up run's lease must outlast the next call even on a loaded machine (with the
      // 300 ms of the others, a slow turn let it lapse: a takeover, not busy).
      leaseMs: 2_000,
      heartbeatMs: 50,
      maxRunMs: 100,
      handler: async (_: unknown, ctx: HandlerContext) => {
        const run = ++runs;
        return ctx.step(
          'charge',
          async () => {
            if (run === 1) await firstCallMayLand.promise; // a provider call that outlives maxRunMs
            ledger.push(ctx.keyFor('charge'));
            return 'charged';
          },
          {
            reconcile: async ({ key }) =>
              ledger.includes(key) ? { done: true, value: 'charged' } : { done: false },
          },
        );
      },
    });
    expect(await p.process(delivery({}, key('slow')))).toMatchObject({
      action: 'retry',
      outcome: 'acquired',
    });
    // The retry comes back while the first call is still on its way: the key is still held.
    expect(await p.process(delivery({}, key('slow')))).toMatchObject({ action: 'defer', outcome: 'busy' });
    firstCallMayLand.resolve();
    let last = await p.process(delivery({}, key('slow')));
    for (let i = 0; i < 20 && last.action !== 'ack'; i++) {
      await new Promise((r) => setTimeout(r, 20));
      last = await p.process(delivery({}, key('slow')));
    }
    expect(last).toMatchObject({ action: 'ack', outcome: 'acquired' });
    // The retry asked the provider (reconcile) after the first call had landed: one charge.
    expect(ledger).toHaveLength(1);
    expect(runs).toBe(2);
  });

  it('on its last attempt, a run given up at maxRunMs is FAILED and lets the next of its group run only once its handler returned', async () => {
    // Before: FAILED at once and the next handler started beside the one still running, so two
    // handlers of one partition overlapped and the key was free while its effect went on.
    const store = createMemoryStore();
    const events: string[] = [];
    const firstMayReturn = deferred();
    const p = createProcessor({
      consumer: 'c',
      store,
      ...fast,
      leaseMs: 5_000,
      heartbeatMs: 50,
      maxRunMs: 100,
      retry: { maxAttempts: 1 },
      handler: async (m: { i: number }) => {
        events.push(`start:${m.i}`);
        if (m.i === 0) await firstMayReturn.promise;
        events.push(`end:${m.i}`);
      },
    });
    const run = p.processInOrder([delivery({ i: 0 }, key('first')), delivery({ i: 1 }, key('second'))]);
    await new Promise((r) => setTimeout(r, 400)); // well past maxRunMs
    expect(events).toEqual(['start:0']);
    expect((await store.get('default:c:first'))?.state).toBe('IN_PROGRESS');
    firstMayReturn.resolve();
    const [first, second] = await Promise.all(run.dispositions);
    expect(first).toMatchObject({ action: 'dead-letter', reason: { error: { code: 'ATTEMPTS_EXHAUSTED' } } });
    expect(second).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(events).toEqual(['start:0', 'end:0', 'start:1', 'end:1']);
    expect((await store.get('default:c:first'))?.state).toBe('FAILED');
  });

  it('after maxPublishDeferrals unconfirmed publishes the message is dead-lettered with the reason', async () => {
    const publisher = recordingPublisher();
    publisher.failing = true;
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      publisher,
      ...fast,
      maxPublishDeferrals: 3,
      handler: (_: unknown, ctx: HandlerContext) => {
        ctx.publish('missing-exchange', { a: 1 });
      },
    });
    const outcomes: string[] = [];
    for (let i = 0; i < 4; i++) {
      const d = await p.process(delivery({}, key('stuck')));
      outcomes.push(`${d.action}:${d.outcome}`);
    }
    expect(outcomes).toEqual([
      // the first run completes, then its publish is not confirmed
      'defer:publish-failed',
      'defer:publish-failed',
      'defer:publish-failed',
      'dead-letter:publish-failed',
    ]);
    // A replayed dead letter gets the full allowance again (the destination may be fixed by now).
    expect(await p.process(delivery({}, key('stuck')))).toMatchObject({ action: 'defer' });
  });
});

describe('large results', () => {
  /** A blob store whose put waits for `finish`, before or after writing, once it got there. */
  function pausedPuts(inner: BlobStore, when: 'before-write' | 'after-write') {
    const reached = deferred();
    const finish = deferred();
    const blobs: BlobStore = {
      ...inner,
      async put(source) {
        if (when === 'before-write') {
          reached.resolve();
          await finish.promise;
          return inner.put(source);
        }
        const pointer = await inner.put(source);
        reached.resolve();
        await finish.promise;
        return pointer;
      },
    };
    return { blobs, reached, finish };
  }
  const uploader = (store: ProcessedStore, blobs: BlobStore) =>
    createProcessor({
      consumer: 'c',
      store,
      blobs,
      ...fast,
      leaseMs: 60,
      heartbeatMs: 20,
      inlineResultBytes: 10,
      handler: () => 'x'.repeat(1000),
    });

  it('the lease is extended while a large result uploads; a rival sees the key busy', async () => {
    const store = createMemoryStore();
    const upload = pausedPuts(await fsBlobs(), 'before-write');
    const run = uploader(store, upload.blobs).process(delivery({}, key('big')));
    await upload.reached.promise;
    await new Promise((r) => setTimeout(r, 150)); // well past one lease
    const rival = createProcessor({ consumer: 'c', store, ...fast, handler: () => 'rival' });
    expect(await rival.process(delivery({}, key('big')))).toMatchObject({ action: 'defer', outcome: 'busy' });
    upload.finish.resolve();
    expect(await run).toMatchObject({ action: 'ack', outcome: 'acquired' });
  });

  it('an upload that ends after a takeover: the run is lease-lost and its blob deleted', async () => {
    // Before: the run threw `TypeError: this.journal is not a function` (a method taken off the
    // run's state unbound), was deferred as store-unavailable, and left its blob on disk.
    const store = createMemoryStore();
    const directory = await mkdtemp(join(tmpdir(), 'eo-blobs-'));
    dirs.push(directory);
    const upload = pausedPuts(createFsBlobStore({ directory }), 'after-write');
    // The heartbeat's extension hangs until after the rival took over.
    const stalled = withHeldExtensions(store);
    const run = uploader(stalled.store, upload.blobs).process(delivery({}, key('big-lost')));
    await upload.reached.promise;
    await new Promise((r) => setTimeout(r, 150)); // well past one lease
    const rival = createProcessor({ consumer: 'c', store, ...fast, handler: () => 'rival' });
    expect(await rival.process(delivery({}, key('big-lost')))).toMatchObject({ outcome: 'takeover' });
    // The upload ends first; the extension in flight is then answered `lost`.
    upload.finish.resolve();
    await new Promise((r) => setTimeout(r, 20));
    stalled.release();
    expect(await run).toMatchObject({ action: 'defer', outcome: 'lease-lost' });
    const files = (
      await Promise.all((await readdir(directory)).map((d) => readdir(join(directory, d))))
    ).flat();
    expect(files).toEqual([]);
  });

  it('a result the store refuses as too large fails permanently and is dead-lettered', async () => {
    const inner = createMemoryStore();
    const store: ProcessedStore = {
      ...inner,
      completeMany: undefined, // a wrapper that overrides an operation drops its batch form
      complete: async () => {
        throw new RecordTooLargeError({ operation: 'complete', message: 'document over 16 MB' });
      },
    };
    const p = createProcessor({ consumer: 'c', store, ...fast, handler: () => 'big' });
    const d = await p.process(delivery({}, key('huge')));
    expect(d).toMatchObject({ action: 'dead-letter', reason: { error: { code: 'RECORD_TOO_LARGE' } } });
    expect(await inner.get('default:c:huge')).toMatchObject({ state: 'FAILED' });
  });
});

describe('the blobs of a run that does not complete', () => {
  it('a step write that landed unanswered and was then refused keeps the blob the run that took over completed with', async () => {
    const blobs = await fsBlobs();
    const memory = createMemoryStore();
    // Worker A: its heartbeats fail (its lease runs out), and its first saveStep lands but the
    // answer is lost (a connection reset after the server applied it); its repeat, once worker B
    // has taken the key over, is answered `lost`.
    const landed = deferred();
    const takenOver = deferred();
    let saves = 0;
    const storeA: ProcessedStore = {
      ...memory,
      extend: async () => {
        throw new StoreUnavailableError({ operation: 'extend', message: 'connection reset' });
      },
      saveStep: async (k, f, n, r) => {
        saves++;
        const answer = await memory.saveStep(k, f, n, r);
        if (saves > 1) return answer;
        landed.resolve();
        await takenOver.promise;
        throw new StoreUnavailableError({ operation: 'saveStep', message: 'connection reset' });
      },
    };
    delete (storeA as { beginMany?: unknown }).beginMany;
    delete (storeA as { completeMany?: unknown }).completeMany;
    let effects = 0;
    const handler = async (_: unknown, ctx: HandlerContext) => {
      const pointer = await ctx.step('render', async () => {
        effects++;
        return ctx.storeBlob(new TextEncoder().encode('the rendered invoice'));
      });
      return { invoice: pointer };
    };
    const a = createProcessor({ consumer: 'inv', store: storeA, blobs, ...fast, handler });
    const b = createProcessor({ consumer: 'inv', store: memory, blobs, ...fast, handler });
    const first = a.process(delivery({}, key('k1')));
    await landed.promise;
    await new Promise((r) => setTimeout(r, fast.leaseMs + 100));
    // B takes the key over, replays the journaled step and completes with its pointer.
    expect(await b.process(delivery({}, key('k1')))).toMatchObject({ action: 'ack', outcome: 'takeover' });
    expect(effects).toBe(1);
    takenOver.resolve();
    expect(await first).toMatchObject({ action: 'defer', outcome: 'lease-lost' });
    const record = await memory.get('default:inv:k1');
    if (record?.state !== 'COMPLETED' || record.result?.kind !== 'inline') throw new Error('not completed');
    const { invoice } = JSON.parse(new TextDecoder().decode(record.result.data)) as { invoice: BlobPointer };
    // A deleted it as the blob of a run that did not complete: B's record named nothing.
    expect(new TextDecoder().decode(await blobs.get(invoice))).toBe('the rendered invoice');
  });

  it('a run whose large result cannot be uploaded deletes the blobs it stored with ctx.storeBlob', async () => {
    const directory = await mkdtemp(join(tmpdir(), 'eo-blobs-'));
    dirs.push(directory);
    const fs = createFsBlobStore({ directory });
    let puts = 0;
    // The blob store fails the run's second put (the result's): a full disk, an outage.
    const blobs: BlobStore = {
      ...fs,
      put: (source, options) => {
        puts++;
        if (puts === 2) return Promise.reject(new Error('ENOSPC: no space left on device'));
        return fs.put(source, options);
      },
    };
    let stored: BlobPointer | undefined;
    const p = createProcessor({
      consumer: 'exports',
      store: createMemoryStore(),
      blobs,
      inlineResultBytes: 64,
      ...fast,
      handler: async (_: unknown, ctx: HandlerContext) => {
        stored = await ctx.storeBlob(new TextEncoder().encode('attachment'));
        return { attachment: stored, summary: 'x'.repeat(1_000) };
      },
    });
    expect((await p.process(delivery({}, key('k1')))).action).not.toBe('ack');
    if (stored === undefined) throw new Error('the handler stored no blob');
    // Left behind, only an orphan pass would have found it.
    expect(await readdir(directory, { recursive: true })).not.toContainEqual(
      expect.stringContaining(stored.uri.split(':').pop() as string),
    );
  });

  it("a consumer's stop during a streamed result's upload gives the key back uncounted, never FAILED", async () => {
    const store = createMemoryStore();
    const uploading = deferred();
    const more = deferred();
    const p = createProcessor({
      consumer: 'c',
      store,
      blobs: await fsBlobs(),
      ...fast,
      handler: () =>
        resultStream(
          (async function* () {
            yield new Uint8Array(1024);
            uploading.resolve();
            await more.promise; // a slow source: the export is still being read
            yield new Uint8Array(1024);
          })(),
        ),
    });
    const pending = p.process(delivery({}, key('k1')));
    await uploading.promise;
    p.abortRuns();
    more.resolve();
    // Before: the abort's ClosedError was taken for the handler's failure, the key FAILED and
    // the message dead-lettered at its first attempt.
    expect(await pending).toMatchObject({ action: 'defer', outcome: 'not-run' });
    const record = await store.get(scopeKey('default', 'c', 'k1'));
    // Given back uncounted: the next attempt is its first again.
    expect(record).toMatchObject({ state: 'IN_PROGRESS', attempt: 0, leaseUntil: 0 });
  });
});

describe('a lease taken over while a step still runs', () => {
  it('a step answered `lost` beside a step still running: the run is lease-lost, no retry counted', async () => {
    // Before: the release was left to run after the step still going, its `lost` answer unread,
    // and the run was counted `acquired` and retried at attempt 2 on a key another worker held.
    const memory = createMemoryStore();
    const storeA: ProcessedStore = {
      ...memory,
      // The heartbeat fails: the lease runs out, and another worker takes the key over.
      extend: async () => {
        throw new StoreUnavailableError({ operation: 'extend', message: 'connection reset' });
      },
    };
    delete (storeA as { beginMany?: unknown }).beginMany;
    delete (storeA as { completeMany?: unknown }).completeMany;
    const takenOver = deferred();
    const slow = deferred();
    const bothStarted = deferred();
    let started = 0;
    const a = createProcessor({
      consumer: 'c',
      store: storeA,
      ...fast,
      handler: async (_: unknown, ctx: HandlerContext) => {
        const step = (name: string, until: Promise<void>) =>
          ctx.step(name, async () => {
            if (++started === 2) bothStarted.resolve();
            await until;
            return name;
          });
        return Promise.all([step('quick', takenOver.promise), step('slow', slow.promise)]);
      },
    });
    const first = a.process(delivery({}, key('lost-beside')));
    await bothStarted.promise;
    await new Promise((r) => setTimeout(r, fast.leaseMs + 100));
    const b = createProcessor({ consumer: 'c', store: memory, ...fast, handler: () => 'b' });
    expect(await b.process(delivery({}, key('lost-beside')))).toMatchObject({ outcome: 'takeover' });
    takenOver.resolve(); // `quick` journals, and is answered `lost`; `slow` still runs
    setTimeout(() => slow.resolve(), 50);
    expect(await first).toMatchObject({ action: 'defer', outcome: 'lease-lost' });
  });
});
