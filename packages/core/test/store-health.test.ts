import { describe, expect, it } from 'vitest';
import { Headers } from '../src/headers.js';
import { createProcessor } from '../src/processor.js';
import { withFaults } from '../src/store/faulty-store.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import type { ProcessedStore } from '../src/store/types.js';
import { delivery } from './helpers.js';

const key = (k: string) => ({ [Headers.IdempotencyKey]: k, [Headers.RequestId]: `req-${k}` });
const fast = { leaseMs: 300, retentionCheck: 'off' as const, retry: { maxAttempts: 3, initialDelayMs: 10 } };
const never = new Promise<never>(() => {});

describe('storeHealth (for a liveness probe)', () => {
  it('says since when the store has not answered, and clears once it answers again', async () => {
    let down = false;
    const p = createProcessor({
      consumer: 'c',
      store: withFaults(createMemoryStore(), { failWhen: () => down }),
      ...fast,
      handler: () => {},
    });
    expect(p.storeHealth()).toEqual({ lastAnswerAt: undefined, unavailableSince: undefined });

    await p.process(delivery({}, key('k1')));
    const answered = p.storeHealth().lastAnswerAt;
    expect(answered).toBeGreaterThan(0);
    expect(p.storeHealth().unavailableSince).toBeUndefined();

    down = true;
    const before = Date.now();
    expect(await p.process(delivery({}, key('k2')))).toMatchObject({ outcome: 'store-unavailable' });
    const since = p.storeHealth().unavailableSince;
    expect(since).toBeGreaterThanOrEqual(before);
    // Later failures keep the start of the outage.
    await p.process(delivery({}, key('k3')));
    expect(p.storeHealth()).toEqual({ lastAnswerAt: answered, unavailableSince: since });

    down = false;
    expect(await p.process(delivery({}, key('k2')))).toMatchObject({ action: 'ack' });
    expect(p.storeHealth().unavailableSince).toBeUndefined();
    expect(p.storeHealth().lastAnswerAt).toBeGreaterThanOrEqual(since!);
  });

  it('a call past storeTimeoutMs counts as the store not answering', async () => {
    const memory = createMemoryStore();
    const store: ProcessedStore = Object.create(memory);
    store.beginMany = () => never;
    const p = createProcessor({ consumer: 'c', store, ...fast, storeTimeoutMs: 50, handler: () => {} });
    expect(await p.process(delivery({}, key('k1')))).toMatchObject({ outcome: 'store-unavailable' });
    expect(p.storeHealth().unavailableSince).toBeGreaterThan(0);
  });

  it('an answer that refuses (a stale fence, a duplicate) is an answer', async () => {
    const p = createProcessor({ consumer: 'c', store: createMemoryStore(), ...fast, handler: () => {} });
    await p.process(delivery({}, key('k1')));
    expect(await p.process(delivery({}, key('k1')))).toMatchObject({ outcome: 'duplicate' });
    expect(p.storeHealth().unavailableSince).toBeUndefined();
  });
});
