import { type Meter, type MeterProvider, metrics } from '@opentelemetry/api';
import { afterEach, describe, expect, it } from 'vitest';
import type { HandlerContext } from '../src/context.js';
import { ConfigError, PermanentError } from '../src/errors.js';
import { Headers } from '../src/headers.js';
import { recordKeyFor } from '../src/keys.js';
import { createProcessor } from '../src/processor.js';
import type { StepEvent } from '../src/steps.js';
import { withFaults } from '../src/store/faulty-store.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import type { FencedResult, ProcessedStore } from '../src/store/types.js';
import { deferred, delivery, recordingPublisher, withHeldExtensions } from './helpers.js';

const key = (k: string) => ({ [Headers.IdempotencyKey]: k, [Headers.RequestId]: `req-${k}` });
const fast = { leaseMs: 300, retentionCheck: 'off' as const, retry: { maxAttempts: 5, initialDelayMs: 5 } };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A network error the caller cannot tell from "not charged". */
class ResponseLost extends Error {
  override name = 'ResponseLost';
}

/**
 * A payment provider that charges on every call (it ignores idempotency keys, the worst case), and
 * can lose the response of a charge it made. Charges can be looked up by the key they were made with.
 */
function fakeProvider() {
  const provider = {
    charges: [] as { id: string; key: string; amount: number }[],
    chargeCalls: 0,
    lookups: 0,
    loseNextResponse: false,
    charge(idempotencyKey: string, amount: number) {
      provider.chargeCalls++;
      const charge = { id: `ch_${provider.charges.length + 1}`, key: idempotencyKey, amount };
      provider.charges.push(charge);
      if (provider.loseNextResponse) {
        provider.loseNextResponse = false;
        throw new ResponseLost('socket hang up after the request was sent');
      }
      return charge;
    },
    lookup(idempotencyKey: string) {
      provider.lookups++;
      return provider.charges.find((c) => c.key === idempotencyKey);
    },
  };
  return provider;
}

type Provider = ReturnType<typeof fakeProvider>;

const chargeStep = (ctx: HandlerContext, provider: Provider) =>
  ctx.step('charge', () => provider.charge(ctx.keyFor('charge'), 100), {
    reconcile: ({ key }) => {
      const found = provider.lookup(key);
      return found ? { done: true, value: found } : { done: false };
    },
  });

/** Counts store writes per operation (spreads the store, so optional methods pass through). */
function counting(store: ProcessedStore) {
  const writes: string[] = [];
  const mark = store.markStepStarted?.bind(store);
  const count = (write: string) => {
    writes.push(write);
  };
  const wrapped: ProcessedStore = {
    ...store,
    complete: (r) => {
      count('complete');
      return store.complete(r);
    },
    release: (k, f, e) => {
      count('release');
      return store.release(k, f, e);
    },
    saveStep: (k, f, n, r) => {
      count(`saveStep:${n}`);
      return store.saveStep(k, f, n, r);
    },
    ...(mark === undefined
      ? {}
      : {
          markStepStarted: (k: string, f: number, n: string) => {
            count(`started:${n}`);
            return mark(k, f, n);
          },
        }),
  };
  delete (wrapped as { beginMany?: unknown }).beginMany;
  delete (wrapped as { completeMany?: unknown }).completeMany;
  return { store: wrapped, writes };
}

