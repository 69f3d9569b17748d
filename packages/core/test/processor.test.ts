import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createFsBlobStore } from '../src/blob/fs-blob-store.js';
import type { HandlerContext } from '../src/context.js';
import { PermanentError } from '../src/errors.js';
import { Headers } from '../src/headers.js';
import { fingerprint } from '../src/keys.js';
import { createProcessor } from '../src/processor.js';
import { deadLetterHeaders, type OutgoingPublisher } from '../src/spi.js';
import { withFaults } from '../src/store/faulty-store.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import type { OutgoingMessage } from '../src/store/types.js';
import { sleep } from '../src/wait.js';
import { deferred, delivery, recordingPublisher } from './helpers.js';

const key = (k: string) => ({ [Headers.IdempotencyKey]: k, [Headers.RequestId]: `req-${k}` });
const fast = { leaseMs: 300, retentionCheck: 'off' as const, retry: { maxAttempts: 3, initialDelayMs: 10 } };

describe('processor: completed and duplicate', () => {
  it('runs the handler once, stores the result, publishes, then acks; a redelivery is a duplicate', async () => {
    // Prepare
    const store = createMemoryStore();
    const publisher = recordingPublisher();
    let runs = 0;
    const p = createProcessor<{ amount: number }, { charged: number }>({
      consumer: 'billing',
      store,
      publisher,
      ...fast,
      handler: (order, ctx) => {
        runs++;
        ctx.publish('payments', { amount: order.amount }, { name: 'captured' });
        return { charged: order.amount };
      },
    });
    // Act
    const first = await p.process(delivery({ amount: 5 }, key('k1')));
    const second = await p.process(delivery({ amount: 5 }, key('k1')));
    // Assess
    expect(first).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(second).toMatchObject({ action: 'ack', outcome: 'duplicate' });
    expect(runs).toBe(1);
    expect(publisher.sent).toHaveLength(1);
    const rec = await store.get('default:billing:k1');
    expect(rec?.state).toBe('COMPLETED');
    if (rec?.state === 'COMPLETED') expect(rec.outgoing.every((m) => m.published)).toBe(true);
    if (second.action === 'ack' && second.result?.kind === 'inline') {
      expect(JSON.parse(new TextDecoder().decode(second.result.data))).toEqual({ charged: 5 });
    } else throw new Error('expected inline result');
  });

  it('propagates the request id and derives stable child keys for outgoing messages', async () => {
    const publisher = recordingPublisher();
    const seen: string[] = [];
    const p = createProcessor({
      consumer: 'billing',
      store: createMemoryStore(),
      publisher,
      ...fast,
      handler: (_: unknown, ctx: HandlerContext) => {
        seen.push(ctx.keyFor('charge'));
        ctx.publish('payments', { a: 1 });
        ctx.publish('emails', 'hello', { name: 'receipt', headers: { [Headers.RequestId]: 'spoofed' } });
      },
    });
    await p.process(delivery({}, key('k2')));
    const [a, b] = publisher.sent;
    expect(a?.headers[Headers.RequestId]).toBe('req-k2');
    expect(b?.headers[Headers.RequestId]).toBe('req-k2');
    expect(a?.headers[Headers.IdempotencyKey]).toBe(a?.id);
    expect(a?.id).not.toBe(b?.id);
    expect(a?.id).toMatch(/^eo2-[A-Za-z0-9_-]{32}$/);
    expect(seen[0]).toMatch(/^eo2-/);
    expect(b?.headers['content-type']).toContain('text/plain');
  });

  it('tells the handler where the delivery came from, without its body', async () => {
    let seen: unknown;
    const p = createProcessor({
      consumer: 'billing',
      store: createMemoryStore(),
      ...fast,
      handler: (_: unknown, ctx: HandlerContext) => {
        seen = ctx.delivery;
      },
    });
    const attributes = { 'messaging.destination.partition.id': '2', 'messaging.kafka.offset': 41 };
    await p.process(delivery({}, key('k2d'), { brokerId: 'kafka:orders:2:41', attributes }));
    expect(seen).toEqual({
      destination: 'orders',
      system: 'test',
      brokerId: 'kafka:orders:2:41',
      attributes,
    });
  });

  it('re-publishes outgoing messages that were not confirmed, on the duplicate path, with the same ids', async () => {
    const store = createMemoryStore();
    const publisher = recordingPublisher();
    const warnings: { message: string; meta?: Record<string, unknown> }[] = [];
    let runs = 0;
    const p = createProcessor({
      consumer: 'billing',
      store,
      publisher,
      ...fast,
      logger: {
        debug() {},
        info() {},
        error() {},
        warn: (message, meta) => warnings.push({ message, meta }),
      },
      handler: (_: unknown, ctx: HandlerContext) => {
        runs++;
        ctx.publish('payments', { n: 1 });
      },
    });
    publisher.failing = true;
    const first = await p.process(delivery({}, key('k3')));
    expect(first).toMatchObject({ action: 'defer', outcome: 'publish-failed' });
    // The warning says what the publisher answered (an outside test's missing queue showed only a
    // count of failures in a row).
    expect(warnings).toContainEqual({
      message: 'outgoing publish not confirmed; kept for the next delivery or call of the key',
      meta: expect.objectContaining({
        error: expect.objectContaining({ message: 'broker did not confirm' }),
      }),
    });
    publisher.failing = false;
    const second = await p.process(delivery({}, key('k3')));
    expect(second).toMatchObject({ action: 'ack', outcome: 'duplicate' });
    expect(runs).toBe(1);
    expect(publisher.sent).toHaveLength(1);
    const third = await p.process(delivery({}, key('k3')));
    expect(third.action).toBe('ack');
    expect(publisher.sent).toHaveLength(1);
  });

  it('a published mark the store refuses for a moment is tried again: no later duplicate sends the message again', async () => {
    // An outside test on a server with lock errors: one refused mark left a delivered message
    // unconfirmed in its record for good, and late duplicates sent it again minutes later.
    const memory = createMemoryStore();
    let refusals = 2;
    const store = withFaults(memory, { failWhen: (op) => op === 'markPublished' && refusals-- > 0 });
    const publisher = recordingPublisher();
    const p = createProcessor({
      consumer: 'billing',
      store,
      publisher,
      ...fast,
      handler: (_: unknown, ctx: HandlerContext) => {
        ctx.publish('payments', { n: 1 });
      },
    });
    expect(await p.process(delivery({}, key('mark')))).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(refusals).toBeLessThan(0);
    const record = await memory.get('default:billing:mark');
    expect(record?.state === 'COMPLETED' && record.outgoing.map((m) => m.published)).toEqual([true]);
    expect(await p.process(delivery({}, key('mark')))).toMatchObject({ action: 'ack', outcome: 'duplicate' });
    expect(publisher.sent).toHaveLength(1);
  });

  it('copies of a completed key that arrive together publish its unconfirmed messages once', async () => {
    // After a crash between the completion and the publish confirm, the redelivered message and
    // its duplicates come in one prefetch window (or a Kafka refetch): each one re-published.
    const store = createMemoryStore();
    const publisher = recordingPublisher();
    const slow: OutgoingPublisher = {
      async publish(messages: readonly OutgoingMessage[]) {
        await new Promise((r) => setTimeout(r, 20));
        await publisher.publish(messages);
      },
    };
    const p = createProcessor({
      consumer: 'billing',
      store,
      publisher: slow,
      ...fast,
      handler: (_: unknown, ctx: HandlerContext) => {
        ctx.publish('payments', { n: 1 });
      },
    });
    publisher.failing = true;
    expect(await p.process(delivery({}, key('k3b')))).toMatchObject({ outcome: 'publish-failed' });
    publisher.failing = false;
    const copies = await Promise.all([1, 2, 3].map(() => p.process(delivery({}, key('k3b')))));
    expect(copies.map((d) => d.outcome)).toEqual(['duplicate', 'duplicate', 'duplicate']);
    expect(publisher.sent).toHaveLength(1);
  });

  describe('a copy that reaches another worker just after the completion', () => {
    // Two workers: the first completes the key and is publishing its messages; the copy on the
    // second finds the record COMPLETED with the messages not yet confirmed.
    const setUp = (clock?: { now: number }, publishWaitMs?: number) => {
      const store = createMemoryStore(clock ? { now: () => clock.now } : {});
      let reads = 0;
      const watched = {
        ...store,
        get: (k: string) => {
          reads++;
          return store.get(k);
        },
      };
      const publisher = recordingPublisher();
      const confirm = deferred();
      const worker = (publish: OutgoingPublisher) =>
        createProcessor({
          consumer: 'billing',
          store: watched,
          publisher: publish,
          ...fast,
          leaseMs: 2_000,
          ...(publishWaitMs === undefined ? {} : { publishWaitMs }),
          handler: (_: unknown, ctx: HandlerContext) => {
            ctx.publish('payments', { n: 1 });
          },
        });
      // The first worker's broker confirms when told to (or never: the worker died meanwhile).
      const first = worker({
        async publish(messages) {
          await confirm.promise;
          await publisher.publish(messages);
        },
      });
      const second = worker(publisher);
      const completed = async (k: string) => {
        while ((await store.get(k))?.state !== 'COMPLETED') await new Promise((r) => setTimeout(r, 5));
      };
      return { publisher, confirm, first, second, completed, reads: () => reads };
    };

    it('waits for the first worker to publish, and sends nothing again', async () => {
      const { publisher, confirm, first, second, completed } = setUp();
      const running = first.process(delivery({}, key('k3c')));
      await completed('default:billing:k3c');
      const copy = second.process(delivery({}, key('k3c')));
      await new Promise((r) => setTimeout(r, 100));
      confirm.resolve();
      const d = await copy;
      expect(d).toMatchObject({ action: 'ack', outcome: 'duplicate' });
      expect(d).not.toHaveProperty('republished');
      expect(await running).toMatchObject({ action: 'ack', outcome: 'acquired' });
      expect(publisher.sent).toHaveLength(1);
    });

    it('publishes them itself when the first worker never does (it died after completing)', async () => {
      const { publisher, first, second, completed, reads } = setUp();
      void first.process(delivery({}, key('k3d')));
      await completed('default:billing:k3d');
      const before = reads();
      // Counted (the adapters' stats.republished): a copy on the wire if that worker had sent it.
      expect(await second.process(delivery({}, key('k3d')))).toMatchObject({
        action: 'ack',
        outcome: 'duplicate',
        republished: 1,
      });
      expect(publisher.sent).toHaveLength(1);
      // It watched the record while it waited.
      expect(reads() - before).toBeGreaterThan(1);
    });

    it('publishes them at once with publishWaitMs 0', async () => {
      const { publisher, first, second, completed, reads } = setUp(undefined, 0);
      void first.process(delivery({}, key('k3f')));
      await completed('default:billing:k3f');
      const before = reads();
      expect(await second.process(delivery({}, key('k3f')))).toMatchObject({ outcome: 'duplicate' });
      expect(publisher.sent).toHaveLength(1);
      expect(reads()).toBe(before);
    });

    it('publishes them at once when the completion is older than the wait, on the store clock', async () => {
      const clock = { now: 1_000_000 };
      const { publisher, first, second, completed, reads } = setUp(clock);
      void first.process(delivery({}, key('k3e')));
      await completed('default:billing:k3e');
      clock.now += 2_000;
      const before = reads();
      expect(await second.process(delivery({}, key('k3e')))).toMatchObject({
        action: 'ack',
        outcome: 'duplicate',
      });
      expect(publisher.sent).toHaveLength(1);
      expect(reads()).toBe(before);
    });
  });

  it('defers a delivery of a key another worker is running (busy) instead of running it twice', async () => {
    const gate = deferred();
    let runs = 0;
    const store = createMemoryStore();
    const worker = () =>
      createProcessor({
        consumer: 'c',
        store,
        ...fast,
        handler: async () => {
          runs++;
          await gate.promise;
        },
      });
    const first = worker().process(delivery({}, key('k4')));
    await new Promise((r) => setTimeout(r, 20));
    const second = await worker().process(delivery({}, key('k4')));
    gate.resolve();
    expect(second).toMatchObject({ action: 'defer', outcome: 'busy' });
    expect(await first).toMatchObject({ action: 'ack' });
    expect(runs).toBe(1);
  });

  it('a delivery of a key this worker is running waits for that run and is a duplicate', async () => {
    const gate = deferred();
    let runs = 0;
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      ...fast,
      handler: async () => {
        runs++;
        await gate.promise;
      },
    });
    const first = p.process(delivery({}, key('k5')));
    await new Promise((r) => setTimeout(r, 20));
    const second = p.process(delivery({}, key('k5')));
    await new Promise((r) => setTimeout(r, 20));
    gate.resolve();
    expect(await first).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(await second).toMatchObject({ action: 'ack', outcome: 'duplicate' });
    expect(runs).toBe(1);
  });

  it('stores large results as blobs and answers duplicates with the pointer', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'eo-blobs-'));
    try {
      const blobs = createFsBlobStore({ directory: dir });
      const p = createProcessor({
        consumer: 'c',
        store: createMemoryStore(),
        blobs,
        inlineResultBytes: 64,
        ...fast,
        handler: () => ({ receipt: 'x'.repeat(10_000) }),
      });
      const first = await p.process(delivery({}, key('k5')));
      const dup = await p.process(delivery({}, key('k5')));
      expect(first.action === 'ack' && first.result?.kind).toBe('blob');
      if (dup.action !== 'ack' || dup.result?.kind !== 'blob') throw new Error('expected blob');
      const bytes = await blobs.get(dup.result.pointer);
      expect(JSON.parse(new TextDecoder().decode(bytes)).receipt).toHaveLength(10_000);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('processor: failures', () => {
  it('dead-letters the same key with a different payload as IdempotencyKeyReuse', async () => {
    const p = createProcessor({ consumer: 'c', store: createMemoryStore(), ...fast, handler: () => 1 });
    await p.process(delivery({ amount: 1 }, key('k6')));
    const d = await p.process(delivery({ amount: 2 }, key('k6')));
    expect(d).toMatchObject({ action: 'dead-letter', outcome: 'mismatch' });
    if (d.action === 'dead-letter') expect(d.reason.error.code).toBe('IDEMPOTENCY_KEY_REUSE');
  });

  it('treats key order in JSON as the same payload', async () => {
    const p = createProcessor({ consumer: 'c', store: createMemoryStore(), ...fast, handler: () => 1 });
    await p.process(delivery('{"a":1,"b":2}', key('k7')));
    expect(await p.process(delivery('{"b":2,"a":1}', key('k7')))).toMatchObject({ outcome: 'duplicate' });
  });

  it('retries retryable errors with backoff, then fails and dead-letters; later copies are dead-lettered too', async () => {
    const store = createMemoryStore();
    let runs = 0;
    const p = createProcessor({
      consumer: 'c',
      store,
      ...fast,
      handler: () => {
        runs++;
        throw new Error('provider timeout');
      },
    });
    const d1 = await p.process(delivery({}, key('k8')));
    expect(d1).toMatchObject({ action: 'retry', nextAttempt: 2 });
    const d2 = await p.process(delivery({}, key('k8')));
    expect(d2).toMatchObject({ action: 'retry', nextAttempt: 3 });
    const d3 = await p.process(delivery({}, key('k8')));
    expect(d3).toMatchObject({ action: 'dead-letter' });
    if (d3.action === 'dead-letter') {
      expect(d3.reason.error.code).toBe('ATTEMPTS_EXHAUSTED');
      expect(d3.reason.attempts).toBe(3);
    }
    expect((await store.get('default:c:k8'))?.state).toBe('FAILED');
    const d4 = await p.process(delivery({}, key('k8')));
    expect(d4).toMatchObject({ action: 'dead-letter', outcome: 'failed' });
    expect(runs).toBe(3);
  });

  it('retries a thrown value that throws when read (a hostile Proxy) like any error, never as a store outage', async () => {
    // Found by a review: reading it broke the pipeline's own error path ("unexpected pipeline
    // error"), deferred as store-unavailable, and the letter blamed dead workers.
    const store = createMemoryStore();
    const trap = () => {
      throw new Error('proto trap');
    };
    const hostile = () => new Proxy({}, { get: trap, has: trap, getPrototypeOf: trap, ownKeys: trap });
    const fromCause = () => new Error('wrapped', { cause: hostile() });
    for (const [k, make] of [
      ['k8p', hostile],
      ['k8c', fromCause],
    ] as const) {
      let runs = 0;
      const p = createProcessor({
        consumer: 'c',
        store,
        ...fast,
        handler: async () => {
          runs++;
          throw make();
        },
      });
      expect(await p.process(delivery({}, key(k)))).toMatchObject({ action: 'retry', nextAttempt: 2 });
      await p.process(delivery({}, key(k)));
      const last = await p.process(delivery({}, key(k)));
      expect(last).toMatchObject({ action: 'dead-letter' });
      if (last.action === 'dead-letter') {
        expect(last.reason.error.code).toBe('ATTEMPTS_EXHAUSTED');
        expect(last.reason.error.message).toMatch(/cannot be read .*proto trap/);
      }
      expect(runs).toBe(3);
    }
  });

  /**
   * A processor on a memory store with its own clock, and workers that begin a key behind its back:
   * `died` is one that dies before its handler starts (its lease runs out).
   */
  const withDeadWorkers = (maxTakeoverAttempts: number, handler = () => 'done') => {
    let clock = 1_000_000;
    const store = createMemoryStore({ now: () => clock });
    const runs = { count: 0 };
    const p = createProcessor({
      consumer: 'c',
      store,
      ...fast,
      maxTakeoverAttempts,
      handler: () => {
        runs.count++;
        return handler();
      },
    });
    const begin = async (k: string) => {
      const begun = await store.begin({
        key: `default:c:${k}`,
        fingerprint: fingerprint({}),
        owner: 'w',
        leaseMs: 300,
      });
      if (begun.status !== 'acquired') throw new Error(`begin answered ${begun.status}`);
      return begun;
    };
    const died = async (k: string) => {
      await begin(k);
      clock += 301;
    };
    return { store, p, runs, begin, died };
  };

  it('runs takeovers past retry.maxAttempts up to maxTakeoverAttempts: dead workers may never have started the handler', async () => {
    // Found under SIGKILL storms: every worker that died took an attempt from each key it had
    // begun, so innocent keys that never ran were dead-lettered as ATTEMPTS_EXHAUSTED.
    const { store, p, runs, died } = withDeadWorkers(6);
    for (let i = 0; i < 5; i++) await died('k8t'); // attempts 1-5: more than maxAttempts (3)
    expect(await p.process(delivery({}, key('k8t')))).toMatchObject({ action: 'ack', outcome: 'takeover' });
    expect(runs.count).toBe(1);
    // A message that kills its worker every time still ends: FAILED past maxTakeoverAttempts.
    for (let i = 0; i < 6; i++) await died('k8u');
    const last = await p.process(delivery({}, key('k8u')));
    expect(last).toMatchObject({ action: 'dead-letter' });
    if (last.action === 'dead-letter') {
      expect(last.reason.error.code).toBe('ATTEMPTS_EXHAUSTED');
      expect(last.reason.attempts).toBe(6);
    }
    expect(runs.count).toBe(1);
    expect(() => createProcessor({ consumer: 'c', store, handler: () => 1, maxTakeoverAttempts: 0 })).toThrow(
      /maxTakeoverAttempts must be an integer >= 1/,
    );
  });

  it('a handler error after takeovers past retry.maxAttempts is final, and its reason says why', async () => {
    // Found under SIGKILL storms: "gave up after 9 attempts" for a message whose handler ran once.
    const { p, runs, died } = withDeadWorkers(20, () => {
      throw new Error('gateway timeout');
    });
    for (let i = 0; i < 5; i++) await died('k8e');
    const last = await p.process(delivery({}, key('k8e')));
    expect(runs.count).toBe(1);
    if (last.action !== 'dead-letter') throw new Error(`expected a dead letter, got ${last.action}`);
    expect(last.reason.error.message).toBe(
      'gave up after 6 attempts (at least 3 of them cut short by a worker that died or stalled holding the key): gateway timeout',
    );
  });

  it('a lease given back unrun after takeovers passed retry.maxAttempts: the next begin (a retry) runs the handler', async () => {
    // Found under rebalances and SIGKILLs on a slow store: dead workers' takeovers counted the key
    // past retry.maxAttempts, a batch then gave a begun lease back unrun, and the next begin, a
    // `retry`, was held to retry.maxAttempts: an innocent payment dead-lettered ATTEMPTS_EXHAUSTED.
    const { store, p, runs, begin, died } = withDeadWorkers(20);
    for (let i = 0; i < 5; i++) await died('k8v'); // attempts 1-5
    const given = await begin('k8v'); // attempt 6, given back before its handler's turn
    const notRun = { name: 'E', code: 'E', message: '' };
    expect(await store.release('default:c:k8v', given.fence, notRun, { notRun: true })).toBe('ok');
    expect(await p.process(delivery({}, key('k8v')))).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(runs.count).toBe(1);
  });

  it('dead-letters a PermanentError at once', async () => {
    let runs = 0;
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      ...fast,
      handler: () => {
        runs++;
        throw new PermanentError('card declined');
      },
    });
    const d = await p.process(delivery({}, key('k9')));
    expect(d).toMatchObject({ action: 'dead-letter' });
    if (d.action === 'dead-letter')
      expect(d.reason.error).toMatchObject({ code: 'PERMANENT', message: 'card declined' });
    expect(runs).toBe(1);
  });

  it("a PermanentError of the handler's own class names the letter; the warning names the request id", async () => {
    // An outside test had no reason of its own for a letter, and could tie the warning to its
    // message only by its time.
    class TransferReversedError extends PermanentError {
      override name = 'TransferReversedError';
    }
    const warned: { message: string; meta: Record<string, unknown> }[] = [];
    const quiet = () => {};
    const p = createProcessor({
      consumer: 'transfers',
      store: createMemoryStore(),
      ...fast,
      logger: {
        debug: quiet,
        info: quiet,
        warn: (message: string, meta?: Record<string, unknown>) => warned.push({ message, meta: meta ?? {} }),
        error: quiet,
      },
      handler: () => {
        throw new TransferReversedError('credit refused: account closed; debit refunded');
      },
    });
    const d = await p.process(delivery({}, key('t-1')));
    expect(d.action === 'dead-letter' && deadLetterHeaders(d.reason)).toMatchObject({
      'x-eo-error-class': 'TransferReversedError',
      'x-eo-error-code': 'PERMANENT',
    });
    // No request id header: the key is not logged in its place (recordKeys is off).
    await p.process(delivery({}, { [Headers.IdempotencyKey]: 't-2' }));
    const lines = warned.filter((w) => w.message === 'dead-lettering message');
    expect(lines.map((w) => w.meta.requestId)).toEqual(['req-t-1', undefined]);
    expect(JSON.stringify(lines)).not.toContain('t-2');
  });

  it.each([
    ['a handler result', (_: HandlerContext) => ({ amount: 10n })],
    ['a step result', (ctx: HandlerContext) => ctx.step('charge', async () => ({ id: 1n }))],
    ['a published message', (ctx: HandlerContext) => ctx.publish('payments', { amount: 10n })],
    // Before: stored as `{}` (an object of indexes for bytes), and answered so to duplicates.
    ['a Map result', (_: HandlerContext) => new Map([['amount', 10]])],
    ['a Set result', (_: HandlerContext) => new Set([10])],
    ['a Uint8Array result', (_: HandlerContext) => new Uint8Array([1, 2])],
  ])(
    'dead-letters %s JSON cannot hold (UnencodableValueError) once, without running it again',
    async (_, body) => {
      // Before: a handler result was taken for a store outage and a step's or message's TypeError
      // for a retryable one; each run repeated the effect (5 charges) before AttemptsExhausted.
      const store = createMemoryStore();
      let runs = 0;
      const p = createProcessor({
        consumer: 'billing',
        store,
        publisher: recordingPublisher(),
        ...fast,
        handler: async (_order, ctx) => {
          runs++;
          return body(ctx);
        },
      });
      const first = await p.process(delivery({ amount: 10 }, key('big')));
      expect(first).toMatchObject({ action: 'dead-letter', outcome: 'failed' });
      expect(first.action === 'dead-letter' && first.reason.error).toMatchObject({
        name: 'UnencodableValueError',
        code: 'PERMANENT',
      });
      // The copy's letter names the failure behind it.
      const again = await p.process(delivery({ amount: 10 }, key('big')));
      expect(again).toMatchObject({
        action: 'dead-letter',
        reason: { error: { code: 'PREVIOUSLY_FAILED', originalCode: 'PERMANENT' } },
      });
      if (again.action === 'dead-letter') {
        expect(deadLetterHeaders(again.reason)).toMatchObject({
          'x-eo-error-code': 'PREVIOUSLY_FAILED',
          'x-eo-original-error-code': 'PERMANENT',
        });
      }
      expect(runs).toBe(1);
      expect(await store.get('default:billing:big')).toMatchObject({ state: 'FAILED' });
    },
  );

  it('dead-letters malformed bodies and messages without a key, never running the handler', async () => {
    let runs = 0;
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      ...fast,
      handler: () => {
        runs++;
      },
    });
    const bad = await p.process(delivery('{not json', key('k10')));
    expect(bad).toMatchObject({ action: 'dead-letter', outcome: 'invalid' });
    if (bad.action === 'dead-letter') expect(bad.reason.error.code).toBe('MALFORMED_MESSAGE');
    const nokey = await p.process(delivery({}, {}));
    if (nokey.action !== 'dead-letter') throw new Error('expected dead-letter');
    expect(nokey.reason.error.code).toBe('KEY_MISSING');
    const badKey = await p.process(delivery({}, { [Headers.IdempotencyKey]: new Uint8Array([0xff, 0xfe]) }));
    if (badKey.action !== 'dead-letter') throw new Error('expected dead-letter');
    expect(badKey.reason.error.code).toBe('INVALID_KEY');
    expect(runs).toBe(0);
  });

  it('derives keys by policy: payload hash and broker id', async () => {
    const store = createMemoryStore();
    let runs = 0;
    const byHash = createProcessor({
      consumer: 'h',
      store,
      missingKey: 'payload-hash',
      ...fast,
      handler: () => {
        runs++;
      },
    });
    await byHash.process(delivery({ a: 1 }));
    expect(await byHash.process(delivery({ a: 1 }))).toMatchObject({ outcome: 'duplicate' });
    const byBroker = createProcessor({
      consumer: 'b',
      store,
      missingKey: 'broker-id',
      ...fast,
      handler: () => {
        runs++;
      },
    });
    await byBroker.process(delivery({ a: 1 }, {}, { brokerId: 'kafka:t:0:42' }));
    expect(await byBroker.process(delivery({ a: 1 }, {}, { brokerId: 'kafka:t:0:42' }))).toMatchObject({
      outcome: 'duplicate',
    });
    expect(runs).toBe(2);
  });

  it('hashes keys longer than 255 bytes', async () => {
    const store = createMemoryStore();
    const p = createProcessor({ consumer: 'c', store, ...fast, handler: () => 1 });
    await p.process(delivery({}, { [Headers.IdempotencyKey]: 'k'.repeat(300) }));
    const rec = await store.get(
      `default:c:sha256:${(await import('../src/keys.js')).sha256Hex('k'.repeat(300))}`,
    );
    expect(rec?.state).toBe('COMPLETED');
  });

  it('never acks while the store is down', async () => {
    let down = true;
    const store = withFaults(createMemoryStore(), { failWhen: () => down });
    let runs = 0;
    const p = createProcessor({
      consumer: 'c',
      store,
      ...fast,
      handler: () => {
        runs++;
      },
    });
    expect(await p.process(delivery({}, key('k11')))).toMatchObject({
      action: 'defer',
      outcome: 'store-unavailable',
    });
    down = false;
    expect(await p.process(delivery({}, key('k11')))).toMatchObject({ action: 'ack' });
    expect(runs).toBe(1);
  });

  it('does not ack when complete fails for maxRunMs, and the next delivery takes over and completes', async () => {
    let failComplete = true;
    const store = withFaults(createMemoryStore(), { failWhen: (op) => op === 'complete' && failComplete });
    let runs = 0;
    const p = createProcessor({
      consumer: 'c',
      store,
      ...fast,
      leaseMs: 60,
      heartbeatMs: 20,
      maxRunMs: 150,
      handler: () => {
        runs++;
      },
    });
    expect(await p.process(delivery({}, key('k12')))).toMatchObject({ action: 'defer' });
    failComplete = false;
    await new Promise((r) => setTimeout(r, 80));
    expect(await p.process(delivery({}, key('k12')))).toMatchObject({ action: 'ack', outcome: 'takeover' });
    expect(runs).toBe(2);
  });

  it('tries a failed complete again while the lease lasts: acked on this delivery, the handler run once', async () => {
    // A Cluster slot in migration refuses a call for a moment; so does a reconnecting client.
    let refusals = 2;
    const store = createMemoryStore();
    const p = createProcessor({
      consumer: 'c',
      store: withFaults(store, { failWhen: (op) => op === 'complete' && refusals-- > 0 }),
      ...fast,
      leaseMs: 5_000,
      handler: () => {
        runs++;
      },
    });
    let runs = 0;
    expect(await p.process(delivery({}, key('k12b')))).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(runs).toBe(1);
    expect(await store.get('default:c:k12b')).toMatchObject({ state: 'COMPLETED', attempt: 1 });
  });

  it("a completion refused past the lease's local end is tried until the store answers: the handler runs once", async () => {
    // As a step's journal write (see steps.test.ts): the handler's effect happened, the completion
    // and the heartbeat met a store refusing calls for longer than the lease, and the completion
    // given up at the lease's local end left the key to a takeover that ran the handler again.
    let down = false;
    let effects = 0;
    const p = createProcessor({
      consumer: 'c',
      store: withFaults(createMemoryStore(), {
        failWhen: (op) => down && (op === 'extend' || op === 'complete'),
      }),
      ...fast,
      leaseMs: 200,
      heartbeatMs: 50,
      handler: () => {
        // Down from the first effect on, for twice the lease.
        if (++effects > 1) return;
        down = true;
        setTimeout(() => {
          down = false;
        }, 400);
      },
    });
    let d = await p.process(delivery({}, key('slow-complete')));
    for (let i = 0; i < 10 && d.action !== 'ack'; i++) {
      await sleep(50);
      d = await p.process(delivery({}, key('slow-complete')));
    }
    expect(effects).toBe(1);
    expect(d).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(effects).toBe(1);
  });

  it("a copy that arrives while its key's run still tries its completion waits for that run: no takeover, the handler runs once", async () => {
    // A Kafka record fetched again, or a message redelivered, as the store comes back from an
    // outage longer than the lease: the copy's begin found the lease run out and took the key
    // over, while the first run's completion waited for its next try.
    let down = false;
    let effects = 0;
    const p = createProcessor({
      consumer: 'c',
      store: withFaults(createMemoryStore(), { failWhen: (op) => down && op !== 'get' }),
      ...fast,
      leaseMs: 200,
      heartbeatMs: 50,
      handler: () => {
        if (++effects === 1) down = true;
      },
    });
    const first = p.process(delivery({}, key('copy-in-outage')));
    // Past the lease; the completion's next try is due some 250 ms after the store is back.
    await sleep(450);
    down = false;
    const copy = await p.process(delivery({}, key('copy-in-outage')));
    expect(await first).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(copy).toMatchObject({ action: 'ack', outcome: 'duplicate' });
    expect(effects).toBe(1);
  });

  it("a completion tried past its run is ended by the consumer's stop (abortRuns): not acked", async () => {
    const p = createProcessor({
      consumer: 'c',
      store: withFaults(createMemoryStore(), { failWhen: (op) => op === 'complete' }),
      ...fast,
      handler: () => 'done',
    });
    const processing = p.process(delivery({}, key('cut-complete')));
    await sleep(150);
    expect(p.abortRuns()).toBe(0); // no handler is running: only the write is ended
    expect(await processing).toMatchObject({ action: 'defer', outcome: 'store-unavailable' });
  });

  it('a complete whose write landed but whose answer was lost is asked again and answered ok', async () => {
    let loseOne = true;
    const store = createMemoryStore();
    const p = createProcessor({
      consumer: 'c',
      store: withFaults(store, {
        failWhen: () => false,
        loseReplyWhen: (op) => {
          if (op !== 'complete' || !loseOne) return false;
          loseOne = false;
          return true;
        },
      }),
      ...fast,
      leaseMs: 5_000,
      handler: () => ({ charged: ++runs }),
    });
    let runs = 0;
    expect(await p.process(delivery({}, key('k12c')))).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(runs).toBe(1);
    expect(await p.process(delivery({}, key('k12c')))).toMatchObject({ action: 'ack', outcome: 'duplicate' });
    expect(runs).toBe(1);
  });
});

