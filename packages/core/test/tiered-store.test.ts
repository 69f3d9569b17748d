/**
 * The tiered store's own rules, on two in-memory tiers (its behaviour on Redis + MongoDB is in
 * test/tiered): what a `busy` cold tier leaves in the hot one, and its options. Also the fault
 * wrapper its test relies on.
 */
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../src/errors.js';
import { Headers } from '../src/headers.js';
import { createProcessor } from '../src/processor.js';
import { withFaults } from '../src/store/faulty-store.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import { createTieredStore } from '../src/store/tiered-store.js';
import type { ProcessedStore } from '../src/store/types.js';
import { delivery } from './helpers.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('tiered store', () => {
  it('a busy cold tier leaves the hot record and its journal: the next attempt does not repeat a journaled step', async () => {
    // Before: hot acquired, cold answered busy (the previous attempt's claim, whose release had
    // failed), and the hot record was cleared with its steps: the next attempt charged again.
    const hot = createMemoryStore();
    let failColdRelease = false;
    const cold = withFaults(createMemoryStore(), { failWhen: (op) => failColdRelease && op === 'release' });
    // The cold claim outlives the run's lease: the release is tried again until the lease's end.
    const store = createTieredStore({ hot, cold, hotRetentionMs: 3_600_000, coldLeaseMs: 1_500 });
    let charges = 0;
    let runs = 0;
    const attempts: number[] = [];
    const processor = createProcessor<{ order: string }>({
      consumer: 'billing',
      store,
      leaseMs: 200,
      retentionCheck: 'off',
      retry: { maxAttempts: 5, initialDelayMs: 1 },
      handler: async (_payload, ctx) => {
        runs++;
        attempts.push(ctx.attempt);
        const charge = await ctx.step('charge', async () => ({ id: `ch-${++charges}` }));
        if (runs === 1) throw new Error('downstream timeout (retryable)');
        return charge;
      },
    });
    const message = () => delivery({ order: 'o-1' }, { [Headers.IdempotencyKey]: 'order-1' });

    failColdRelease = true; // the cold half of the release after the retryable error fails once
    expect((await processor.process(message())).outcome).toBe('store-unavailable');
    failColdRelease = false;
    expect(await processor.process(message())).toMatchObject({ action: 'defer', outcome: 'busy' });
    expect(await hot.get('default:billing:order-1')).toMatchObject({ state: 'IN_PROGRESS' });
    await sleep(1_550); // the cold claim lapses
    expect(await processor.process(message())).toMatchObject({ action: 'ack' });
    expect(charges).toBe(1);
    expect(attempts).toEqual([1, 2]);
  });

  it('a cold tier that cannot be reached gives the hot lease back: the outage counts no attempt', async () => {
    // Before: each try took the hot lease (a takeover once the last one ran out) and counted an
    // attempt, then failed on cold; when cold answered again, messages that never ran were
    // dead-lettered ATTEMPTS_EXHAUSTED ("each time the worker holding it died").
    const hot = createMemoryStore();
    let coldDown = true;
    const cold = withFaults(createMemoryStore(), { failWhen: (op) => coldDown && op === 'begin' });
    const store = createTieredStore({ hot, cold, hotRetentionMs: 3_600_000 });
    const attempts: number[] = [];
    const processor = createProcessor({
      consumer: 'billing',
      store,
      leaseMs: 60,
      heartbeatMs: 20,
      maxTakeoverAttempts: 3,
      retentionCheck: 'off',
      handler: (_payload, ctx) => {
        attempts.push(ctx.attempt);
        return 'charged';
      },
    });
    const message = () => delivery({ order: 'o-2' }, { [Headers.IdempotencyKey]: 'order-2' });
    for (let i = 0; i < 6; i++) {
      expect(await processor.process(message())).toMatchObject({
        action: 'defer',
        outcome: 'store-unavailable',
      });
      await sleep(80); // past the lease, as a redelivery after an outage would be
    }
    coldDown = false;
    expect(await processor.process(message())).toMatchObject({ action: 'ack' });
    expect(attempts).toEqual([1]);
  });

  const fatal = { name: 'PermanentError', code: 'PERMANENT', message: 'card declined' };
  it.each([
    {
      op: 'complete' as const,
      state: 'COMPLETED',
      end: (store: ProcessedStore, key: string, fence: number) =>
        store.complete({ key, fence, outgoing: [], retentionMs: 86_400_000 }),
    },
    {
      op: 'fail' as const,
      state: 'FAILED',
      end: (store: ProcessedStore, key: string, fence: number) => store.fail(key, fence, fatal, 86_400_000),
    },
  ])(
    'a $op asked again after it landed in cold only answers ok and writes hot; a stale fence is lost',
    async ({ op, state, end }) => {
      // The hot half of the first one failed after cold had committed: its caller asks again.
      let failHot = true;
      const hot = withFaults(createMemoryStore(), { failWhen: (o) => failHot && o === op });
      const cold = createMemoryStore();
      const store = createTieredStore({ hot, cold, hotRetentionMs: 3_600_000 });
      const key = `default:billing:order-${op}`;
      const begun = await store.begin({ key, fingerprint: 'fp', owner: 'w', leaseMs: 5_000 });
      if (begun.status !== 'acquired') throw new Error(`begin answered ${begun.status}`);
      await expect(end(store, key, begun.fence)).rejects.toThrow();
      expect(await cold.get(key)).toMatchObject({ state });
      expect(await hot.get(key)).toMatchObject({ state: 'IN_PROGRESS', fence: begun.fence });
      failHot = false;
      expect(await end(store, key, begun.fence + 1)).toBe('lost');
      expect(await end(store, key, begun.fence)).toBe('ok');
      expect(await hot.get(key)).toMatchObject({ state, fence: begun.fence });
      expect(await end(store, key, begun.fence)).toBe('ok');
    },
  );

  it('refuses missing tiers and durations that are not positive numbers with a ConfigError', () => {
    const hot = createMemoryStore();
    const cold = createMemoryStore();
    const make = (extra: object) => () => createTieredStore({ hot, cold, hotRetentionMs: 1_000, ...extra });
    expect(make({})).not.toThrow();
    expect(make({ hotRetentionMs: 0 })).toThrow(ConfigError);
    expect(make({ coldLeaseMs: Number.NaN })).toThrow(ConfigError);
    expect(make({ coldRetentionMs: -1 })).toThrow(ConfigError);
    expect(make({ cold: undefined })).toThrow(ConfigError);
    // Before: taken; every key then claimed twice in one store and answered busy for ever.
    expect(make({ cold: hot })).toThrow(/two stores, not one/);
  });

  it("a key's own payload, retried after hot forgot it, is answered from cold past a claim another payload left in hot", async () => {
    // Before: hot's leftover claim of payload B (its cold begin failed in an outage) answered the
    // key's own payload A `mismatch` from hot alone (IDEMPOTENCY_KEY_REUSE, a 422) for as long as
    // the claim was kept (up to inProgressTtlMs, 7 days on Redis), though cold held A COMPLETED.
    let now = 1_000_000;
    const clock = () => now;
    const hot = createMemoryStore({ now: clock });
    let coldDown = false;
    const cold = withFaults(createMemoryStore({ now: clock }), {
      failWhen: (op) => coldDown && op === 'begin',
    });
    const store = createTieredStore({ hot, cold, hotRetentionMs: 5_000 });
    const request = (fingerprint: string) => ({ key: 'k', fingerprint, owner: 'w', leaseMs: 1_000 });
    const first = await store.begin(request('A'));
    if (first.status !== 'acquired') throw new Error(first.status);
    expect(
      await store.complete({ key: 'k', fence: first.fence, outgoing: [], retentionMs: 86_400_000 }),
    ).toBe('ok');
    now += 6_000; // hot's copy of the record expired; cold keeps it a day

    coldDown = true;
    await expect(store.begin(request('B'))).rejects.toThrow(/injected fault/);
    coldDown = false;
    expect(await hot.get('k')).toMatchObject({ state: 'IN_PROGRESS', fingerprint: 'B', leaseUntil: 0 });

    expect(await store.begin(request('A'))).toMatchObject({
      status: 'duplicate',
      record: { state: 'COMPLETED', fingerprint: 'A' },
    });
    expect(await store.begin(request('B'))).toMatchObject({
      status: 'mismatch',
      record: { fingerprint: 'A' },
    });
    // And while B's claim is live (its cold begin under way), A is not refused either.
    const live = await hot.begin(request('B'));
    expect(live.status).toBe('acquired');
    expect(await store.begin(request('A'))).toMatchObject({ status: 'duplicate' });
  });

  it('a cold tier that does not answer within the lease gives the hot lease back before it ends: no attempt counted', async () => {
    // Before: the begin waited on cold for as long as its client did (storeTimeoutMs); the hot
    // lease ran out meanwhile, each copy took the key over and counted an attempt, and the run
    // that got through was a takeover at attempt 4 with no process dead.
    const hot = createMemoryStore();
    const coldStore = createMemoryStore();
    let answer: () => void = () => undefined;
    let hanging = true;
    const cold: ProcessedStore = {
      ...coldStore,
      begin: async (request) => {
        if (hanging) await new Promise<void>((resolve) => (answer = resolve));
        return coldStore.begin(request);
      },
    };
    const store = createTieredStore({ hot, cold, hotRetentionMs: 3_600_000 });
    const attempts: number[] = [];
    const processor = createProcessor({
      consumer: 'billing',
      store,
      leaseMs: 100,
      heartbeatMs: 30,
      retentionCheck: 'off',
      handler: (_payload, ctx) => {
        attempts.push(ctx.attempt);
        return ctx.acquiredAs;
      },
    });
    const message = () => delivery({ order: 'o-3' }, { [Headers.IdempotencyKey]: 'order-3' });
    for (let i = 0; i < 3; i++) {
      expect(await processor.process(message())).toMatchObject({
        action: 'defer',
        outcome: 'store-unavailable',
      });
    }
    hanging = false;
    answer(); // the last abandoned cold begin lands its claim late: it is given back
    await sleep(20);
    expect(await processor.process(message())).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(attempts).toEqual([1]);
  });
});

describe('withFaults (the fault-injecting wrapper the tests above use)', () => {
  it('passes a release given back unrun on as such (the attempt is not counted)', async () => {
    // Before: the options were dropped, so every give-back through it counted an attempt.
    const store = withFaults(createMemoryStore(), { failWhen: () => false });
    const request = { key: 'k', fingerprint: 'f', owner: 'o', leaseMs: 1_000 };
    const first = await store.begin(request);
    if (first.status !== 'acquired') throw new Error(first.status);
    const error = { name: 'NotRun', code: 'NOT_RUN', message: 'given back' };
    expect(await store.release('k', first.fence, error, { notRun: true })).toBe('ok');
    expect(await store.begin(request)).toMatchObject({ status: 'acquired', attempt: 1 });
  });
});