describe('steps: in-doubt steps and reconcile (S3: the provider charged, the response was lost)', () => {
  it('a retry reconciles by the idempotency key and never charges twice', async () => {
    const provider = fakeProvider();
    provider.loseNextResponse = true;
    const store = createMemoryStore();
    const seen: { attempt: number; charge: unknown }[] = [];
    const p = createProcessor({
      consumer: 'payments',
      store,
      ...fast,
      handler: async (_: unknown, ctx: HandlerContext) => {
        const charge = await chargeStep(ctx, provider);
        seen.push({ attempt: ctx.attempt, charge });
        return charge;
      },
    });

    // Attempt 1: charged at the provider, the response is lost, the run fails (retryable).
    expect(await p.process(delivery({}, key('s3')))).toMatchObject({ action: 'retry' });
    const between = await store.get('default:payments:s3');
    expect(between?.state === 'IN_PROGRESS' && between.steps.charge?.state).toBe('started');
    expect(provider.chargeCalls).toBe(1);

    // Attempt 2: the step is in doubt; reconcile finds the charge, fn does not run.
    expect(await p.process(delivery({}, key('s3')))).toMatchObject({ action: 'ack' });
    expect(provider.chargeCalls).toBe(1);
    expect(provider.charges).toHaveLength(1);
    expect(provider.lookups).toBe(1);
    expect(seen).toEqual([
      { attempt: 2, charge: { id: 'ch_1', key: provider.charges[0]?.key, amount: 100 } },
    ]);

    // A redelivery is a duplicate: nothing runs at all.
    expect(await p.process(delivery({}, key('s3')))).toMatchObject({ outcome: 'duplicate' });
    expect(provider.chargeCalls).toBe(1);
  });

  it('a takeover after the worker stalled mid-charge reconciles too', async () => {
    const provider = fakeProvider();
    const store = createMemoryStore();
    let cutOff = false;
    // Worker A's heartbeats stop reaching the store once it stalls: its lease runs out.
    const cutStore: ProcessedStore = {
      ...store,
      extend: async (k, f, l): Promise<FencedResult> => (cutOff ? 'lost' : store.extend(k, f, l)),
    };
    const handlerFor =
      (stall: boolean) =>
      async (_: unknown, ctx: HandlerContext): Promise<unknown> =>
        ctx.step(
          'charge',
          async (signal) => {
            const charge = provider.charge(ctx.keyFor('charge'), 100);
            if (stall) {
              // The process freezes between the provider's answer and the journal write.
              cutOff = true;
              await new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason)));
            }
            return charge;
          },
          {
            reconcile: ({ key: k, attempt, startedAt }) => {
              expect(attempt).toBe(2);
              expect(startedAt).toBeGreaterThan(0);
              const found = provider.lookup(k);
              return found ? { done: true, value: found } : { done: false };
            },
          },
        );
    const a = createProcessor({ consumer: 'payments', store: cutStore, ...fast, handler: handlerFor(true) });
    const b = createProcessor({ consumer: 'payments', store, ...fast, handler: handlerFor(false) });

    expect(await a.process(delivery({}, key('s3-takeover')))).toMatchObject({ outcome: 'lease-lost' });
    await sleep(fast.leaseMs + 100);
    const d = await b.process(delivery({}, key('s3-takeover')));
    expect(d).toMatchObject({ action: 'ack', outcome: 'takeover' });
    expect(provider.chargeCalls).toBe(1);
    const rec = await store.get('default:payments:s3-takeover');
    if (rec?.state !== 'COMPLETED' || rec.result?.kind !== 'inline') throw new Error('expected completed');
    expect(JSON.parse(new TextDecoder().decode(rec.result.data))).toMatchObject({ id: 'ch_1' });
  });

  it('reconcile saying not done runs fn (same idempotency key) and journals its result', async () => {
    const provider = fakeProvider();
    const store = createMemoryStore();
    let failBeforeCharging = true;
    const keys: string[] = [];
    const p = createProcessor({
      consumer: 'payments',
      store,
      ...fast,
      handler: (_: unknown, ctx: HandlerContext) =>
        ctx.step(
          'charge',
          () => {
            keys.push(ctx.keyFor('charge'));
            // The request never left: no charge at the provider.
            if (failBeforeCharging) throw new ResponseLost('connect ECONNREFUSED');
            return provider.charge(ctx.keyFor('charge'), 100);
          },
          {
            reconcile: ({ key: k }) => {
              const found = provider.lookup(k);
              return found ? { done: true, value: found } : { done: false };
            },
          },
        ),
    });
    expect(await p.process(delivery({}, key('nd')))).toMatchObject({ action: 'retry' });
    failBeforeCharging = false;
    expect(await p.process(delivery({}, key('nd')))).toMatchObject({ action: 'ack' });
    expect(provider.lookups).toBe(1);
    expect(provider.chargeCalls).toBe(1);
    expect(new Set(keys).size).toBe(1);
  });

  it('a reconcile that answers nothing usable fails the message at once (PermanentError), fn never runs', async () => {
    // Before: a TypeError, retried on every attempt until AttemptsExhausted.
    const store = createMemoryStore();
    let started = false;
    let calls = 0;
    const p = createProcessor({
      consumer: 'payments',
      store,
      ...fast,
      handler: (_: unknown, ctx: HandlerContext) =>
        ctx.step(
          'charge',
          () => {
            calls++;
            if (!started) {
              started = true;
              throw new ResponseLost('socket hang up');
            }
            return 'charged';
          },
          { reconcile: () => undefined as never },
        ),
    });
    expect(await p.process(delivery({}, key('bad-reconcile')))).toMatchObject({ action: 'retry' });
    const d = await p.process(delivery({}, key('bad-reconcile')));
    expect(d).toMatchObject({ action: 'dead-letter', outcome: 'failed' });
    expect(d.action === 'dead-letter' && d.reason.error.message).toMatch(/reconcile must answer/);
    expect(calls).toBe(1);
  });

  it('costs one extra store write per reconcile step, none for a plain step', async () => {
    const { store, writes } = counting(createMemoryStore());
    const provider = fakeProvider();
    const p = createProcessor({
      consumer: 'c',
      store,
      ...fast,
      handler: async (_: unknown, ctx: HandlerContext) => {
        await ctx.step('plain', () => 1);
        await chargeStep(ctx, provider);
        await ctx.step('retried', () => 2, {
          retry: { maxAttempts: 3 },
          onGiveUp: 'continue',
          alertAfter: 2,
        });
        return 'ok';
      },
    });
    expect(await p.process(delivery({}, key('cost')))).toMatchObject({ action: 'ack' });
    expect(writes).toEqual([
      'saveStep:plain',
      'started:charge',
      'saveStep:charge',
      'saveStep:retried',
      'complete',
    ]);
  });

  it('a done step replays without reconcile; a started step without reconcile runs fn again', async () => {
    const store = createMemoryStore();
    const calls: string[] = [];
    let fail = true;
    let withReconcile = true;
    const p = createProcessor({
      consumer: 'c',
      store,
      ...fast,
      handler: async (_: unknown, ctx: HandlerContext) => {
        await ctx.step('a', () => calls.push('a'), {
          reconcile: () => {
            calls.push('reconcile-a');
            return { done: false };
          },
        });
        await ctx.step(
          'b',
          () => {
            calls.push('b');
            if (fail) throw new Error('b failed');
          },
          withReconcile
            ? {
                reconcile: () => {
                  calls.push('reconcile-b');
                  return { done: false };
                },
              }
            : {},
        );
        return null;
      },
    });
    expect(await p.process(delivery({}, key('rep')))).toMatchObject({ action: 'retry' });
    fail = false;
    withReconcile = false; // a deploy dropped reconcile: the old behaviour, fn runs blind
    expect(await p.process(delivery({}, key('rep')))).toMatchObject({ action: 'ack' });
    expect(calls).toEqual(['a', 'b', 'b']);
  });

  it('reconcile needs a store that journals step starts: otherwise a ConfigError, and fn never runs', async () => {
    const inner = createMemoryStore();
    const { markStepStarted: _, ...withoutMark } = inner;
    let ran = false;
    let caught: unknown;
    const p = createProcessor({
      consumer: 'c',
      store: withoutMark,
      ...fast,
      handler: async (_: unknown, ctx: HandlerContext) => {
        try {
          await ctx.step('charge', () => (ran = true), { reconcile: () => ({ done: false }) });
        } catch (error) {
          caught = error;
        }
        return null;
      },
    });
    await p.process(delivery({}, key('nomark')));
    expect(caught).toBeInstanceOf(ConfigError);
    expect(ran).toBe(false);
  });

  it('an error from reconcile reaches the handler and fn does not run', async () => {
    const store = createMemoryStore();
    let fnCalls = 0;
    let attempt = 0;
    const p = createProcessor({
      consumer: 'c',
      store,
      ...fast,
      handler: async (_: unknown, ctx: HandlerContext) => {
        attempt = ctx.attempt;
        return ctx.step(
          'charge',
          () => {
            fnCalls++;
            throw new ResponseLost('lost');
          },
          {
            reconcile: () => {
              throw new PermanentError('provider lookup refused');
            },
          },
        );
      },
    });
    expect(await p.process(delivery({}, key('rerr')))).toMatchObject({ action: 'retry' });
    expect(await p.process(delivery({}, key('rerr')))).toMatchObject({ outcome: 'failed' });
    expect(attempt).toBe(2);
    expect(fnCalls).toBe(1);
  });
});

