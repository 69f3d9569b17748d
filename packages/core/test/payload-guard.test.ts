/**
 * The payload guard in the pipeline (memory store): the same payload under a new key within the
 * window is flagged or dead-lettered; the same key redelivered never is. The real stores run the
 * claimFingerprint conformance suite in their own packages.
 */
import { describeFingerprintClaimConformance } from '@exactly-once/core/testing';
import { describe, expect, it } from 'vitest';
import { CorruptRecordError, DuplicatePayloadError, ErrorCode } from '../src/errors.js';
import { Headers } from '../src/headers.js';
import { fingerprint as fingerprintOf } from '../src/keys.js';
import type { Logger, LogMeta } from '../src/logger.js';
import type { ProcessorOptions } from '../src/options.js';
import { createProcessor } from '../src/processor.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import type { ProcessedStore } from '../src/store/types.js';
import { delivery } from './helpers.js';

const key = (k: string) => ({ [Headers.IdempotencyKey]: k });
const fast = { leaseMs: 300, retentionCheck: 'off' as const, retry: { maxAttempts: 3, initialDelayMs: 10 } };

function recordingLogger(): Logger & { warnings: { message: string; meta?: LogMeta }[] } {
  const warnings: { message: string; meta?: LogMeta }[] = [];
  const noop = () => {};
  return {
    warnings,
    debug: noop,
    info: noop,
    error: noop,
    warn: (message, meta) => warnings.push({ message, meta }),
  };
}

/** A `billing` processor with the payload guard: the memory store and a recording logger unless given. */
function guarded<T = unknown>(
  options: Pick<ProcessorOptions<T, unknown>, 'payloadGuard' | 'handler'> &
    Partial<ProcessorOptions<T, unknown>>,
) {
  return createProcessor<T>({
    consumer: 'billing',
    store: createMemoryStore(),
    ...fast,
    logger: recordingLogger(),
    ...options,
  });
}

describeFingerprintClaimConformance('memory', () => ({ store: createMemoryStore() }));

