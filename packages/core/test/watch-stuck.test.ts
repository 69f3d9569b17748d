/** watchStuck over a store whose query is slower than the interval: one query at a time. */
import { describe, expect, it } from 'vitest';
import { createMemoryStore } from '../src/store/memory-store.js';
import { watchStuck } from '../src/store/stuck.js';
import type { InProgressQuery } from '../src/store/types.js';

describe('watchStuck', () => {
  it('never starts a query while the previous one is still running', async () => {
    // Prepare: each listInProgress takes 60 ms, the interval is 5 ms.
    const store = createMemoryStore();
    const list = (query: InProgressQuery) =>
      (store.listInProgress as NonNullable<typeof store.listInProgress>)(query);
    let running = 0;
    let most = 0;
    let calls = 0;
    const slow = Object.assign(Object.create(store), {
      async listInProgress(query: InProgressQuery) {
        calls++;
        most = Math.max(most, ++running);
        await new Promise((r) => setTimeout(r, 60));
        running--;
        return list(query);
      },
    });
    // Act
    const watch = watchStuck(slow, { consumer: 'c', olderThanMs: 1_000, intervalMs: 5 });
    await new Promise((r) => setTimeout(r, 400));
    watch.stop();
    // Assess
    expect(most).toBe(1);
    expect(calls).toBeGreaterThan(2);
    expect(watch.count).toBe(0);
  });
});
