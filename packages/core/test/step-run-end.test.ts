/**
 * Steps at the edges of a run: a step still running when the run ends (given up at maxRunMs, or
 * the handler failed beside it), a journal write the store misses once, reconcile between
 * in-process retries, and `ctx.publish` inside a step. Each must leave an effect made once, and
 * a message published once.
 */
import { describe, expect, it } from 'vitest';
import type { HandlerContext } from '../src/context.js';
import { ConfigError } from '../src/errors.js';
import { createIdempotentExecutor, ExecutionFailedError } from '../src/executor.js';
import { Headers } from '../src/headers.js';
import { createProcessor } from '../src/processor.js';
import type { Disposition } from '../src/spi.js';
import { withFaults } from '../src/store/faulty-store.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import type { BeginRequest, ProcessedStore } from '../src/store/types.js';
import { delivery, recordingPublisher } from './helpers.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const key = (k: string) => ({ [Headers.IdempotencyKey]: k, [Headers.RequestId]: `req-${k}` });
const base = {
  retentionCheck: 'off' as const,
  retry: { maxAttempts: 3, initialDelayMs: 5, jitter: 'none' as const },
};

/** Delivers the message again after each retry or deferral, as an adapter would, until it is settled. */
async function deliverUntilSettled(
  p: { process(d: ReturnType<typeof delivery>): Promise<Disposition> },
  k: string,
) {
  const seen: Disposition[] = [];
  for (let i = 0; i < 40; i++) {
    const d = await p.process(delivery({ order: k }, key(k)));
    seen.push(d);
    if (d.action === 'ack' || d.action === 'dead-letter') return seen;
    await sleep(Math.max(10, d.action === 'retry' || d.action === 'defer' ? d.delayMs : 10));
  }
  throw new Error(`not settled: ${seen.map((d) => d.action).join(', ')}`);
}

/**
 * A handler body that counts its runs and the most of them running at once (two at once: an
 * effect made beside another). `msOf` gives a run's duration from its number (1 for the first).
 */
function overlapMeter(msOf: (run: number) => number) {
  const meter = {
    runs: 0,
    most: 0,
    running: 0,
    async run(): Promise<number> {
      const n = ++meter.runs;
      meter.running++;
      meter.most = Math.max(meter.most, meter.running);
      await sleep(msOf(n));
      meter.running--;
      return n;
    },
  };
  return meter;
}

describe('steps when the run ends while one still runs', () => {
  it('a step that finishes after its run was given up at maxRunMs is journaled; the retry replays it', async () => {
    const charges: number[] = [];
    const p = createProcessor({
      consumer: 'billing',
      store: createMemoryStore(),
      ...base,
      leaseMs: 5_000,
      heartbeatMs: 25,
      maxRunMs: 100,
      handler: async (_: unknown, ctx: HandlerContext) =>
        ctx.step('charge', async () => {
          await sleep(250); // the provider is slower than maxRunMs
          charges.push(ctx.attempt);
          return { charge: charges.length };
        }),
    });
    const seen = await deliverUntilSettled(p, 'slow-charge');
    expect(charges).toEqual([1]);
    expect(seen.at(-1)).toMatchObject({ action: 'ack' });
  });

  it('a handler failing beside a running step keeps the key until the step has ended; the retry replays it', async () => {
    const charges: number[] = [];
    let inventoryCalls = 0;
    const p = createProcessor({
      consumer: 'billing',
      store: createMemoryStore(),
      ...base,
      leaseMs: 5_000,
      handler: async (_: unknown, ctx: HandlerContext) => {
        const [charge] = await Promise.all([
          ctx.step('charge', async () => {
            await sleep(200);
            charges.push(ctx.attempt);
            return 'charged';
          }),
          ctx.step('inventory', async () => {
            if (++inventoryCalls === 1) throw new Error('inventory service 503'); // retryable, at once
            return 'reserved';
          }),
        ]);
        return charge;
      },
    });
    const seen = await deliverUntilSettled(p, 'parallel');
    await sleep(300);
    expect(charges).toEqual([1]);
    expect(seen.at(-1)).toMatchObject({ action: 'ack' });
  });

  it('a failed step journal write is tried again while the lease holds; the effect is not repeated', async () => {
    let blips = 1;
    const store = withFaults(createMemoryStore(), { failWhen: (op) => op === 'saveStep' && blips-- > 0 });
    let charges = 0;
    const p = createProcessor({
      consumer: 'billing',
      store,
      ...base,
      handler: async (_: unknown, ctx: HandlerContext) =>
        ctx.step('charge', async () => ({ charge: ++charges })),
    });
    const seen = await deliverUntilSettled(p, 'blip');
    expect(charges).toBe(1);
    expect(seen.map((d) => d.action)).toEqual(['ack']);
  });
});