describe('steps: per-step retry, give-up and alerts (S8: payment, email, status)', () => {
  afterEach(() => metrics.disable());

  it("onGiveUp 'continue' resolves with the fallback after the retries, journals it, and emits give-up", async () => {
    const store = createMemoryStore();
    const events: StepEvent[] = [];
    let emailCalls = 0;
    let failAfter = true;
    const results: unknown[] = [];
    const p = createProcessor({
      consumer: 'renewal',
      store,
      ...fast,
      onStepEvent: (e) => events.push(e),
      handler: async (_: unknown, ctx: HandlerContext) => {
        const email = await ctx.step(
          'email',
          () => {
            emailCalls++;
            throw new Error('smtp down');
          },
          {
            retry: { maxAttempts: 5, initialDelayMs: 1, jitter: 'none' },
            onGiveUp: 'continue',
            fallback: { sent: false },
          },
        );
        results.push(email);
        if (failAfter) throw new Error('later step failed');
        return email;
      },
    });
    expect(await p.process(delivery({}, key('email')))).toMatchObject({ action: 'retry' });
    expect(emailCalls).toBe(5);
    expect(events).toEqual([
      {
        type: 'give-up',
        consumer: 'renewal',
        key: 'email',
        step: 'email',
        attempt: 1,
        failures: 5,
        error: expect.objectContaining({ message: 'smtp down' }),
      },
    ]);
    failAfter = false;
    expect(await p.process(delivery({}, key('email')))).toMatchObject({ action: 'ack' });
    // The second attempt replayed the give-up: no more emails, no second event.
    expect(emailCalls).toBe(5);
    expect(events).toHaveLength(1);
    expect(results).toEqual([{ sent: false }, { sent: false }]);
  });

  it("a failure's retryAfterMs sets the message's retry delay and a step's wait before its next try", async () => {
    const waits: number[] = [];
    let calls = 0;
    let last = 0;
    const p = createProcessor({
      consumer: 'renewal',
      store: createMemoryStore(),
      ...fast,
      retry: { maxAttempts: 3, initialDelayMs: 5, maxDelayMs: 60_000, jitter: 'none' },
      handler: async (_: unknown, ctx: HandlerContext) => {
        await ctx.step(
          'charge',
          () => {
            const now = performance.now();
            if (calls++ > 0) waits.push(now - last);
            last = now;
            // The provider's 429 says when to come back; the step's own backoff is 1 ms.
            if (calls < 3) throw Object.assign(new Error('429 too many requests'), { retryAfterMs: 150 });
          },
          { retry: { maxAttempts: 5, initialDelayMs: 1, jitter: 'none' } },
        );
        throw Object.assign(new Error('503 later'), { retryAfterMs: 45_000 });
      },
    });
    const d = await p.process(delivery({}, key('rate-limited')));
    expect(d).toMatchObject({ action: 'retry', delayMs: 45_000 });
    expect(waits).toHaveLength(2);
    for (const waited of waits) expect(waited).toBeGreaterThanOrEqual(140);
  });

  it('without a fallback a step that gave up resolves undefined, on replay too', async () => {
    const store = createMemoryStore();
    const results: unknown[] = [];
    let failAfter = true;
    const p = createProcessor({
      consumer: 'c',
      store,
      ...fast,
      handler: async (_: unknown, ctx: HandlerContext) => {
        results.push(
          await ctx.step(
            'x',
            () => {
              throw new PermanentError('bad address'); // not retryable: gives up at once
            },
            { retry: { maxAttempts: 5 }, onGiveUp: 'continue' },
          ),
        );
        if (failAfter) throw new Error('again');
        return 'done';
      },
    });
    expect(await p.process(delivery({}, key('undef')))).toMatchObject({ action: 'retry' });
    failAfter = false;
    expect(await p.process(delivery({}, key('undef')))).toMatchObject({ action: 'ack' });
    expect(results).toEqual([undefined, undefined]);
  });

  it("onGiveUp 'fail' (the default) passes the error to the handler after the retries", async () => {
    let calls = 0;
    let caught: unknown;
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      ...fast,
      handler: async (_: unknown, ctx: HandlerContext) => {
        try {
          await ctx.step(
            'x',
            () => {
              calls++;
              throw new Error('nope');
            },
            { retry: { maxAttempts: 3, initialDelayMs: 1 } },
          );
        } catch (error) {
          caught = error;
        }
        return null;
      },
    });
    await p.process(delivery({}, key('fail')));
    expect(calls).toBe(3);
    expect((caught as Error).message).toBe('nope');
  });

  it('alertAfter fires once when fn has failed that many times; the retries go on; counters count', async () => {
    const adds: { name: string; value: number; attrs: unknown }[] = [];
    const counter = (name: string) => ({
      add: (value: number, attrs: unknown) => adds.push({ name, value, attrs }),
    });
    const meter = {
      createCounter: counter,
      createHistogram: () => ({ record: () => {} }),
      createUpDownCounter: counter,
    } as unknown as Meter;
    metrics.setGlobalMeterProvider({ getMeter: () => meter } as MeterProvider);

    const events: StepEvent[] = [];
    let statusCalls = 0;
    const p = createProcessor({
      consumer: 'renewal',
      store: createMemoryStore(),
      ...fast,
      onStepEvent: (e) => events.push(e),
      handler: async (_: unknown, ctx: HandlerContext) =>
        ctx.step(
          'status',
          () => {
            statusCalls++;
            if (statusCalls <= 12) throw new Error('db busy');
            return 'active';
          },
          {
            retry: { maxAttempts: Number.MAX_SAFE_INTEGER, initialDelayMs: 1, maxDelayMs: 1 },
            alertAfter: 10,
          },
        ),
    });
    expect(await p.process(delivery({}, key('status')))).toMatchObject({ action: 'ack' });
    expect(statusCalls).toBe(13);
    expect(events.map((e) => [e.type, e.step, e.failures])).toEqual([['alert', 'status', 10]]);
    expect(adds.filter((a) => a.name.startsWith('exactly_once.step.'))).toEqual([
      { name: 'exactly_once.step.alerts', value: 1, attrs: { consumer: 'renewal', step: 'status' } },
    ]);
  });

  it('a give-up counts exactly_once.step.give_ups', async () => {
    const adds: string[] = [];
    const meter = {
      createCounter: (name: string) => ({ add: () => adds.push(name) }),
      createHistogram: () => ({ record: () => {} }),
    } as unknown as Meter;
    metrics.setGlobalMeterProvider({ getMeter: () => meter } as MeterProvider);
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      ...fast,
      handler: (_: unknown, ctx: HandlerContext) =>
        ctx.step(
          'x',
          () => {
            throw new Error('down');
          },
          { onGiveUp: 'continue', fallback: 0 },
        ),
    });
    expect(await p.process(delivery({}, key('gu')))).toMatchObject({ action: 'ack' });
    expect(adds.filter((n) => n.startsWith('exactly_once.step.'))).toEqual(['exactly_once.step.give_ups']);
  });

  it('an onStepEvent hook that throws or rejects never breaks processing', async () => {
    for (const hook of [
      () => {
        throw new Error('hook bug');
      },
      async () => {
        throw new Error('async hook bug');
      },
    ]) {
      const warnings: string[] = [];
      const logger = { debug() {}, info() {}, error() {}, warn: (m: string) => warnings.push(m) };
      const p = createProcessor({
        consumer: 'c',
        store: createMemoryStore(),
        ...fast,
        logger,
        onStepEvent: hook,
        handler: (_: unknown, ctx: HandlerContext) =>
          ctx.step(
            'x',
            () => {
              throw new Error('down');
            },
            { onGiveUp: 'continue', fallback: 'fallback', alertAfter: 1 },
          ),
      });
      expect(await p.process(delivery({}, key('hook')))).toMatchObject({ action: 'ack' });
      await sleep(0);
      expect(warnings).toEqual(['onStepEvent threw; ignored', 'onStepEvent threw; ignored']);
    }
  });

  it('a lost lease is never a give-up', async () => {
    const events: StepEvent[] = [];
    const inner = createMemoryStore();
    let cut = false;
    const store: ProcessedStore = {
      ...inner,
      extend: async (k, f, l): Promise<FencedResult> => (cut ? 'lost' : inner.extend(k, f, l)),
    };
    const p = createProcessor({
      consumer: 'c',
      store,
      ...fast,
      onStepEvent: (e) => events.push(e),
      handler: (_: unknown, ctx: HandlerContext) =>
        ctx.step(
          'x',
          (signal) => {
            cut = true;
            return new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason)));
          },
          { onGiveUp: 'continue' },
        ),
    });
    expect(await p.process(delivery({}, key('ll')))).toMatchObject({ outcome: 'lease-lost' });
    expect(events).toEqual([]);
    const rec = await inner.get('default:c:ll');
    expect(rec?.state === 'IN_PROGRESS' && rec.steps.x).toBeUndefined();
  });

  it('a plain step returning undefined still resolves null, on replay too', async () => {
    const results: unknown[] = [];
    let failAfter = true;
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      ...fast,
      handler: async (_: unknown, ctx: HandlerContext) => {
        results.push(await ctx.step('x', () => undefined));
        if (failAfter) throw new Error('again');
        return 'done';
      },
    });
    expect(await p.process(delivery({}, key('null')))).toMatchObject({ action: 'retry' });
    failAfter = false;
    expect(await p.process(delivery({}, key('null')))).toMatchObject({ action: 'ack' });
    expect(results).toEqual([null, null]);
  });

  it('rejects a bad alertAfter', async () => {
    let caught: unknown;
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      ...fast,
      handler: async (_: unknown, ctx: HandlerContext) => {
        try {
          await ctx.step('x', () => 1, { alertAfter: 0 });
        } catch (error) {
          caught = error;
        }
        return null;
      },
    });
    await p.process(delivery({}, key('bad')));
    expect(caught).toBeInstanceOf(ConfigError);
  });

  it('refuses a step, keyFor or publish name cut inside a surrogate pair: the stores would keep it as U+FFFD', async () => {
    // Labels cut by slice() in the middle of an emoji: two different names, one U+FFFD text.
    const [a, b] = ['gift \u{1F600} box', 'gift \u{1F916} box'].map((label) => label.slice(0, 6)) as [
      string,
      string,
    ];
    const caught: unknown[] = [];
    const publisher = recordingPublisher();
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      publisher,
      ...fast,
      handler: async (_: unknown, ctx: HandlerContext) => {
        const attempts = [
          () => ctx.step(a, () => 1),
          async () => ctx.keyFor(a),
          async () => ctx.publish('items', {}, { name: b }),
        ];
        for (const attempt of attempts) await attempt().catch((error: unknown) => caught.push(error));
        return null;
      },
    });
    await p.process(delivery({}, key('cut')));
    // Before, a Redis or MongoDB store journaled the step under another name (its retry ran it
    // again), and both names derived one child key (two messages, one x-idempotency-key).
    expect(caught).toHaveLength(3);
    for (const error of caught) expect(error).toBeInstanceOf(ConfigError);
    expect(publisher.sent).toHaveLength(0);
  });
});

