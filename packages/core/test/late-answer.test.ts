/**
 * A begin that took its lease in time but whose answer came back after `storeTimeoutMs` (a slow
 * store, or a reply on its way as the deadline passed): the caller has given up, so the lease is
 * nobody's. It is given back unrun, and the message's next delivery runs at once instead of
 * waiting the lease out and taking the key over.
 */
import { describe, expect, it } from 'vitest';
import { createProcessor } from '../src/processor.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import type { ProcessedStore } from '../src/store/types.js';
import { delivery } from './helpers.js';

/** `store` whose begins take effect at once and answer `delay.ms` later. */
function answeringLate(store: ProcessedStore, delay: { ms: number }): ProcessedStore {
  const later = <A>(answer: A) => new Promise<A>((resolve) => setTimeout(resolve, delay.ms, answer));
  return {
    ...store,
    begin: async (request) => later(await store.begin(request)),
    beginMany: async (requests) => later(await (store.beginMany?.(requests) ?? Promise.resolve([]))),
  };
}

describe('a begin answered after storeTimeoutMs', () => {
  it('gives the lease it took back unrun: the next delivery runs at once, as attempt 1', async () => {
    const delay = { ms: 300 };
    const runs: number[] = [];
    const p = createProcessor<{ id: string }>({
      consumer: 'c',
      store: answeringLate(createMemoryStore(), delay),
      storeTimeoutMs: 100,
      leaseMs: 60_000,
      retentionCheck: 'off',
      handler: (_, ctx) => {
        runs.push(ctx.attempt);
      },
    });
    const message = delivery({ id: 'a' }, { 'x-idempotency-key': 'k1' });
    expect(await p.process(message)).toMatchObject({ action: 'defer', outcome: 'store-unavailable' });
    // The answer comes at 300 ms, and the give-back after it.
    await new Promise((resolve) => setTimeout(resolve, 400));
    await p.givenBack();
    delay.ms = 0;
    // Before, the key was held for the lease's 60 s: busy, then a takeover at attempt 2.
    expect(await p.process(message)).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(runs).toEqual([1]);
  });
});