describe('steps: reconcile and in-process retries', () => {
  it('reconcile is asked before an in-process retry: a call that charged and then failed is not made again', async () => {
    const ledger: string[] = [];
    let reconciles = 0;
    const p = createProcessor({
      consumer: 'billing',
      store: createMemoryStore(),
      ...base,
      handler: async (_: unknown, ctx: HandlerContext) =>
        ctx.step(
          'charge',
          async () => {
            ledger.push(ctx.keyFor('charge'));
            if (ledger.length === 1) throw new Error('ECONNRESET after the request was sent');
            return 'charged';
          },
          {
            retry: { maxAttempts: 3, initialDelayMs: 5 },
            reconcile: ({ key: k }) => {
              reconciles++;
              return ledger.includes(k) ? { done: true, value: 'charged' } : { done: false };
            },
          },
        ),
    });
    const seen = await deliverUntilSettled(p, 'in-process');
    expect(ledger).toHaveLength(1);
    expect(reconciles).toBe(1);
    expect(seen.map((d) => d.action)).toEqual(['ack']);
  });
});

describe('steps: reconcile failing between in-process retries', () => {
  it('counts as a failure and waits again; fn runs only once reconcile answers', async () => {
    let providerUp = false;
    let calls = 0;
    let reconciles = 0;
    const alerts: number[] = [];
    const p = createProcessor({
      consumer: 'billing',
      store: createMemoryStore(),
      ...base,
      onStepEvent: (e) => {
        if (e.type === 'alert') alerts.push(e.failures);
      },
      handler: async (_: unknown, ctx: HandlerContext) =>
        ctx.step(
          'finish',
          async () => {
            calls++;
            if (!providerUp) throw new Error('participant not answering');
            return 'done';
          },
          {
            retry: { maxAttempts: 50, initialDelayMs: 5, maxDelayMs: 5 },
            alertAfter: 3,
            reconcile: () => {
              reconciles++;
              if (!providerUp) throw new Error('participant not answering');
              return { done: false };
            },
          },
        ),
    });
    setTimeout(() => {
      providerUp = true;
    }, 100);
    const seen = await deliverUntilSettled(p, 'down');
    expect(seen.map((d) => d.action)).toEqual(['ack']);
    expect(calls).toBe(2); // the first call, and one after reconcile answered not done
    expect(reconciles).toBeGreaterThan(1);
    expect(alerts).toEqual([3]);
  });
});

describe('ctx.publish inside a step', () => {
  it('is refused (ConfigError): a replayed step does not run fn, so its message would be lost', async () => {
    const publisher = recordingPublisher();
    const p = createProcessor({
      consumer: 'billing',
      store: createMemoryStore(),
      ...base,
      publisher,
      handler: async (_: unknown, ctx: HandlerContext) => {
        const charge = await ctx.step('charge', async () => {
          ctx.publish('payment-captured', { charged: true });
          return 'charged';
        });
        ctx.publish('order-paid', { charge }); // after the step: allowed
        return charge;
      },
    });
    const seen = await deliverUntilSettled(p, 'publish-in-step');
    expect(seen.at(-1)).toMatchObject({ action: 'dead-letter' });
    const last = seen.at(-1) as Extract<Disposition, { action: 'dead-letter' }>;
    expect(last.reason.error.name).toBe(ConfigError.name);
    expect(last.reason.error.message).toContain('ctx.publish inside a step');
    expect(publisher.sent).toEqual([]);
  });

  it('is allowed after a step and beside a running one', async () => {
    const publisher = recordingPublisher();
    const p = createProcessor({
      consumer: 'billing',
      store: createMemoryStore(),
      ...base,
      publisher,
      handler: async (_: unknown, ctx: HandlerContext) => {
        const running = ctx.step('charge', async () => {
          await sleep(20);
          return 'charged';
        });
        ctx.publish('charge-requested', {});
        ctx.publish('order-paid', { charge: await running });
      },
    });
    const seen = await deliverUntilSettled(p, 'publish-beside');
    expect(seen.at(-1)).toMatchObject({ action: 'ack' });
    expect(publisher.sent.map((m) => m.destination)).toEqual(['charge-requested', 'order-paid']);
  });
});

/**
 * `store`, answering each single begin `delayMs` after the store took it (a slow store or
 * network); `onGranted` runs when it took it. No beginMany, so every begin goes this way.
 */
function answeringBeginsLate(store: ProcessedStore, delayMs: number, onGranted: () => void = () => {}) {
  return {
    ...store,
    begin: async (request: BeginRequest) => {
      const answer = await store.begin(request);
      onGranted();
      await sleep(delayMs);
      return answer;
    },
    beginMany: undefined,
  };
}