describe('a step under a lease that lapsed by this worker clock', () => {
  it('does not start its effect once another worker took the key over', async () => {
    // Before: a run whose heartbeat could not extend in time (a stalled store connection, a
    // frozen process) started the step as soon as the handler reached it, beside the new owner.
    const store = createMemoryStore();
    const stalled = withHeldExtensions(store);
    const reached = deferred();
    let charges = 0;
    const stale = createProcessor({
      consumer: 'c',
      store: stalled.store,
      ...fast,
      leaseMs: 60,
      heartbeatMs: 20,
      handler: async (_: unknown, ctx: HandlerContext) => {
        await reached.promise;
        await ctx.step('charge', () => ++charges);
      },
    });
    const run = stale.process(delivery({}, key('lapsed')));
    await new Promise((r) => setTimeout(r, 150)); // well past the lease
    const rival = createProcessor({ consumer: 'c', store, ...fast, handler: () => 'rival' });
    expect(await rival.process(delivery({}, key('lapsed')))).toMatchObject({ outcome: 'takeover' });
    reached.resolve();
    await new Promise((r) => setTimeout(r, 20));
    stalled.release();
    expect(await run).toMatchObject({ action: 'defer', outcome: 'lease-lost' });
    expect(charges).toBe(0);
  });

  it("a journal write refused past the lease's local end is tried until the store answers: no second effect", async () => {
    // An outside test on a slow MongoWire server: the step's effect happened, its journal write
    // and the heartbeat met the server's lock errors for longer than the lease, and the run gave
    // the write up at the lease's local end. Nobody had taken the key over: its release was
    // accepted, and the retry ran the effect again.
    let down = false;
    const flaky = withFaults(createMemoryStore(), {
      failWhen: (op) => down && (op === 'extend' || op === 'saveStep'),
    });
    let effects = 0;
    const p = createProcessor({
      consumer: 'c',
      store: flaky,
      ...fast,
      leaseMs: 200,
      heartbeatMs: 50,
      handler: async (_: unknown, ctx: HandlerContext) => {
        await ctx.step('reserve', () => {
          effects++;
          // Down from the effect on, for twice the lease.
          down = true;
          setTimeout(() => {
            down = false;
          }, 400);
          return { reserved: true };
        });
        return 'done';
      },
    });
    let d = await p.process(delivery({}, key('slow-store')));
    for (let i = 0; i < 5 && d.action !== 'ack'; i++) {
      await sleep(50);
      d = await p.process(delivery({}, key('slow-store')));
    }
    expect(d).toMatchObject({ action: 'ack' });
    expect(effects).toBe(1);
  });

  it("a step's started mark refused by the store is tried until it answers, not counted as an attempt", async () => {
    // An outside test on FerretDB (SQLite): the mark of a step with reconcile met "database is
    // locked" five times, each ended its attempt as a handler failure, and the key was FAILED
    // (ATTEMPTS_EXHAUSTED) without its effect ever running.
    let refusals = 0;
    const flaky = withFaults(createMemoryStore(), {
      failWhen: (op) => op === 'markStepStarted' && refusals++ < 8,
    });
    let effects = 0;
    const p = createProcessor({
      consumer: 'c',
      store: flaky,
      ...fast,
      handler: async (_: unknown, ctx: HandlerContext) =>
        ctx.step(
          'charge',
          () => {
            effects++;
            return 'charged';
          },
          { reconcile: async () => ({ done: false }) },
        ),
    });
    let d = await p.process(delivery({}, key('locked-mark')));
    for (let i = 0; i < 10 && d.action !== 'ack'; i++) {
      await sleep(20);
      d = await p.process(delivery({}, key('locked-mark')));
    }
    expect(d).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(refusals).toBeGreaterThan(8);
    expect(effects).toBe(1);
    expect((await flaky.get(recordKeyFor({ consumer: 'c', key: 'locked-mark' })))?.attempt).toBe(1);
  });
});
