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
import type { BeginRequest, ProcessedStore } from '../src/store/types.js';
import { delivery } from './helpers.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Two in-memory tiers on one clock the test steps (`now`); cold's begins fail while `coldDown`. */
function steppedTiers(hotRetentionMs: number) {
  const tiers = { now: 1_000_000, coldDown: false };
  const clock = () => tiers.now;
  const hot = createMemoryStore({ now: clock });
  const cold = withFaults(createMemoryStore({ now: clock }), {
    failWhen: (op) => tiers.coldDown && op === 'begin',
  });
  return Object.assign(tiers, { hot, store: createTieredStore({ hot, cold, hotRetentionMs }) });
}

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

  it("clear with failedFence: hot's FAILED record by hot's fence, cold's by cold's own once hot forgot it", async () => {
    let now = 1_000_000;
    const hot = createMemoryStore({ now: () => now });
    // Cold's clock runs ahead, so its fences differ from hot's for the same record.
    const cold = createMemoryStore({ now: () => now + 777 });
    const store = createTieredStore({ hot, cold, hotRetentionMs: 5_000 });
    const request = { key: 'k', fingerprint: 'A', owner: 'w', leaseMs: 1_000 };
    const fatal = { name: 'E', code: 'PERMANENT', message: 'declined' };
    const failOnce = async () => {
      const begun = await store.begin(request);
      if (begun.status !== 'acquired') throw new Error(begun.status);
      expect(await store.fail('k', begun.fence, fatal, 86_400_000)).toBe('ok');
      return begun.fence;
    };
    // Hot holds the FAILED record: the caller read hot's fence; both tiers are cleared.
    const hotFence = await failOnce();
    const coldFence = (await cold.get('k'))?.fence as number;
    expect(coldFence).not.toBe(hotFence);
    expect(await store.get('k')).toMatchObject({ state: 'FAILED', fence: hotFence });
    expect(await store.clear('k', { failedFence: coldFence })).toBe('changed');
    expect(await store.clear('k', { failedFence: hotFence })).toBe('cleared');
    expect(await hot.get('k')).toBeUndefined();
    expect(await cold.get('k')).toBeUndefined();

    // Hot forgot it: get answers cold's record and fence, which the clear checks in cold.
    const hotAgain = await failOnce();
    now += 6_000;
    expect(await hot.get('k')).toBeUndefined();
    const read = await store.get('k');
    if (read?.state !== 'FAILED') throw new Error(String(read?.state));
    expect(read.fence).not.toBe(hotAgain);
    expect(await store.clear('k', { failedFence: hotAgain })).toBe('changed');
    expect(await store.clear('k', { failedFence: read.fence })).toBe('cleared');
    expect(await store.begin(request)).toMatchObject({ status: 'acquired', kind: 'new' });
  });

  it("a key's own payload, retried after hot forgot it, is answered from cold past a claim another payload left in hot", async () => {
    // Before: hot's leftover claim of payload B (its cold begin failed in an outage) answered the
    // key's own payload A `mismatch` from hot alone (IDEMPOTENCY_KEY_REUSE, a 422) for as long as
    // the claim was kept (up to inProgressTtlMs, 7 days on Redis), though cold held A COMPLETED.
    const tiers = steppedTiers(5_000);
    const { hot, store } = tiers;
    const request = (fingerprint: string) => ({ key: 'k', fingerprint, owner: 'w', leaseMs: 1_000 });
    const first = await store.begin(request('A'));
    if (first.status !== 'acquired') throw new Error(first.status);
    expect(
      await store.complete({ key: 'k', fence: first.fence, outgoing: [], retentionMs: 86_400_000 }),
    ).toBe('ok');
    tiers.now += 6_000; // hot's copy of the record expired; cold keeps it a day

    tiers.coldDown = true;
    await expect(store.begin(request('B'))).rejects.toThrow(/injected fault/);
    tiers.coldDown = false;
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

// A begin that got past hot, then reached cold late (its process paused between the tiers, or its
// cold request delayed), took over the cold claim of the worker that meanwhile took the hot lease
// over and ran: that claim is never extended, so it had lapsed. The running worker's completion
// then found no claim of its own and was refused: its run went unrecorded and the key's next
// delivery ran the handler again. On one store the stale begin cannot take a heartbeated lease.
describe('tiered store: a stale begin reaching cold after the running worker’s claim lapsed', () => {
  it('the running worker still commits; the key is then a duplicate, never run again', async () => {
    let now = 1_000_000;
    const clock = () => now;
    const hot = createMemoryStore({ now: clock });
    const coldStore = createMemoryStore({ now: clock });
    // W's cold begin is held (its process paused after hot answered); every other call goes on.
    let resume!: () => void;
    const paused = new Promise<void>((resolve) => (resume = resolve));
    const cold: ProcessedStore = {
      ...coldStore,
      begin: async (request: BeginRequest) => {
        if (request.owner.startsWith('W')) await paused;
        return coldStore.begin(request);
      },
    };
    // leaseMs in store time; the real-time give-up (4/5 of it) never fires within the test.
    const leaseMs = 60_000;
    const store = createTieredStore({ hot, cold, hotRetentionMs: 3_600_000 });
    const key = 'default:billing:order-1';
    const request = (owner: string) => ({ key, fingerprint: 'fp', owner, leaseMs });

    const w = store.begin(request('W')); // hot acquired; cold begin not sent yet (paused)
    await new Promise((r) => setTimeout(r, 10));
    now += leaseMs + 1; // W's hot lease lapses

    const a = await store.begin(request('A')); // takes hot over, and claims cold
    expect(a).toMatchObject({ status: 'acquired', kind: 'takeover' });
    if (a.status !== 'acquired') return;
    // A runs a long handler: its heartbeat extends hot (only hot, by design).
    for (let i = 0; i < 4; i++) {
      now += leaseMs / 3;
      expect(await store.extend(key, a.fence, leaseMs)).toBe('ok');
    }
    // W wakes: its cold begin takes over A's claim, which was never extended and has lapsed.
    resume();
    const wAnswer = await w;
    // W's processor then finds its hot lease lost (extend before the handler) and stops.
    if (wAnswer.status === 'acquired') {
      expect(await store.extend(key, wAnswer.fence, leaseMs)).toBe('lost');
    }

    // A's handler finished; its completion must be recorded (hot still names A as the holder).
    const completed = await store.complete({ key, fence: a.fence, outgoing: [], retentionMs: 86_400_000 });
    expect(completed).toBe('ok');
    now += leaseMs + 1;
    expect(await store.begin(request('B'))).toMatchObject({ status: 'duplicate' });
  });
});

describe('tiered store: the same, end to end through two processors', () => {
  it('a cold begin that lands late, after the running worker’s cold claim lapsed, does not make the handler run twice', async () => {
    const hot = createMemoryStore();
    const coldStore = createMemoryStore();
    // The first cold begin is delayed (a slow connection to cold; or the worker paused).
    let first = true;
    let land!: () => void;
    const delayed = new Promise<void>((resolve) => (land = resolve));
    const cold: ProcessedStore = {
      ...coldStore,
      beginMany: undefined,
      begin: async (request: BeginRequest) => {
        if (first) {
          first = false;
          await delayed;
        }
        return coldStore.begin(request);
      },
    };
    const store = createTieredStore({ hot, cold, hotRetentionMs: 3_600_000 });
    let runs = 0;
    const make = (owner: string) =>
      createProcessor({
        consumer: 'billing',
        store,
        ownerId: owner,
        leaseMs: 300,
        retentionCheck: 'off',
        handler: async () => {
          runs++;
          await new Promise((r) => setTimeout(r, 1_000)); // a long run: its cold claim lapses
          return 'charged';
        },
      });
    const message = () => delivery({ order: 'o-1' }, { [Headers.IdempotencyKey]: 'order-1' });
    const w = make('W');
    const a = make('A');
    // W: hot acquired, cold does not answer within 4/5 of the lease: store-unavailable, given back.
    expect(await w.process(message())).toMatchObject({ outcome: 'store-unavailable' });
    // A (the redelivery) runs; meanwhile W's cold begin lands, after A's claim (300 ms) lapsed.
    const running = a.process(message());
    setTimeout(land, 700);
    const d1 = await running;
    // Then the message is delivered again until it is acked.
    let d = d1;
    for (let i = 0; i < 20 && d.action !== 'ack'; i++) {
      await new Promise((r) => setTimeout(r, 200));
      d = await a.process(message());
    }
    expect(d.action).toBe('ack');
    expect({ runs, firstOutcome: d1.outcome }).toEqual({ runs: 1, firstOutcome: 'acquired' });
  }, 20_000);
});

// A takeover given back unrun (cold unreachable, slow, or still busy) lost `takenOver`: the next
// begin answered 'retry', and the handler was told its last run failed cleanly although a worker
// died mid-run (no takeover gate, bound or log).
describe('tiered store: a takeover given back unrun stays a takeover', () => {
  it('cold unreachable while a dead worker’s key is taken over: the next begin is still a takeover', async () => {
    const tiers = steppedTiers(3_600_000);
    const { store } = tiers;
    const request = (owner: string) => ({ key: 'k', fingerprint: 'fp', owner, leaseMs: 1_000 });

    expect(await store.begin(request('dies'))).toMatchObject({ status: 'acquired', kind: 'new' });
    tiers.now += 5_000; // the worker died mid-run: both leases lapse

    tiers.coldDown = true; // the redelivery meets a cold blip
    await expect(store.begin(request('b'))).rejects.toThrow(/injected fault/);
    tiers.coldDown = false;
    expect(await store.begin(request('c'))).toMatchObject({ status: 'acquired', kind: 'takeover' });
  });

  it('cold still busy (its claim was taken a round trip after hot’s lease): the next begin is still a takeover', async () => {
    let now = 1_000_000;
    const clock = () => now;
    const hot = createMemoryStore({ now: clock });
    const coldStore = createMemoryStore({ now: clock });
    const cold = {
      ...coldStore,
      // The dying worker's cold begin reaches cold 30 ms after its hot one.
      begin: async (r: Parameters<typeof coldStore.begin>[0]) => {
        if (r.owner.startsWith('dies')) now += 30;
        return coldStore.begin(r);
      },
    };
    const store = createTieredStore({ hot, cold, hotRetentionMs: 3_600_000 });
    const request = (owner: string) => ({ key: 'k', fingerprint: 'fp', owner, leaseMs: 1_000 });

    expect(await store.begin(request('dies'))).toMatchObject({ status: 'acquired' });
    now += 1_000 - 30 + 10; // dead before its first heartbeat: hot lease lapsed, cold claim not yet
    expect(await store.begin(request('b'))).toMatchObject({ status: 'busy' });
    now += 100;
    expect(await store.begin(request('c'))).toMatchObject({ status: 'acquired', kind: 'takeover' });
  });
});