describe('a begin answered after its lease ran out', () => {
  it('does not start the handler when the key was taken over meanwhile', async () => {
    const store = createMemoryStore();
    const leaseMs = 200;
    let runs = 0;
    // The store grants the lease at once; its answer reaches the worker only well after the lease
    // (a slow store or network), by which time another worker has taken the key over.
    let granted!: () => void;
    const grant = new Promise<void>((resolve) => {
      granted = resolve;
    });
    const slow = answeringBeginsLate(store, leaseMs * 3, granted);
    const p = createProcessor({
      consumer: 'billing',
      store: slow,
      ...base,
      leaseMs,
      handler: () => {
        runs++;
      },
    });
    const processing = p.process(delivery({ order: 'late' }, key('late')));
    await grant;
    await sleep(leaseMs * 1.5);
    const held = await store.get('default:billing:late');
    const other = await store.begin({
      key: 'default:billing:late',
      fingerprint: held?.fingerprint ?? '',
      owner: 'other',
      leaseMs: 60_000,
    });
    const d = await processing;
    expect(other).toMatchObject({ status: 'acquired', kind: 'takeover' });
    expect(runs).toBe(0);
    expect(d.action).toBe('defer');
  });

  it('a copy arriving while its original renews a late lease waits for it, then is a duplicate', async () => {
    // Before: the original counted as under way only once its lease was renewed, so a copy
    // answered busy meanwhile was put off to poll the store (a loaded machine made this common).
    const store = createMemoryStore();
    const leaseMs = 400;
    let runs = 0;
    const slow = {
      ...answeringBeginsLate(store, leaseMs * 0.6),
      extend: async (...args: Parameters<typeof store.extend>) => {
        await sleep(100);
        return store.extend(...args);
      },
    };
    const p = createProcessor({
      consumer: 'billing',
      store: slow,
      ...base,
      leaseMs,
      handler: () => {
        runs++;
      },
    });
    const [original, copy] = await Promise.all([
      p.process(delivery({ order: 'twice' }, key('twice'))),
      sleep(20).then(() => p.process(delivery({ order: 'twice' }, key('twice')))),
    ]);
    expect(runs).toBe(1);
    expect(original).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(copy).toMatchObject({ action: 'ack', outcome: 'duplicate' });
  });
});

describe('a key taken over from a run of this process still going', () => {
  it('a copy waits for that run to end before its begin: never beside it, and then a duplicate', async () => {
    // Heartbeats fail for a while (a store too slow to answer), so the first run's lease runs out while
    // its handler, which does not watch ctx.signal, goes on; a copy of the message then takes the
    // key over in the same process.
    const failUntil = Date.now() + 300;
    const store = withFaults(createMemoryStore(), {
      failWhen: (op) => op === 'extend' && Date.now() < failUntil,
    });
    const meter = overlapMeter(() => 500);
    const p = createProcessor({
      consumer: 'billing',
      store,
      ...base,
      leaseMs: 150,
      heartbeatMs: 20,
      handler: async () => {
        await meter.run();
      },
    });
    const first = p.process(delivery({ order: 'self' }, key('self')));
    await sleep(250); // past the first run's lease
    const copy = p.process(delivery({ order: 'self' }, key('self')));
    // The copy waits for that run before its begin, so it finds the key completed: before, it
    // took the key over and ran the handler a second time once the first had ended.
    expect(await first).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(await copy).toMatchObject({ action: 'ack', outcome: 'duplicate' });
    expect(meter.runs).toBe(1);
    expect(meter.most).toBe(1);
  });

  it('also when that run was given up at maxRunMs and its handler outlived the lease', async () => {
    // Before: a run given up at maxRunMs was forgotten at once, so a retry that took the key over
    // once its lease (no longer heartbeated) had run out started beside the handler still going.
    // Given up at 150 ms, its lease runs out about 60 ms later, its handler returns at 290 ms.
    const meter = overlapMeter((run) => (run === 1 ? 290 : 5));
    const p = createProcessor({
      consumer: 'billing',
      store: createMemoryStore(),
      ...base,
      leaseMs: 60,
      heartbeatMs: 15,
      maxRunMs: 150,
      handler: async () => {
        await meter.run();
      },
    });
    const seen = await deliverUntilSettled(p, 'slow');
    expect(seen[0]?.action).toBe('retry');
    expect(seen.at(-1)?.action).toBe('ack');
    expect(meter.runs).toBe(2);
    expect(meter.most).toBe(1);
  });

  it('an idempotent executor too: a retry of a request given up at maxRunMs waits for its handler', async () => {
    const executor = createIdempotentExecutor<{ order: string }, number>({
      consumer: 'payments-api',
      store: createMemoryStore(),
      retentionCheck: 'off',
      leaseMs: 60,
      heartbeatMs: 15,
      maxRunMs: 150,
    });
    const meter = overlapMeter((run) => (run === 1 ? 290 : 5));
    const call = () => executor.execute({ key: 'pay-1', payload: { order: 'o' } }, () => meter.run());
    const first = await call().catch((e: unknown) => e);
    expect(first).toBeInstanceOf(ExecutionFailedError);
    // The client retries until it has an answer, as after a 503 or a 409.
    let answer: Awaited<ReturnType<typeof call>> | undefined;
    for (let i = 0; i < 40 && answer === undefined; i++) {
      answer = await call().catch(() => undefined);
      if (answer === undefined) await sleep(20);
    }
    expect(answer?.status).toBe('completed');
    expect(meter.runs).toBe(2);
    expect(meter.most).toBe(1);
  });
});
