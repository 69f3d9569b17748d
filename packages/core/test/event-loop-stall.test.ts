/**
 * A handler that blocks the event loop past its lease (computing without awaiting): the heartbeat
 * cannot extend the lease meanwhile, so another worker may take the key over and run it beside
 * this one. Nothing else tells the operator why; the lease board reports the stall once.
 */
import { describe, expect, it } from 'vitest';
import type { HandlerContext } from '../src/context.js';
import { LeaseLostError } from '../src/errors.js';
import type { Logger } from '../src/logger.js';
import { createProcessor } from '../src/processor.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import { deferred, delivery, withHeldExtensions } from './helpers.js';

function recordingLogger(): Logger & { warnings: { message: string; meta: unknown }[] } {
  const warnings: { message: string; meta: unknown }[] = [];
  const ignore = () => {};
  return {
    warnings,
    debug: ignore,
    info: ignore,
    warn: (message: string, meta?: unknown) => warnings.push({ message, meta }),
    error: ignore,
  };
}

/** Blocks the event loop for `ms`. */
function blockFor(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    // spinning: no timer fires meanwhile
  }
}

/** A processor whose leases last `leaseMs`, extended every `heartbeatMs`, logging to `logger`. */
function processorWith(
  logger: Logger,
  leaseMs: number,
  heartbeatMs: number,
  handler: () => Promise<unknown>,
  recordKeys = true,
) {
  return createProcessor<{ id: string }>({
    consumer: 'c',
    store: createMemoryStore(),
    retentionCheck: 'off',
    leaseMs,
    heartbeatMs,
    logger,
    handler,
    recordKeys,
  });
}

