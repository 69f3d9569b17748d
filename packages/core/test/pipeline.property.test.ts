/**
 * Property tests of the pipeline against the in-memory store: several workers race over
 * duplicated deliveries while workers crash at every step, leases expire and the broker
 * redelivers whatever was not settled. A crash is modelled as the worker freezing for ever at
 * that point (its store calls and heartbeats never return), which is what the store sees when a
 * process is SIGKILLed.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { HandlerContext } from '../src/context.js';
import { PermanentError } from '../src/errors.js';
import { Headers } from '../src/headers.js';
import { createProcessor } from '../src/processor.js';
import type { Disposition, OutgoingPublisher } from '../src/spi.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import type { ProcessedStore } from '../src/store/types.js';
import { delivery } from './helpers.js';

const CRASH_POINTS = [
  'none',
  'after-begin',
  'after-effect',
  'after-complete',
  'after-publish',
  'before-ack',
  // Not a crash: the worker pauses (GC, swap) past its lease while others go on.
  'stall',
] as const;
type CrashPoint = (typeof CRASH_POINTS)[number];
type Behaviour = 'ok' | 'flaky' | 'permanent' | 'always-fails';
const LEASE_MS = 1_000;
const MAX_ATTEMPTS = 4;
// Takeovers have their own, larger bound; no attempt passes the larger of the two.
const MAX_TAKEOVER_ATTEMPTS = 6;

interface Scenario {
  keys: { behaviour: Behaviour; copies: number }[];
  workers: number;
  crashes: CrashPoint[];
}

const scenario: fc.Arbitrary<Scenario> = fc.record({
  keys: fc.array(
    fc.record({
      behaviour: fc.constantFrom<Behaviour>('ok', 'ok', 'ok', 'flaky', 'permanent', 'always-fails'),
      copies: fc.integer({ min: 1, max: 3 }),
    }),
    { minLength: 1, maxLength: 5 },
  ),
  workers: fc.integer({ min: 1, max: 4 }),
  // The crash plan of each successive process() call; calls past the end do not crash.
  crashes: fc.array(fc.constantFrom(...CRASH_POINTS), { maxLength: 30 }),
});

const never = new Promise<never>(() => {});

async function runScenario(s: Scenario): Promise<void> {
  let clock = 1_000_000;
  const shared = createMemoryStore({ now: () => clock });
  const completes = new Map<string, number>();
  const rawEffects = new Map<string, number>();
  const effectKeys = new Map<string, Set<string>>();
  const published = new Set<string>();
  const settled = new Map<string, 'ack' | 'dead-letter'>();
  const troubled = new Set<string>();
  const attemptsSeen = new Map<string, number>();

  // Copies of one key sit side by side, so concurrent workers race on the same key.
  let queue = s.keys.flatMap((k, i) => Array.from({ length: k.copies }, () => `key-${i}`));
  let call = 0;

  for (let round = 0; queue.length > 0; round++) {
    if (round > 200) throw new Error(`no progress after 200 rounds; queue ${queue.join(',')}`);
    const batch = queue.splice(0, s.workers);
    const rivals: { key: string; d?: Disposition }[] = [];
    const work = async (key: string, plan: CrashPoint): Promise<{ key: string; d?: Disposition }> => {
      let crashed!: () => void;
      const crashSignal = new Promise<void>((r) => {
        crashed = r;
      });
      let dead = false;
      const crash = (): Promise<never> => {
        dead = true;
        troubled.add(key);
        crashed();
        return never;
      };
      const store = freezingStore(shared, () => dead, plan, crash, completes);
      const publisher: OutgoingPublisher = {
        async publish(messages) {
          if (dead) return never;
          for (const m of messages) published.add(m.id);
          if (plan === 'after-publish') return crash();
        },
      };
      const behaviour = s.keys[Number(key.slice(4))]?.behaviour ?? 'ok';
      const p = createProcessor({
        consumer: 'prop',
        store,
        publisher,
        leaseMs: LEASE_MS,
        retentionCheck: 'off',
        retry: { maxAttempts: MAX_ATTEMPTS, initialDelayMs: 1 },
        maxTakeoverAttempts: MAX_TAKEOVER_ATTEMPTS,
        handler: async (_: unknown, ctx: HandlerContext) => {
          attemptsSeen.set(key, ctx.attempt);
          rawEffects.set(key, (rawEffects.get(key) ?? 0) + 1);
          const ek = effectKeys.get(key) ?? new Set();
          ek.add(ctx.keyFor('effect'));
          effectKeys.set(key, ek);
          if (plan === 'after-effect') return crash();
          if (plan === 'stall') {
            // The lease runs out while this worker pauses; a redelivered copy takes over.
            troubled.add(key);
            clock += LEASE_MS + 1;
            rivals.push(await work(key, s.crashes[call++] ?? 'none'));
          }
          if (behaviour === 'permanent') throw new PermanentError('declined');
          if (behaviour === 'always-fails' || (behaviour === 'flaky' && ctx.attempt === 1)) {
            troubled.add(key);
            throw new Error('transient');
          }
          ctx.publish('out', { key }, { name: 'event' });
          return { key };
        },
      });
      const run = p.process(delivery({ key }, { [Headers.IdempotencyKey]: key }));
      const d = await Promise.race([run, crashSignal.then(() => undefined)]);
      if (d === undefined || plan === 'before-ack') {
        troubled.add(key);
        return { key };
      }
      return { key, d };
    };
    const results = await Promise.all(batch.map((key) => work(key, s.crashes[call++] ?? 'none')));
    for (const { key, d } of [...rivals, ...results]) {
      if (!d) {
        queue.push(key); // the broker redelivers what the dead worker never settled
        continue;
      }
      const rec = await shared.get(`default:prop:${key}`);
      if (d.action === 'ack') {
        // Invariant: never settled before the completion is durable and its messages confirmed.
        expect(rec?.state).toBe('COMPLETED');
        if (rec?.state === 'COMPLETED') {
          for (const m of rec.outgoing) expect(published.has(m.id)).toBe(true);
        }
        settled.set(key, 'ack');
      } else if (d.action === 'dead-letter') {
        expect(rec?.state).toBe('FAILED');
        settled.set(key, 'dead-letter');
      } else {
        queue.push(key);
      }
    }
    // Leases of frozen workers run out; live ones must have extended or they lose theirs.
    clock += LEASE_MS + 1;
    queue = queue.slice();
  }

  for (const [i, k] of s.keys.entries()) {
    const key = `key-${i}`;
    const rec = await shared.get(`default:prop:${key}`);
    // Invariant: every message ends completed or dead-lettered.
    expect(settled.has(key)).toBe(true);
    expect(rec?.state === 'COMPLETED' || rec?.state === 'FAILED').toBe(true);
    // Invariant: at most one COMPLETED commit per key.
    expect(completes.get(key) ?? 0).toBeLessThanOrEqual(1);
    if (rec?.state === 'COMPLETED') {
      expect(completes.get(key)).toBe(1);
      expect(rec.outgoing.every((m) => m.published)).toBe(true);
    }
    // Effects keyed by ctx.keyFor are the same on every attempt: an idempotent API applies once.
    expect(effectKeys.get(key)?.size ?? 0).toBeLessThanOrEqual(1);
    // The handler body runs more than once only after a crash, a lost lease or a failure.
    if (!troubled.has(key) && k.behaviour === 'ok') expect(rawEffects.get(key)).toBe(1);
    expect(attemptsSeen.get(key) ?? 0).toBeLessThanOrEqual(MAX_TAKEOVER_ATTEMPTS);
    // A handler error past retry.maxAttempts is final: only takeovers start an attempt beyond it.
    if (!troubled.has(key)) expect(attemptsSeen.get(key) ?? 0).toBeLessThanOrEqual(MAX_ATTEMPTS);
  }
}

/** A view of the shared store for one worker: frozen for ever once the worker is dead. */
function freezingStore(
  store: ProcessedStore,
  isDead: () => boolean,
  plan: CrashPoint,
  crash: () => Promise<never>,
  completes: Map<string, number>,
): ProcessedStore {
  const keyOf = (storeKey: string) => storeKey.split(':').slice(2).join(':');
  return {
    async begin(r) {
      if (isDead()) return never;
      const out = await store.begin(r);
      if (plan === 'after-begin' && out.status === 'acquired') return crash();
      return out;
    },
    extend: async (k, f, l) => (isDead() ? never : store.extend(k, f, l)),
    async complete(r) {
      if (isDead()) return never;
      const out = await store.complete(r);
      if (out === 'ok') completes.set(keyOf(r.key), (completes.get(keyOf(r.key)) ?? 0) + 1);
      if (plan === 'after-complete') return crash();
      return out;
    },
    release: async (k, f, e) => (isDead() ? never : store.release(k, f, e)),
    fail: async (k, f, e, r) => (isDead() ? never : store.fail(k, f, e, r)),
    markPublished: async (k, f, ids) => (isDead() ? never : store.markPublished(k, f, ids)),
    saveStep: async (k, f, n, r) => (isDead() ? never : store.saveStep(k, f, n, r)),
    get: (k) => store.get(k),
    clear: (k) => store.clear(k),
  };
}

describe('pipeline properties (in-memory store)', () => {
  const numRuns = Number(process.env.EO_PROPERTY_RUNS ?? 150);

  it('holds the invariants with a fixed seed', async () => {
    await fc.assert(fc.asyncProperty(scenario, runScenario), { seed: 20261126, numRuns });
  });

  it('holds the invariants with a random seed (printed on failure)', async () => {
    const seed = Number(process.env.EO_PROPERTY_SEED ?? Math.floor(Math.random() * 2 ** 31));
    try {
      await fc.assert(fc.asyncProperty(scenario, runScenario), { seed, numRuns });
    } catch (error) {
      throw new Error(`property failed with EO_PROPERTY_SEED=${seed}: ${(error as Error).message}`);
    }
  });
});
