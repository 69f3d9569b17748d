/**
 * The pipeline property model of packages/core/test/pipeline.property.test.ts, adapted to real
 * stores: several workers race over duplicated deliveries while workers crash at every step,
 * stall past their lease while a rival takes over, retry and fail permanently, and the broker
 * redelivers whatever was not settled.
 *
 * What changes against the in-memory model:
 *   - Time is the store server's. Leases are short and really pass: before redelivering, a round
 *     waits (waitUntil on the store's record and clock) until every frozen worker's lease is over.
 *   - A crash freezes the worker for ever at that point: every later store call of it, heartbeats
 *     included, never returns — what the store sees of a SIGKILLed process.
 *   - A stall is a live worker paused (GC, swap) past its lease: its heartbeats are held until it
 *     resumes, a rival takes the key over meanwhile, and the paused worker resumes as soon as the
 *     rival holds the lease (so the two overlap). `stall` pauses inside the handler (the held
 *     heartbeat then learns the lease is lost); `stall-before-complete` pauses after the heartbeat
 *     stopped, right before the `complete` write, so only the store's fencing can stop it.
 *   - Each run uses a fresh consumer name, so runs never share records.
 *
 * Invariants (each failure names the one broken):
 *   - settled only when durable: ack => COMPLETED with every outgoing message confirmed;
 *     dead-letter => FAILED;
 *   - every message ends acked or dead-lettered, its record COMPLETED or FAILED;
 *   - at most one successful `complete` per key; a COMPLETED record has exactly one, and every
 *     outgoing message flagged published;
 *   - fencing: a `complete` succeeds only under the newest fence any `begin` granted for the key,
 *     and the COMPLETED record carries that fence;
 *   - ctx.keyFor is the same on every attempt; the handler runs more than once only after a crash,
 *     a stall, a failure or a takeover (a live holder whose store calls outlasted the short lease
 *     is a stall the plan did not inject); no attempt number beyond the retry limit reaches the
 *     handler.
 */
import { randomBytes } from 'node:crypto';
import {
  type BeginResult,
  createProcessor,
  type Disposition,
  type FencedResult,
  type HandlerContext,
  Headers,
  type OutgoingPublisher,
  PermanentError,
  type ProcessedStore,
  scopeKey,
} from '@exactly-once/core';
import fc from 'fast-check';
import { waitUntil } from '../support/wait.js';

export const CRASH_POINTS = [
  'none',
  'after-begin',
  'after-effect',
  'after-complete',
  'after-publish',
  'before-ack',
  // Not crashes: the worker pauses past its lease while a rival takes over.
  'stall',
  'stall-before-complete',
] as const;
export type CrashPoint = (typeof CRASH_POINTS)[number];
export type Behaviour = 'ok' | 'flaky' | 'permanent' | 'always-fails';

/** Short, so that waiting for frozen leases keeps runs quick; heartbeats every third of it. */
export const LEASE_MS = 300;
export const MAX_ATTEMPTS = 4;
/** Takeovers have their own, larger bound; no attempt passes the larger of the two. */
export const MAX_TAKEOVER_ATTEMPTS = 6;

export interface Scenario {
  keys: { behaviour: Behaviour; copies: number }[];
  workers: number;
  /** The crash plan of each successive worker run; runs past the end do not crash. */
  crashes: CrashPoint[];
}

export const scenario: fc.Arbitrary<Scenario> = fc.record({
  keys: fc.array(
    fc.record({
      behaviour: fc.constantFrom<Behaviour>('ok', 'ok', 'ok', 'flaky', 'permanent', 'always-fails'),
      copies: fc.integer({ min: 1, max: 3 }),
    }),
    { minLength: 1, maxLength: 4 },
  ),
  workers: fc.integer({ min: 1, max: 4 }),
  // Fewer than the core model's 30: every frozen lease costs real time here.
  crashes: fc.array(fc.constantFrom(...CRASH_POINTS), { maxLength: 12 }),
});

export interface StoreUnderTest {
  readonly store: ProcessedStore;
  /** The store's clock (ms since epoch), to tell when a lease has passed. */
  now(): Promise<number>;
  /**
   * Whether copies of one key may race on an existing record. False only for a server whose
   * conditional updates are not atomic (FerretDB 1.x, see packages/store-mongo/test): copies of a
   * key then never run in the same round; a stall's rival still overlaps the stalled worker.
   */
  readonly sameKeyRaces: boolean;
}