describe('an event loop blocked past the lease', () => {
  const stallWarnings = (logger: ReturnType<typeof recordingLogger>) =>
    logger.warnings.filter((w) => w.message.startsWith('event loop blocked past the lease'));

  it('is reported once, with the keys whose leases ran out', async () => {
    const logger = recordingLogger();
    const p = processorWith(logger, 300, 100, async () => {
      // Let the lease board's timer start, then block past the lease.
      await new Promise((resolve) => setTimeout(resolve, 20));
      blockFor(600);
      await new Promise((resolve) => setTimeout(resolve, 20));
    });
    await p.process(delivery({ id: 'a' }, { 'x-idempotency-key': 'k1' }));
    const stalls = stallWarnings(logger);
    expect(stalls).toHaveLength(1);
    expect(stalls[0]?.meta).toMatchObject({
      leaseMs: 300,
      runs: 1,
      keys: ['default:c:k1'],
      blockedMs: expect.any(Number),
    });
    expect((stalls[0]?.meta as { blockedMs: number } | undefined)?.blockedMs).toBeGreaterThanOrEqual(300);
  });

  it("aborts the run's signal before its handler resumes; nobody took the key, so the run completes", async () => {
    // An outside test froze a worker (SIGSTOP) past its lease: the stall was logged 3 ms before
    // its handler resumed, which found ctx.signal not aborted and went on to its effect; the
    // signal aborted only ~60 ms later, when the extend answered lost.
    const logger = recordingLogger();
    let seen: { aborted: boolean; reason: unknown } | undefined;
    const p = createProcessor<{ id: string }>({
      consumer: 'c',
      store: createMemoryStore(),
      retentionCheck: 'off',
      leaseMs: 300,
      heartbeatMs: 100,
      logger,
      handler: async (_payload, ctx) => {
        await new Promise((resolve) => setTimeout(resolve, 20));
        blockFor(600);
        await new Promise((resolve) => setTimeout(resolve, 0));
        seen = { aborted: ctx.signal.aborted, reason: ctx.signal.reason };
      },
    });
    const d = await p.process(delivery({ id: 'a' }, { 'x-idempotency-key': 'k1' }));
    expect(seen?.aborted).toBe(true);
    expect(seen?.reason).toBeInstanceOf(LeaseLostError);
    // The handler did not heed it and nobody took the key over: its completion still lands.
    expect(d).toMatchObject({ action: 'ack', outcome: 'acquired' });
  });

  it('a handler that stops on that signal gives the key back when nobody took it: its retry runs at once', async () => {
    // Before, the run was taken for lost ("the key was taken over", nothing released): its copy
    // was answered busy until the lease, which the stall's extend had renewed, ran out.
    const store = createMemoryStore();
    let runs = 0;
    const p = createProcessor<{ id: string }>({
      consumer: 'c',
      store,
      retentionCheck: 'off',
      leaseMs: 300,
      heartbeatMs: 100,
      retry: { maxAttempts: 3, initialDelayMs: 10, maxDelayMs: 10 },
      logger: recordingLogger(),
      handler: async (_payload, ctx) => {
        runs++;
        if (runs === 1) {
          await new Promise((resolve) => setTimeout(resolve, 20));
          blockFor(600);
          await new Promise((resolve) => setTimeout(resolve, 0));
          ctx.signal.throwIfAborted();
        }
        return 'done';
      },
    });
    const first = await p.process(delivery({ id: 'a' }, { 'x-idempotency-key': 'k1' }));
    expect(first).toMatchObject({ action: 'retry', nextAttempt: 2, error: { code: 'LEASE_LOST' } });
    expect(await store.get('default:c:k1')).toMatchObject({ state: 'IN_PROGRESS', leaseUntil: 0 });
    const second = await p.process(delivery({ id: 'a' }, { 'x-idempotency-key': 'k1' }));
    expect(second).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(runs).toBe(2);
  });

  it('names no key without recordKeys', async () => {
    // Before, the keys were logged whatever recordKeys said.
    const logger = recordingLogger();
    const blocking = async () => {
      await new Promise((resolve) => setTimeout(resolve, 20));
      blockFor(600);
      await new Promise((resolve) => setTimeout(resolve, 20));
    };
    const p = processorWith(logger, 300, 100, blocking, false);
    await p.process(delivery({ id: 'a' }, { 'x-idempotency-key': 'k1' }));
    const stalls = stallWarnings(logger);
    expect(stalls).toHaveLength(1);
    expect(stalls[0]?.meta).toMatchObject({ leaseMs: 300, runs: 1 });
    expect(stalls[0]?.meta).not.toHaveProperty('keys');
    expect(JSON.stringify(stalls[0])).not.toContain('k1');
  });

  it('a handler that waits as long without blocking is not reported', async () => {
    const logger = recordingLogger();
    const p = processorWith(logger, 600, 200, () => new Promise((resolve) => setTimeout(resolve, 1_300)));
    expect(await p.process(delivery({ id: 'a' }, { 'x-idempotency-key': 'k1' }))).toMatchObject({
      action: 'ack',
    });
    expect(stallWarnings(logger)).toHaveLength(0);
  });
});

describe('a heartbeat extension that hangs past the lease', () => {
  it('aborts ctx.signal when the lease runs out locally, before the extension is answered', async () => {
    // A store call that hangs (storeTimeoutMs is 60 s by default, twice the default lease): the
    // signal stayed live until it was given up, while another worker could take the key over.
    const store = createMemoryStore();
    const stalled = withHeldExtensions(store);
    const rivalRan = deferred();
    let abortedWhenRivalRan: boolean | undefined;
    const stale = createProcessor({
      consumer: 'c',
      store: stalled.store,
      retentionCheck: 'off',
      leaseMs: 100,
      heartbeatMs: 30,
      handler: async (_: unknown, ctx: HandlerContext) => {
        await rivalRan.promise;
        abortedWhenRivalRan = ctx.signal.aborted;
        return 'stale';
      },
    });
    const run = stale.process(delivery({}, { 'x-idempotency-key': 'hung-extend' }));
    await new Promise((resolve) => setTimeout(resolve, 400)); // four leases
    const rival = createProcessor({
      consumer: 'c',
      store,
      retentionCheck: 'off',
      leaseMs: 100,
      handler: () => {
        rivalRan.resolve();
        return 'rival';
      },
    });
    expect(await rival.process(delivery({}, { 'x-idempotency-key': 'hung-extend' }))).toMatchObject({
      outcome: 'takeover',
    });
    stalled.release();
    expect(await run).toMatchObject({ outcome: 'lease-lost' });
    expect(abortedWhenRivalRan).toBe(true);
  });
});