describe('processor: a fail or a release the store refused or whose answer was lost', () => {
  /** The two ways a store write `op` can fail twice: refused, or landed with its answer lost. */
  const failingTwice = (op: string) => {
    const twice = () => {
      let left = 2;
      return (called: string) => called === op && left-- > 0;
    };
    return [
      ['refused twice', () => ({ failWhen: twice() })],
      ['landed, its answer lost', () => ({ failWhen: () => false, loseReplyWhen: twice() })],
    ] as const;
  };
  const withFaultyStore = (faults: Parameters<typeof withFaults>[1], handler: () => unknown) => {
    const store = createMemoryStore();
    const p = createProcessor({
      consumer: 'c',
      store: withFaults(store, faults),
      ...fast,
      leaseMs: 60_000,
      handler,
    });
    return { store, p };
  };

  // Before, the message was deferred and its redelivery took the key over after one lease and
  // ran the handler again before dead-lettering it.
  it.each(failingTwice('fail'))(
    'fail %s: tried again while the lease lasts, dead-lettered on this delivery, the handler run once',
    async (_, faults) => {
      let runs = 0;
      const { store, p } = withFaultyStore(faults(), () => {
        runs++;
        throw new PermanentError('card declined');
      });
      expect(await p.process(delivery({}, key('kf1')))).toMatchObject({
        action: 'dead-letter',
        outcome: 'failed',
      });
      expect(runs).toBe(1);
      expect(await store.get('default:c:kf1')).toMatchObject({ state: 'FAILED', attempt: 1 });
      expect(await p.process(delivery({}, key('kf1')))).toMatchObject({ action: 'dead-letter' });
      expect(runs).toBe(1);
    },
  );

  // Before, the message was deferred and its retry waited out the lease (a takeover).
  it.each(failingTwice('release'))(
    'release %s: tried again while the lease lasts, and the retry runs at once',
    async (_, faults) => {
      let runs = 0;
      const { store, p } = withFaultyStore(faults(), () => {
        if (++runs === 1) throw new Error('gateway timeout');
        return 'charged';
      });
      expect(await p.process(delivery({}, key('kr1')))).toMatchObject({ action: 'retry', nextAttempt: 2 });
      expect(await p.process(delivery({}, key('kr1')))).toMatchObject({ action: 'ack', outcome: 'acquired' });
      expect(runs).toBe(2);
      expect(await store.get('default:c:kr1')).toMatchObject({ state: 'COMPLETED', attempt: 2 });
    },
  );
});

