/**
 * The executor's `stop()`: an HTTP server's shutdown. Calls in flight answer within `timeoutMs`;
 * past it their handlers are asked to end and their store writes stop being tried, so the process
 * can exit and the store can be closed after it (before, a call whose writes failed was tried
 * until `maxRunMs`, 15 minutes, holding the process).
 */
import { describe, expect, it } from 'vitest';
import type { HandlerContext } from '../src/context.js';
import { createIdempotentExecutor } from '../src/executor.js';
import { scopeKey } from '../src/keys.js';
import { withFaults } from '../src/store/faulty-store.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import { RecordState } from '../src/store/types.js';
import { deferred, failure } from './helpers.js';

const opts = { consumer: 'payments-api', retentionCheck: 'off' as const };

/** Resolves once `started` holds something (the handler began). */
async function started(list: readonly unknown[]): Promise<void> {
  while (list.length === 0) await new Promise((r) => setTimeout(r, 1));
}

describe('executor stop()', () => {
  it('refuses calls after it as retryable CLOSED, without running or storing anything', async () => {
    const store = createMemoryStore();
    const payments = createIdempotentExecutor<{ amount: number }, string>({ ...opts, store });
    await payments.stop();
    let ran = 0;
    const error = await failure(
      payments.execute({ key: 'k1', payload: { amount: 1 } }, () => {
        ran++;
        return 'charged';
      }),
    );
    expect(error.outcome).toBe('retryable');
    expect(error.info.code).toBe('CLOSED');
    expect(error.retryAfterMs).toBeGreaterThan(0);
    expect(ran).toBe(0);
    expect(await store.get(scopeKey('default', 'payments-api', 'k1'))).toBeUndefined();
  });

  it('waits for the calls in flight, which answer as usual', async () => {
    const payments = createIdempotentExecutor<{ amount: number }, string>({
      ...opts,
      store: createMemoryStore(),
    });
    const gate = deferred();
    const entered: string[] = [];
    const call = payments.execute({ key: 'k2', payload: { amount: 1 } }, async () => {
      entered.push('k2');
      await gate.promise;
      return 'charged';
    });
    await started(entered);
    let stopped = false;
    const stopping = payments.stop({ timeoutMs: 60_000 }).then(() => {
      stopped = true;
    });
    await new Promise((r) => setTimeout(r, 20));
    expect(stopped).toBe(false);
    gate.resolve();
    expect(await call).toMatchObject({ status: 'completed', result: 'charged' });
    await stopping;
    expect(stopped).toBe(true);
  });

  it('past timeoutMs aborts the handlers: the call answers retryable CLOSED, its key goes back uncounted', async () => {
    const store = createMemoryStore();
    const entered: string[] = [];
    const payments = createIdempotentExecutor<{ amount: number }, string>({
      ...opts,
      store,
      retry: { maxAttempts: 1 },
    });
    const call = payments.execute({ key: 'k3', payload: { amount: 1 } }, (_payload, ctx: HandlerContext) => {
      entered.push('k3');
      return new Promise<string>((_resolve, reject) => {
        ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason));
      });
    });
    await started(entered);
    await payments.stop({ timeoutMs: 10 });
    const error = await failure(call);
    expect(error.outcome).toBe('retryable');
    expect(error.info.code).toBe('CLOSED');
    // Given back, not FAILED (maxAttempts 1 would have made a counted failure final): the next
    // instance runs the key at once, not after a lease.
    const record = await store.get(scopeKey('default', 'payments-api', 'k3'));
    expect(record).toMatchObject({ state: RecordState.InProgress, leaseUntil: 0 });
    const next = createIdempotentExecutor<{ amount: number }, string>({ ...opts, store });
    expect(await next.execute({ key: 'k3', payload: { amount: 1 } }, () => 'charged')).toMatchObject({
      status: 'completed',
      result: 'charged',
    });
  });

  it('ends a call whose journal write the store keeps refusing (its client closed), instead of trying it until maxRunMs', async () => {
    // The outside report: with the store's client closed under calls in flight, their step's
    // journal write was tried for minutes and SIGTERM never finished. Before stop() existed this
    // call could only end at maxRunMs (here 2 minutes: the test would time out).
    let closed = false;
    const store = withFaults(createMemoryStore(), { failWhen: () => closed });
    const charges: string[] = [];
    const payments = createIdempotentExecutor<{ amount: number }, string>({
      ...opts,
      store,
      leaseMs: 60_000,
      maxRunMs: 120_000,
    });
    const call = payments.execute({ key: 'k4', payload: { amount: 1 } }, async (_payload, ctx) => {
      await ctx.step('charge', async () => {
        charges.push('k4');
        closed = true; // the client is closed as the effect is made: its journal write fails
        return { charged: true };
      });
      return 'charged';
    });
    await started(charges);
    await payments.stop({ timeoutMs: 50 });
    const error = await failure(call);
    expect(error.outcome).toBe('retryable');
    expect(charges).toEqual(['k4']);
  });

  it('is safe to call twice', async () => {
    const payments = createIdempotentExecutor({ ...opts, store: createMemoryStore() });
    const first = payments.stop();
    expect(payments.stop()).toBe(first);
    await first;
  });
});
