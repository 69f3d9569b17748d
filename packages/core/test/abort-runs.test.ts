/**
 * `Processor.abortRuns` (an adapter's `stop()` past its timeout): the handlers running are asked
 * to end through `ctx.signal`; a run that then fails gives its key back uncounted instead of
 * counting a failure, and one that returns anyway completes as usual.
 */
import { describe, expect, it } from 'vitest';
import type { HandlerContext } from '../src/context.js';
import { ClosedError } from '../src/errors.js';
import { scopeKey } from '../src/keys.js';
import type { ProcessorOptions } from '../src/options.js';
import { createProcessor } from '../src/processor.js';
import { withFaults } from '../src/store/faulty-store.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import type { ProcessedStore } from '../src/store/types.js';
import { deferred, delivery, withHeldExtensions } from './helpers.js';

const headers = (key: string) => ({ 'x-idempotency-key': key });

/** A handler that waits for its signal, then fails with a permanent error (or `then` says). */
function waitingForAbort(started: string[], then: 'fail' | 'return' = 'fail') {
  return (payload: { id: string }, ctx: HandlerContext) =>
    new Promise<string>((resolve, reject) => {
      started.push(payload.id);
      ctx.signal.addEventListener('abort', () => {
        if (then === 'return') resolve('done anyway');
        else reject(Object.assign(new Error('aborted'), { retryable: false }));
      });
    });
}

/** A processor of consumer `c` on `store`. */
function processorOn<R>(
  store: ProcessedStore,
  handler: (payload: { id: string }, ctx: HandlerContext) => R | Promise<R>,
  extra: Partial<ProcessorOptions<{ id: string }, R>> = {},
) {
  return createProcessor<{ id: string }, R>({
    consumer: 'c',
    store,
    retentionCheck: 'off',
    handler,
    ...extra,
  });
}

async function firstStarted(started: readonly string[]): Promise<void> {
  while (started.length === 0) await new Promise((r) => setTimeout(r, 1));
}