const never = new Promise<never>(() => {});

/** What happened in runs, summed: evidence that the properties exercised the real store's paths. */
export interface Coverage {
  runs: number;
  rounds: number;
  crashes: number;
  stalls: number;
  takeovers: number;
  /** Takeovers of a key no planned crash, stall or failure had troubled: its store outran the lease. */
  unplannedTakeovers: number;
  retries: number;
  /** Completes the store refused (lost): a newer fence held the key. */
  staleCompletesRefused: number;
  leaseLost: number;
  acks: number;
  deadLetters: number;
}

export const emptyCoverage = (): Coverage => ({
  runs: 0,
  rounds: 0,
  crashes: 0,
  stalls: 0,
  takeovers: 0,
  unplannedTakeovers: 0,
  retries: 0,
  staleCompletesRefused: 0,
  leaseLost: 0,
  acks: 0,
  deadLetters: 0,
});

interface Run {
  /** The worker's disposition; undefined when it died before settling. */
  readonly result: Promise<{ key: string; d?: Disposition }>;
  /** Resolves once the worker's begin returned (a stalled worker resumes then). */
  readonly begun: Promise<void>;
}

/** Runs one scenario against `sut`; throws when an invariant breaks. Counts into `coverage`. */
export async function runScenario(
  s: Scenario,
  sut: StoreUnderTest,
  coverage = emptyCoverage(),
): Promise<void> {
  coverage.runs++;
  const consumer = `prop-${randomBytes(6).toString('hex')}`;
  const storeKey = (key: string) => scopeKey('default', consumer, key);
  const shared = sut.store;
  const okCompletes = new Map<string, number[]>(); // key -> fences whose complete returned ok
  const newestFence = new Map<string, number>(); // key -> newest fence any begin granted
  const rawEffects = new Map<string, number>();
  const effectKeys = new Map<string, Set<string>>();
  const published = new Set<string>();
  const settled = new Map<string, 'ack' | 'dead-letter'>();
  const troubled = new Set<string>();
  const attemptsSeen = new Map<string, number>();
  // A failure of the harness itself inside the pipeline would read as a store or handler error
  // there; it is kept here and rethrown.
  const harnessErrors: unknown[] = [];
  const fail: (message: string) => never = (message) => {
    throw new Error(`invariant broken: ${message}\nscenario ${JSON.stringify(s)}`);
  };

  let queue = s.keys.flatMap((k, i) => Array.from({ length: k.copies }, () => `key-${i}`));
  let call = 0;
  const nextPlan = (): CrashPoint => s.crashes[call++] ?? 'none';
  let rivals: Run['result'][] = [];

  /**
   * Waits until no live lease is held on `key` (its holder is frozen, or paused). A frozen lease
   * passes within one LEASE_MS; the margin is for a store whose calls take seconds on a loaded
   * machine (FerretDB's one SQLite writer shared with the rest of the suite).
   */
  const leasePassed = (key: string) =>
    waitUntil(
      async () => {
        const rec = await shared.get(storeKey(key));
        return rec?.state !== 'IN_PROGRESS' || rec.leaseUntil < (await sut.now());
      },
      { timeoutMs: 60 * LEASE_MS, intervalMs: 20, message: `the lease on ${key} to pass` },
    );

  const work = (key: string, plan: CrashPoint): Run => {
    let dead = false;
    let crashed!: () => void;
    const crashSignal = new Promise<void>((r) => {
      crashed = r;
    });
    const crash = (): Promise<never> => {
      coverage.crashes++;
      dead = true;
      troubled.add(key);
      crashed();
      return never;
    };
    let begun!: () => void;
    const begunSignal = new Promise<void>((r) => {
      begun = r;
    });
    // While paused, this worker runs nothing: its heartbeats wait here until it resumes.
    let paused: Promise<void> | undefined;

    /** Pauses until the lease has passed and a rival holds the key, then resumes. */
    const stall = async () => {
      coverage.stalls++;
      troubled.add(key);
      let resume!: () => void;
      paused = new Promise<void>((r) => {
        resume = r;
      });
      try {
        await leasePassed(key);
        const rival = work(key, nextPlan());
        rivals.push(rival.result);
        await Promise.race([rival.begun, rival.result]);
      } catch (error) {
        harnessErrors.push(error);
      } finally {
        paused = undefined;
        resume();
      }
    };

    const began = (out: BeginResult): Promise<never> | undefined => {
      if (out.status !== 'acquired') return undefined;
      if (out.kind === 'takeover') {
        coverage.takeovers++;
        // The store saw the holder's lease pass. Unplanned, the holder was alive but its store
        // calls slower than the short lease (a loaded server): a stall the plan did not inject,
        // after which a second run is as allowed as after a planned one.
        if (!troubled.has(key)) coverage.unplannedTakeovers++;
        troubled.add(key);
      }
      if (out.kind === 'retry') coverage.retries++;
      newestFence.set(key, Math.max(newestFence.get(key) ?? 0, out.fence));
      return plan === 'after-begin' ? crash() : undefined;
    };
    const completed = (fence: number, out: FencedResult) => {
      if (out === 'ok') okCompletes.set(key, [...(okCompletes.get(key) ?? []), fence]);
      else coverage.staleCompletesRefused++;
    };
    // Core prefers a store's batch forms where it has them; they carry the same hooks.
    const hooks: Partial<ProcessedStore> = {
      async begin(r) {
        const out = await shared.begin(r);
        begun();
        return began(out) ?? out;
      },
      async beginMany(rs) {
        const outs = await shared.beginMany!(rs);
        begun();
        for (const out of outs) await began(out);
        return outs;
      },
      async extend(k, f, l) {
        while (paused) await paused;
        if (dead) return never;
        return shared.extend(k, f, l);
      },
      async complete(r) {
        if (plan === 'stall-before-complete') await stall();
        const out = await shared.complete(r);
        completed(r.fence, out);
        if (plan === 'after-complete') return crash();
        return out;
      },
      async completeMany(rs) {
        if (plan === 'stall-before-complete') await stall();
        const outs = await shared.completeMany!(rs);
        for (const [i, out] of outs.entries()) completed(rs[i]!.fence, out);
        if (plan === 'after-complete') return crash();
        return outs;
      },
    };
    // Every store call of a dead worker hangs for ever, whatever the method.
    const store = new Proxy(shared, {
      get(target, prop, receiver) {
        const value = Reflect.get(target, prop, receiver) as unknown;
        if (typeof value !== 'function') return value;
        const hook = hooks[prop as keyof ProcessedStore] as ((...a: unknown[]) => unknown) | undefined;
        return (...args: unknown[]) => {
          if (dead) return never;
          return hook ? hook(...args) : (value as (...a: unknown[]) => unknown).apply(target, args);
        };
      },
    });
    const publisher: OutgoingPublisher = {
      async publish(messages) {
        if (dead) return never;
        for (const m of messages) published.add(m.id);
        if (plan === 'after-publish') return crash();
      },
    };
    const behaviour = s.keys[Number(key.slice(4))]?.behaviour ?? 'ok';
    const p = createProcessor({
      consumer,
      store,
      publisher,
      leaseMs: LEASE_MS,
      retentionCheck: 'off',
      retry: { maxAttempts: MAX_ATTEMPTS, initialDelayMs: 1 },
      maxTakeoverAttempts: MAX_TAKEOVER_ATTEMPTS,
      handler: async (_: unknown, ctx: HandlerContext) => {
        attemptsSeen.set(key, Math.max(attemptsSeen.get(key) ?? 0, ctx.attempt));
        rawEffects.set(key, (rawEffects.get(key) ?? 0) + 1);
        const ek = effectKeys.get(key) ?? new Set();
        ek.add(ctx.keyFor('effect'));
        effectKeys.set(key, ek);
        if (plan === 'after-effect') return crash();
        if (plan === 'stall') await stall();
        if (behaviour === 'permanent') throw new PermanentError('declined');
        if (behaviour === 'always-fails' || (behaviour === 'flaky' && ctx.attempt === 1)) {
          troubled.add(key);
          throw new Error('transient');
        }
        ctx.publish('out', { key }, { name: 'event' });
        return { key };
      },
    });
    const body = new TextEncoder().encode(JSON.stringify({ key }));
    const run = p.process({
      body,
      headers: { [Headers.IdempotencyKey]: key },
      destination: 'orders',
      system: 'test',
    });
    const result = Promise.race([run, crashSignal.then(() => undefined)]).then((d) => {
      begun(); // a worker that never began must not hold up a stalled one
      if (d === undefined || plan === 'before-ack') {
        troubled.add(key);
        return { key };
      }
      return { key, d };
    });
    return { result, begun: begunSignal };
  };

  for (let round = 0; queue.length > 0; round++) {
    if (round > 200) fail(`no progress after 200 rounds; queue ${queue.join(',')}`);
    coverage.rounds++;
    const batch: string[] = [];
    const later: string[] = [];
    for (const key of queue) {
      if (batch.length < s.workers && (sut.sameKeyRaces || !batch.includes(key))) batch.push(key);
      else later.push(key);
    }
    queue = later;
    const results = await Promise.all(batch.map((key) => work(key, nextPlan()).result));
    // Stalls start rivals, whose own stalls start more.
    while (rivals.length > 0) {
      const pending = rivals;
      rivals = [];
      results.push(...(await Promise.all(pending)));
    }
    if (harnessErrors.length > 0) throw harnessErrors[0];
    for (const { key, d } of results) {
      if (!d) {
        queue.push(key); // the broker redelivers what the dead worker never settled
        continue;
      }
      const rec = await shared.get(storeKey(key));
      if (d.action === 'ack') {
        if (rec?.state !== 'COMPLETED') fail(`${key} acked while its record is ${rec?.state}`);
        for (const m of rec.outgoing) {
          if (!published.has(m.id)) fail(`${key} acked before its message ${m.id} was published`);
        }
        settled.set(key, 'ack');
        coverage.acks++;
      } else if (d.action === 'dead-letter') {
        if (rec?.state !== 'FAILED') fail(`${key} dead-lettered while its record is ${rec?.state}`);
        settled.set(key, 'dead-letter');
        coverage.deadLetters++;
      } else {
        if (d.outcome === 'lease-lost') coverage.leaseLost++;
        queue.push(key);
      }
    }
    // Frozen workers keep their leases until they pass: only then is a redelivery any use.
    await Promise.all([...new Set(queue)].map(leasePassed));
  }

  for (const [i, k] of s.keys.entries()) {
    const key = `key-${i}`;
    const rec = await shared.get(storeKey(key));
    if (!settled.has(key)) fail(`${key} never settled`);
    if (rec?.state !== 'COMPLETED' && rec?.state !== 'FAILED') fail(`${key} ended ${rec?.state}`);
    const completes = okCompletes.get(key) ?? [];
    if (completes.length > 1) fail(`${key} completed ${completes.length} times (fences ${completes})`);
    for (const fence of completes) {
      const newest = newestFence.get(key);
      if (fence !== newest) {
        fail(`${key}: complete under fence ${fence} succeeded though fence ${newest} had been granted`);
      }
    }
    if (rec.state === 'COMPLETED') {
      if (completes.length !== 1) fail(`${key} is COMPLETED but ${completes.length} completes succeeded`);
      if (rec.fence !== completes[0]) {
        fail(`${key} is COMPLETED under fence ${rec.fence}, but fence ${completes[0]} completed it`);
      }
      const unconfirmed = rec.outgoing.filter((m) => !m.published).map((m) => m.id);
      if (unconfirmed.length > 0) fail(`${key} left outgoing messages unflagged: ${unconfirmed}`);
    }
    // Effects keyed by ctx.keyFor are the same on every attempt: an idempotent API applies once.
    if ((effectKeys.get(key)?.size ?? 0) > 1) fail(`${key}: ctx.keyFor changed between attempts`);
    // The handler body runs more than once only after a crash, a stall, a failure or a takeover.
    if (!troubled.has(key) && k.behaviour === 'ok' && rawEffects.get(key) !== 1) {
      fail(`${key} ran ${rawEffects.get(key)} times without a crash, stall, failure or takeover`);
    }
    const attempts = attemptsSeen.get(key) ?? 0;
    if (attempts > MAX_TAKEOVER_ATTEMPTS) fail(`${key} ran attempt ${attempts}`);
    // A handler error past retry.maxAttempts is final: only takeovers start an attempt beyond it.
    if (!troubled.has(key) && attempts > MAX_ATTEMPTS) fail(`${key} ran attempt ${attempts} untroubled`);
  }
}