describe('processor: leases and steps', () => {
  it('a worker that lost its lease cannot complete; its signal aborts; the new owner completes', async () => {
    const store = createMemoryStore();
    let extendsFail = true;
    const slowStore = withFaults(store, { failWhen: (op) => op === 'extend' && extendsFail });
    const gate = deferred();
    let aborted = false;
    const warned: string[] = [];
    const warnedMeta: unknown[] = [];
    const quiet = () => undefined;
    const stale = createProcessor({
      consumer: 'c',
      store: slowStore,
      ...fast,
      leaseMs: 60,
      heartbeatMs: 20,
      logger: {
        debug: quiet,
        info: quiet,
        warn: (message: string, meta?: unknown) => {
          warned.push(message);
          warnedMeta.push(meta);
        },
        error: quiet,
      },
      handler: async (_: unknown, ctx: HandlerContext) => {
        ctx.signal.addEventListener('abort', () => {
          aborted = true;
        });
        await gate.promise;
        return 'stale';
      },
    });
    const tookOver: string[] = [];
    const tookOverMeta: unknown[] = [];
    const fresh = createProcessor({
      consumer: 'c',
      store,
      ...fast,
      logger: {
        debug: quiet,
        info: quiet,
        warn: (message: string, meta?: unknown) => {
          tookOver.push(message);
          tookOverMeta.push(meta);
        },
        error: quiet,
      },
      handler: () => 'fresh',
    });
    const staleRun = stale.process(delivery({}, key('k13')));
    await new Promise((r) => setTimeout(r, 120));
    const takeover = await fresh.process(delivery({}, key('k13')));
    expect(takeover).toMatchObject({ action: 'ack', outcome: 'takeover' });
    extendsFail = false;
    gate.resolve();
    expect(await staleRun).toMatchObject({ action: 'defer', outcome: 'lease-lost' });
    expect(aborted).toBe(true);
    // Said once, at warn: its effects outside steps may repeat (before, only the stats showed it).
    expect(warned.filter((m) => m.startsWith('lease lost'))).toHaveLength(1);
    // With the request id: an outside test could not tie the line to a payment (the key is
    // logged only with recordKeys).
    expect(warnedMeta[warned.findIndex((m) => m.startsWith('lease lost'))]).toMatchObject({
      requestId: 'req-k13',
      destination: 'orders',
    });
    // The worker that took over says so (after a SIGKILL, the only line in the logs about it).
    expect(tookOver).toEqual([
      expect.stringMatching(
        /^taking over a key whose last holder died, stalled or could not reach the store/,
      ),
    ]);
    // With the request id, which is always logged: what the run's trace and letters are found by.
    expect(tookOverMeta[0]).toMatchObject({
      requestId: expect.any(String),
      attempt: 2,
      destination: 'orders',
    });
    const rec = await store.get('default:c:k13');
    if (rec?.state !== 'COMPLETED' || rec.result?.kind !== 'inline') throw new Error('expected completed');
    expect(new TextDecoder().decode(rec.result.data)).toBe('"fresh"');
  });

  it('a store outage during a run is not warned about once per held lease and retry (its health watch logs it)', async () => {
    // Before: every held lease logged a warning at every retry of its extension (every 50 ms),
    // 41 warnings in 20 s for a prefetch window of 20 runs.
    let down = false;
    const logged: { level: string; message: string }[] = [];
    const log = (level: string) => (message: string) => logged.push({ level, message });
    const gate = deferred();
    const p = createProcessor({
      consumer: 'c',
      store: withFaults(createMemoryStore(), { failWhen: (op) => down && op === 'extend' }),
      ...fast,
      leaseMs: 400,
      heartbeatMs: 20,
      logger: { debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error') },
      handler: async () => {
        down = true;
        await gate.promise;
        return 'ok';
      },
    });
    const runs = [1, 2, 3].map((n) => p.process(delivery({}, key(`outage-${n}`))));
    await new Promise((r) => setTimeout(r, 200));
    down = false;
    gate.resolve();
    for (const run of runs) expect(await run).toMatchObject({ action: 'ack' });
    const heartbeats = logged.filter((l) => l.message === 'lease heartbeat failed');
    expect(heartbeats.length).toBeGreaterThan(3);
    expect(heartbeats.every((l) => l.level === 'debug')).toBe(true);
    // The outage itself: one warning as it starts.
    expect(logged.filter((l) => l.level === 'warn').map((l) => l.message)).toEqual([
      expect.stringMatching(/^processed-store unavailable/),
    ]);
  });

  it('journals steps: a retry skips steps that already succeeded', async () => {
    const calls: string[] = [];
    let failEmail = true;
    const p = createProcessor({
      consumer: 'renewal',
      store: createMemoryStore(),
      ...fast,
      handler: async (_: unknown, ctx: HandlerContext) => {
        const charge = await ctx.step('charge', () => {
          calls.push('charge');
          return { id: 'ch_1', key: ctx.keyFor('charge') };
        });
        await ctx.step('email', () => {
          calls.push('email');
          if (failEmail) throw new Error('smtp down');
          return true;
        });
        return charge;
      },
    });
    expect(await p.process(delivery({}, key('k14')))).toMatchObject({ action: 'retry' });
    failEmail = false;
    const d = await p.process(delivery({}, key('k14')));
    expect(d).toMatchObject({ action: 'ack' });
    expect(calls).toEqual(['charge', 'email', 'email']);
  });

  it('keyFor is the same on every attempt and differs per name and per consumer', async () => {
    const keys: string[] = [];
    let fail = true;
    const mk = (consumer: string) =>
      createProcessor({
        consumer,
        store: createMemoryStore(),
        ...fast,
        handler: (_: unknown, ctx: HandlerContext) => {
          keys.push(ctx.keyFor('charge'), ctx.keyFor('refund'));
          if (fail) throw new Error('again');
        },
      });
    const a = mk('a');
    await a.process(delivery({}, key('k15')));
    fail = false;
    await a.process(delivery({}, key('k15')));
    await mk('b').process(delivery({}, key('k15')));
    expect(keys[0]).toBe(keys[2]);
    expect(keys[0]).not.toBe(keys[1]);
    expect(keys[4]).not.toBe(keys[0]);
  });
});