describe('abortRuns', () => {
  it('a run that fails on the abort gives its key back uncounted, not FAILED; its retry runs at once', async () => {
    const store = createMemoryStore();
    const started: string[] = [];
    const p = processorOn(store, waitingForAbort(started), { retry: { maxAttempts: 1 } });
    const pending = p.process(delivery({ id: 'a' }, headers('k1')));
    await firstStarted(started);
    expect(p.abortRuns()).toBe(1);
    expect(await pending).toMatchObject({ action: 'defer', outcome: 'not-run' });
    // With maxAttempts 1 a counted failure would have been FAILED and dead-lettered.
    expect(await store.get(scopeKey('default', 'c', 'k1'))).toMatchObject({
      state: 'IN_PROGRESS',
      leaseUntil: 0,
      attempt: 0,
    });
    const again = processorOn(store, () => 'ok');
    expect(await again.process(delivery({ id: 'a' }, headers('k1')))).toMatchObject({
      action: 'ack',
      outcome: 'acquired',
    });
  });

  it('the signal says why; a handler that returns anyway completes as usual', async () => {
    const store = createMemoryStore();
    const started: string[] = [];
    let reason: unknown;
    const p = processorOn(store, (payload: { id: string }, ctx: HandlerContext) => {
      ctx.signal.addEventListener('abort', () => {
        reason = ctx.signal.reason;
      });
      return waitingForAbort(started, 'return')(payload, ctx);
    });
    const pending = p.process(delivery({ id: 'a' }, headers('k2')));
    await firstStarted(started);
    p.abortRuns();
    expect(await pending).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(reason).toBeInstanceOf(ClosedError);
    expect((await store.get(scopeKey('default', 'c', 'k2')))?.state).toBe('COMPLETED');
  });

  it('in an ordered group the records after a cut run do not start', async () => {
    const store = createMemoryStore();
    const started: string[] = [];
    const p = processorOn(store, waitingForAbort(started));
    const run = p.processInOrder([
      delivery({ id: 'a' }, headers('o1')),
      delivery({ id: 'b' }, headers('o2')),
    ]);
    await firstStarted(started);
    p.abortRuns();
    const [first, second] = await Promise.all(run.dispositions);
    expect(first).toMatchObject({ action: 'defer', outcome: 'not-run' });
    expect(second).toMatchObject({ action: 'defer', outcome: 'not-run' });
    await run.release();
    expect(started).toEqual(['a']);
    expect((await store.get(scopeKey('default', 'c', 'o2')))?.attempt).toBe(0);
  });

  it('a run given up at maxRunMs after the abort keeps its key until its handler has ended', async () => {
    // Before: the cut run gave its key back as soon as maxRunMs answered for it, its handler still
    // running: the redelivered message ran beside it at another worker.
    const store = createMemoryStore();
    const stuck = deferred();
    let running = 0;
    let most = 0;
    const handler = async () => {
      most = Math.max(most, ++running);
      try {
        await stuck.promise; // deaf to ctx.signal, as a slow HTTP call without it
      } finally {
        running--;
      }
      return 'ok';
    };
    const options = { leaseMs: 2_000, maxRunMs: 200, ownerId: 'w1' };
    const first = processorOn(store, handler, options);
    const pending = first.process(delivery({ id: 'a' }, headers('k-cut-timeout')));
    while (running === 0) await new Promise((r) => setTimeout(r, 5));
    expect(first.abortRuns()).toBe(1);
    expect(await pending).toMatchObject({ action: 'defer', outcome: 'not-run' });
    expect(running).toBe(1);
    const second = processorOn(store, handler, { ...options, ownerId: 'w2' });
    expect(await second.process(delivery({ id: 'a' }, headers('k-cut-timeout')))).toMatchObject({
      action: 'defer',
      outcome: 'busy',
    });
    stuck.resolve();
    // Once it ended the key goes back uncounted, and the copy runs at once.
    await expect
      .poll(async () => {
        const record = await store.get(scopeKey('default', 'c', 'k-cut-timeout'));
        return record?.state === 'IN_PROGRESS' ? record.leaseUntil : undefined;
      })
      .toBe(0);
    expect(await second.process(delivery({ id: 'a' }, headers('k-cut-timeout')))).toMatchObject({
      action: 'ack',
      outcome: 'acquired',
    });
    expect(most).toBe(1);
  });

  it('a delivery whose begin answers after the abort does not start its handler: its key goes back unrun', async () => {
    // Before: its handler started after stop() with a signal never aborted, and its writes were
    // tried until maxRunMs against the store the application closed next (the process ran on).
    const inner = createMemoryStore();
    const beginAnswers = deferred();
    const store: ProcessedStore = {
      ...inner,
      begin: async (request) => {
        await beginAnswers.promise;
        return inner.begin(request);
      },
    };
    delete (store as { beginMany?: unknown }).beginMany;
    let ran = 0;
    const p = processorOn(store, () => {
      ran++;
      return 'ok';
    });
    const pending = p.process(delivery({ id: 'a' }, headers('k-begun-late')));
    await new Promise((r) => setTimeout(r, 5));
    expect(p.abortRuns()).toBe(0); // no handler runs yet: its begin is on its way
    beginAnswers.resolve();
    expect(await pending).toMatchObject({ action: 'defer', outcome: 'not-run' });
    expect(ran).toBe(0);
    await p.givenBack();
    // Given back uncounted: the next consumer runs the redelivered message at once.
    expect(await inner.get(scopeKey('default', 'c', 'k-begun-late'))).toMatchObject({
      state: 'IN_PROGRESS',
      leaseUntil: 0,
      attempt: 0,
    });
  });

  it('ends a completion write that began after the abort, its handler over by then', async () => {
    // Before, such a run was neither running (cut) nor writing at the abort: its completion went
    // on against the store that was down (closed by the application after stop()) until maxRunMs
    // (here 2 minutes: this test would time out), holding the process.
    let down = false;
    const held = withHeldExtensions(
      withFaults(createMemoryStore(), { failWhen: (op) => down && op === 'complete' }),
    );
    const p = createProcessor({
      consumer: 'c',
      store: held.store,
      retentionCheck: 'off',
      leaseMs: 1_000,
      heartbeatMs: 10,
      maxRunMs: 120_000,
      handler: async () => {
        await held.reached; // a heartbeat is on its way as the handler returns
        return 'done';
      },
    });
    const pending = p.process(delivery({}, headers('completed-after-abort')));
    await held.reached;
    await new Promise((r) => setTimeout(r, 5));
    expect(p.abortRuns()).toBe(0); // the handler is over; its run waits for the heartbeat's answer
    down = true;
    held.release();
    expect(await pending).toMatchObject({ action: 'defer', outcome: 'store-unavailable' });
  });

  it('aborts nothing while no handler runs; no handler starts after it', async () => {
    const gate = deferred();
    const p = processorOn(createMemoryStore(), () => gate.promise);
    const pending = p.process(delivery({ id: 'a' }, headers('k3')));
    gate.resolve();
    expect(await pending).toMatchObject({ action: 'ack' });
    expect(p.abortRuns()).toBe(0);
    // The consumer is stopping: a delivery that still arrives is given back, not run.
    expect(await p.process(delivery({ id: 'b' }, headers('k4')))).toMatchObject({
      action: 'defer',
      outcome: 'not-run',
    });
  });

  it('ends the journal write of a run whose signal had aborted already (its lease ran out locally)', async () => {
    // Before, such a run was skipped: its write went on against the store that was down until
    // maxRunMs (here 2 minutes: this test would time out), and idle() with it.
    let down = false;
    let saveTries = 0;
    const firstSaveFailed = deferred();
    const flaky = withFaults(createMemoryStore(), {
      failWhen: (op) => {
        if (!down) return false;
        if (op === 'saveStep' && ++saveTries === 1) firstSaveFailed.resolve();
        return op === 'extend' || op === 'saveStep';
      },
    });
    const p = createProcessor({
      consumer: 'c',
      store: flaky,
      retentionCheck: 'off',
      leaseMs: 100,
      heartbeatMs: 30,
      maxRunMs: 120_000,
      handler: async (_: unknown, ctx: HandlerContext) => {
        await ctx.step('reserve', async () => {
          down = true; // the store goes away after the effect
          // The lease runs out locally under failing heartbeats: the signal aborts.
          await new Promise<void>((resolve) => ctx.signal.addEventListener('abort', () => resolve()));
          return { reserved: true };
        });
        return 'done';
      },
    });
    const pending = p.process(delivery({}, headers('cut-after-lapse')));
    await firstSaveFailed.promise;
    p.abortRuns(); // the consumer's stop() past its timeoutMs; the store is still down
    // A shutdown, not the message's failure: nothing counted, the key left to its lease.
    expect(await pending).toMatchObject({ action: 'defer', outcome: 'not-run' });
  });
});