describe('payloadGuard', () => {
  it('flag: a second key with the same payload runs, and is counted, logged and marked', async () => {
    // Prepare
    const logger = recordingLogger();
    let runs = 0;
    const p = guarded({
      logger,
      // Keys in log lines only with recordKeys (see the redaction tests in tracing.test.ts).
      recordKeys: true,
      payloadGuard: { windowMs: 60_000, action: 'flag' },
      handler: () => {
        runs++;
      },
    });
    const charge = { user: 7, amount: 100 };
    // Act: the client retried with a fresh key (S6), then the first key was redelivered.
    const first = await p.process(delivery(charge, key('charge-2:00:59')));
    const second = await p.process(delivery(charge, key('charge-2:01:00')));
    const redelivered = await p.process(delivery(charge, key('charge-2:00:59')));
    // Assess
    expect(first).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(second).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(redelivered).toMatchObject({ action: 'ack', outcome: 'duplicate' });
    expect(runs).toBe(2);
    expect(logger.warnings).toHaveLength(1);
    expect(logger.warnings[0]?.meta).toMatchObject({
      key: 'charge-2:01:00',
      firstKey: 'charge-2:00:59',
      action: 'flag',
    });
  });

  it('dead-letter: the second key is refused with DuplicatePayloadError before its handler runs', async () => {
    let runs = 0;
    const p = guarded({
      payloadGuard: { windowMs: 60_000, action: 'dead-letter' },
      handler: () => {
        runs++;
        return 'charged';
      },
    });
    const charge = { user: 7, amount: 100 };
    expect(await p.process(delivery(charge, key('a')))).toMatchObject({ action: 'ack' });
    const refused = await p.process(delivery(charge, key('b')));
    expect(refused).toMatchObject({
      action: 'dead-letter',
      outcome: 'payload-reuse',
      reason: { error: { name: 'DuplicatePayloadError', code: ErrorCode.DuplicatePayload } },
    });
    // Refused again on redelivery; the first key's redelivery is its own duplicate, never refused.
    expect(await p.process(delivery(charge, key('b')))).toMatchObject({ action: 'dead-letter' });
    expect(await p.process(delivery(charge, key('a')))).toMatchObject({
      action: 'ack',
      outcome: 'duplicate',
    });
    // A different payload under a new key is a new message.
    expect(await p.process(delivery({ ...charge, amount: 101 }, key('c')))).toMatchObject({
      action: 'ack',
      outcome: 'acquired',
    });
    expect(runs).toBe(2);
    const error = new DuplicatePayloadError({ key: 'b', firstKey: 'a', fingerprint: 'f'.repeat(64) });
    expect(error.retryable).toBe(false);
    expect(error.code).toBe('DUPLICATE_PAYLOAD');
  });

  it("a claim damaged in the store dead-letters its message CORRUPT_RECORD, not an outage's defer", async () => {
    const store = createMemoryStore();
    const damaged: ProcessedStore = {
      ...store,
      begin: store.begin.bind(store),
      complete: store.complete.bind(store),
      claimFingerprint: async (_scope, _fingerprint, key) => {
        throw new CorruptRecordError({ key, detail: "a value of another type at its payload's claim" });
      },
    };
    let runs = 0;
    const p = guarded({
      store: damaged,
      payloadGuard: { windowMs: 60_000, action: 'dead-letter' },
      handler: () => {
        runs++;
      },
    });
    expect(await p.process(delivery({ amount: 5 }, key('K1')))).toMatchObject({
      action: 'dead-letter',
      outcome: 'corrupt-record',
      reason: { error: { code: ErrorCode.CorruptRecord } },
    });
    expect(runs).toBe(0);
    expect(p.storeHealth().unavailableSince).toBeUndefined();
  });

  it('dead-letter without recordKeys: neither key reaches the log line (the message quotes both)', async () => {
    // Before, the dead-letter line scrubbed this message's key but quoted the first key in full.
    const logger = recordingLogger();
    const p = guarded({
      logger,
      payloadGuard: { windowMs: 60_000, action: 'dead-letter' },
      handler: () => 'charged',
    });
    const charge = { user: 7, amount: 100 };
    await p.process(delivery(charge, key('first-key-1234')));
    expect(await p.process(delivery(charge, key('second-key-5678')))).toMatchObject({
      action: 'dead-letter',
    });
    const logged = JSON.stringify(logger.warnings);
    expect(logged).toContain('[redacted]');
    expect(logged).not.toContain('first-key-1234');
    expect(logged).not.toContain('second-key-5678');
  });

  it('a copy refused as a key reuse gives its claim back: the corrected request under a new key runs', async () => {
    // Before, the refused copy (K1 with 700) kept the claim of 700 for the whole window, and the
    // client's corrected request (K2 with 700) was refused as DUPLICATE_PAYLOAD naming K1.
    const charged: number[] = [];
    const p = guarded<{ amount: number }>({
      payloadGuard: { windowMs: 60_000, action: 'dead-letter' },
      handler: (m) => {
        charged.push(m.amount);
        return 'charged';
      },
    });
    expect(await p.process(delivery({ amount: 500 }, key('K1')))).toMatchObject({ action: 'ack' });
    expect(await p.process(delivery({ amount: 700 }, key('K1')))).toMatchObject({
      action: 'dead-letter',
      outcome: 'mismatch',
      reason: { error: { code: ErrorCode.KeyReuse } },
    });
    expect(await p.process(delivery({ amount: 700 }, key('K2')))).toMatchObject({
      action: 'ack',
      outcome: 'acquired',
    });
    // The corrected request now holds the claim: a fourth key with 700 is refused naming K2.
    expect(await p.process(delivery({ amount: 700 }, key('K3')))).toMatchObject({
      action: 'dead-letter',
      outcome: 'payload-reuse',
      reason: { error: { message: expect.stringContaining('K2') } },
    });
    expect(charged).toEqual([500, 700]);
  });

  it('the corrected request sent right behind the refused reuse runs, however the two interleave', async () => {
    // Before, K2 arrived while K1's copy with 700 held the claim (its begin had not answered
    // yet, so it had not given the claim back) and was refused as DUPLICATE_PAYLOAD naming K1:
    // the customer's 700 was never charged.
    const charged: string[] = [];
    const p = guarded<{ amount: number }>({
      payloadGuard: { windowMs: 60_000, action: 'dead-letter' },
      handler: (m, ctx) => {
        charged.push(`${ctx.key}:${m.amount}`);
        return 'charged';
      },
    });
    await p.process(delivery({ amount: 500 }, key('K1')));
    const [reuse, corrected] = await Promise.all([
      p.process(delivery({ amount: 700 }, key('K1'))),
      p.process(delivery({ amount: 700 }, key('K2'))),
    ]);
    expect(reuse).toMatchObject({ action: 'dead-letter', outcome: 'mismatch' });
    expect(corrected).toMatchObject({ action: 'ack', outcome: 'acquired' });
    // K2 holds the claim now: a new-key retry of the correction is refused, naming K2.
    expect(await p.process(delivery({ amount: 700 }, key('K3')))).toMatchObject({
      outcome: 'payload-reuse',
      reason: { error: { message: expect.stringContaining('K2') } },
    });
    expect(charged).toEqual(['K1:500', 'K2:700']);
  });

  it("a key reuse never releases another key's claim, and a failed release only lets the claim lapse", async () => {
    const store = createMemoryStore();
    let releaseDown = false;
    const flaky: ProcessedStore = Object.create(store);
    flaky.releaseFingerprint = async (...args) => {
      if (releaseDown) throw new Error('connection refused');
      return store.releaseFingerprint?.(...args);
    };
    const logger = recordingLogger();
    const p = guarded<{ amount: number }>({
      store: flaky,
      logger,
      payloadGuard: { windowMs: 60_000, action: 'flag' },
      handler: () => 'charged',
    });
    // K2 claims 700 and runs; K1 (completed with 500) resent with 700 is a key reuse whose
    // claim attempt found K2's: K2's claim stays.
    await p.process(delivery({ amount: 500 }, key('K1')));
    await p.process(delivery({ amount: 700 }, key('K2')));
    expect(await p.process(delivery({ amount: 700 }, key('K1')))).toMatchObject({ outcome: 'mismatch' });
    expect(
      await store.claimFingerprint?.('default:billing', fingerprintOf({ amount: 700 }), 'K9', 60_000),
    ).toEqual({
      firstKey: 'K2',
    });
    // A release that fails is logged; the refusal stands.
    await p.process(delivery({ amount: 800 }, key('K3')));
    releaseDown = true;
    expect(await p.process(delivery({ amount: 900 }, key('K3')))).toMatchObject({ action: 'dead-letter' });
    expect(logger.warnings.map((w) => w.message)).toContain(
      'could not release the payload guard claim of a refused key reuse; it lasts its window',
    );
  });

  it("a key's own message after its claim lapsed and another key took the payload is its duplicate, not a reuse", async () => {
    // Before, K1 redelivered after the window, once K2 had claimed the same payload, was refused
    // as DUPLICATE_PAYLOAD naming K2, though the README says a key's own redelivery never is.
    let now = 1_000_000;
    let runs = 0;
    const p = guarded({
      store: createMemoryStore({ now: () => now }),
      payloadGuard: { windowMs: 5_000, action: 'dead-letter' },
      handler: () => {
        runs++;
        return 'charged';
      },
    });
    expect(await p.process(delivery({ n: 1 }, key('K1')))).toMatchObject({ outcome: 'acquired' });
    now += 6_000;
    expect(await p.process(delivery({ n: 1 }, key('K2')))).toMatchObject({ outcome: 'acquired' });
    expect(await p.process(delivery({ n: 1 }, key('K1')))).toMatchObject({
      action: 'ack',
      outcome: 'duplicate',
    });
    // A key the store has never seen is still refused while K2's claim lives.
    expect(await p.process(delivery({ n: 1 }, key('K3')))).toMatchObject({ outcome: 'payload-reuse' });
    expect(runs).toBe(2);
  });

  it('a key reused for a payload another key already carries is a key reuse, whatever came first', async () => {
    // K1 charged 500; the corrected K2 with 700 ran before K1's buggy copy with 700 arrived:
    // before, that copy was DUPLICATE_PAYLOAD (naming K2), not the IDEMPOTENCY_KEY_REUSE it is.
    const p = guarded<{ amount: number }>({
      payloadGuard: { windowMs: 60_000, action: 'dead-letter' },
      handler: () => 'charged',
    });
    await p.process(delivery({ amount: 500 }, key('K1')));
    await p.process(delivery({ amount: 700 }, key('K2')));
    for (let copy = 0; copy < 2; copy++) {
      expect(await p.process(delivery({ amount: 700 }, key('K1')))).toMatchObject({
        action: 'dead-letter',
        outcome: 'mismatch',
        reason: { error: { code: ErrorCode.KeyReuse }, attempts: 1 },
      });
    }
    // K2's claim was not K1's to give back: a new key with 700 is still refused.
    expect(await p.process(delivery({ amount: 700 }, key('K3')))).toMatchObject({ outcome: 'payload-reuse' });
  });

  it('the window lapses on the store clock: after it, the same payload under a new key runs', async () => {
    let now = 1_000_000;
    const p = guarded({
      store: createMemoryStore({ now: () => now }),
      payloadGuard: { windowMs: 5_000, action: 'dead-letter' },
      handler: () => 'ok',
    });
    expect(await p.process(delivery({ n: 1 }, key('a')))).toMatchObject({ action: 'ack' });
    now += 4_999;
    expect(await p.process(delivery({ n: 1 }, key('b')))).toMatchObject({ action: 'dead-letter' });
    now += 2;
    expect(await p.process(delivery({ n: 1 }, key('b')))).toMatchObject({
      action: 'ack',
      outcome: 'acquired',
    });
  });

  it('the fingerprint option narrows what counts as the same payload', async () => {
    const p = createProcessor<{ order: string; sentAt: string }>({
      consumer: 'orders',
      store: createMemoryStore(),
      ...fast,
      logger: recordingLogger(),
      fingerprint: (m) => m.order,
      payloadGuard: { windowMs: 60_000, action: 'dead-letter' },
      handler: () => 'ok',
    });
    await p.process(delivery({ order: 'o-1', sentAt: '2:00:59' }, key('a')));
    expect(await p.process(delivery({ order: 'o-1', sentAt: '2:01:00' }, key('b')))).toMatchObject({
      action: 'dead-letter',
    });
  });

  it('a store outage during the claim defers the message (nothing acked, nothing run)', async () => {
    const store = createMemoryStore();
    let down = true;
    const flaky: ProcessedStore = Object.create(store);
    flaky.claimFingerprint = async (...args) => {
      if (down) throw new Error('connection refused');
      return store.claimFingerprint?.(...args);
    };
    let runs = 0;
    const p = guarded({
      store: flaky,
      payloadGuard: { windowMs: 60_000, action: 'flag' },
      handler: () => {
        runs++;
      },
    });
    expect(await p.process(delivery({ n: 1 }, key('a')))).toMatchObject({ action: 'defer' });
    down = false;
    expect(await p.process(delivery({ n: 1 }, key('a')))).toMatchObject({ action: 'ack' });
    expect(runs).toBe(1);
  });

  it('is validated at construction', () => {
    const base = {
      consumer: 'c',
      store: createMemoryStore(),
      handler: () => 1,
      retentionCheck: 'off' as const,
    };
    expect(() => createProcessor({ ...base, payloadGuard: { windowMs: 0, action: 'flag' } })).toThrow(
      /windowMs/,
    );
    expect(() =>
      createProcessor({ ...base, payloadGuard: { windowMs: 10, action: 'drop' as 'flag' } }),
    ).toThrow(/action/);
    const { claimFingerprint: _, ...withoutClaim } = createMemoryStore();
    expect(() =>
      createProcessor({ ...base, store: withoutClaim, payloadGuard: { windowMs: 10, action: 'flag' } }),
    ).toThrow(/claimFingerprint/);
  });
});
