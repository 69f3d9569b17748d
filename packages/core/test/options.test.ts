import { describe, expect, it } from 'vitest';
import { createFsBlobStore } from '../src/blob/fs-blob-store.js';
import type { HandlerContext } from '../src/context.js';
import { ConfigError } from '../src/errors.js';
import { createIdempotentExecutor } from '../src/executor.js';
import { stableKey } from '../src/keys.js';
import type { Logger } from '../src/logger.js';
import { resolveProcessorOptions } from '../src/options.js';
import { createOutboxRelay } from '../src/outbox/relay.js';
import { createProcessor } from '../src/processor.js';
import {
  backoffMs,
  delayAfterFailure,
  resolveRetryPolicy,
  retryDelayMs,
  worstCaseRetrySpanMs,
} from '../src/retry.js';
import type { Disposition } from '../src/spi.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import { findStuck } from '../src/store/stuck.js';
import { createTieredStore } from '../src/store/tiered-store.js';
import { delivery } from './helpers.js';

const base = { store: createMemoryStore(), handler: () => undefined };
const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {} };

describe('options are validated with actionable messages', () => {
  it('rejects consumer names that could collide inside a store key', () => {
    expect(() => createProcessor({ ...base, consumer: 'a:b' })).toThrow(ConfigError);
    expect(() => createProcessor({ ...base, consumer: '' })).toThrow(/consumer must match/);
  });

  it('refuses a store or blob store that is not one, at creation', () => {
    // Before: a blob store given uncalled (the factory itself) failed each large result as a
    // store outage, retried, so the handler ran again before the message was given up.
    const blobs = (() => undefined) as never;
    expect(() => createProcessor({ ...base, consumer: 'c', blobs })).toThrow(/blobs must be a blob store/);
    expect(() => createProcessor({ ...base, consumer: 'c', store: {} as never })).toThrow(
      /store is required/,
    );
  });

  it('refuses a retentionCheck or spanKind that is none of its values (a typo from JavaScript)', () => {
    // Before: 'bogus' was taken, and checked the retention as 'warn' does.
    expect(() => createProcessor({ ...base, consumer: 'c', retentionCheck: 'bogus' as never })).toThrow(
      /retentionCheck must be one of 'error', 'warn', 'off' \(got "bogus"\)/,
    );
    expect(() => createProcessor({ ...base, consumer: 'c', spanKind: 'producer' as never })).toThrow(
      /spanKind must be one of/,
    );
    expect(() =>
      createProcessor({ ...base, consumer: 'c', retentionCheck: 'off', spanKind: 'internal' }),
    ).not.toThrow();
  });

  it('refuses an option name it does not know, naming the one it most likely meant', () => {
    // Before: a misspelt name was ignored and its option kept the default (a JavaScript caller
    // or a spread config object has no compile-time check).
    const create = (extra: object) => () => createProcessor({ ...base, consumer: 'c', ...extra } as never);
    expect(create({ leaseMS: 5_000 })).toThrow(ConfigError);
    expect(create({ leaseMS: 5_000 })).toThrow('unknown option "leaseMS" (did you mean "leaseMs"?)');
    expect(create({ retentionMS: 1 })).toThrow('(did you mean "retentionMs"?)');
    expect(create({ prefetchCount: 10 })).toThrow(/^unknown option "prefetchCount"$/);
    expect(create({ retry: { maxAttempt: 3 } })).toThrow(
      'unknown option "retry.maxAttempt" (did you mean "retry.maxAttempts"?)',
    );
    expect(create({ payloadGuard: { windowMs: 1000, action: 'flag', windowMS: 1 } })).toThrow(
      'unknown option "payloadGuard.windowMS" (did you mean "payloadGuard.windowMs"?)',
    );
    // Every documented name is known, undefined values included.
    expect(
      create({ leaseMs: 5_000, heartbeatMs: 1_000, retry: { maxAttempts: 3, jitter: 'none' } }),
    ).not.toThrow();
    expect(create({ recordKeys: undefined, ownerId: undefined })).not.toThrow();
    // The other factories of core do the same.
    const memory = createMemoryStore();
    expect(() =>
      createTieredStore({ hot: memory, cold: createMemoryStore(), hotRetentionMS: 1 } as never),
    ).toThrow('(did you mean "hotRetentionMs"?)');
    expect(() => createFsBlobStore({ directory: '/tmp/never', abandonedAfterMS: 1 } as never)).toThrow(
      '(did you mean "abandonedAfterMs"?)',
    );
    const source = { read: async () => [], mark: async () => {} };
    expect(() =>
      createOutboxRelay({ source, publisher: { publish: async () => {} }, idleDelayMS: 5 } as never),
    ).toThrow('(did you mean "idleDelayMs"?)');
    // A number given as a string (an environment variable passed on) is named as one.
    expect(create({ leaseMs: '30000' })).toThrow('(got the string "30000")');
  });

  it("refuses an unknown name in a call's options too: ctx.step, ctx.publish, execute, findStuck", async () => {
    // A misspelt `reconcile` ran an in-doubt step again without asking; a misspelt routingKey
    // published without one.
    const run = async (handler: (ctx: HandlerContext) => Promise<unknown>) => {
      const p = createProcessor({
        ...base,
        consumer: 'c',
        logger: quiet,
        handler: (_: unknown, ctx) => handler(ctx),
      });
      return p.process(delivery({ n: 1 }, { 'x-idempotency-key': `k-${Math.random()}` }));
    };
    const refused = (d: Disposition) => (d.action === 'dead-letter' ? d.reason.error.message : d.action);
    expect(
      refused(await run((ctx) => ctx.step('charge', () => 1, { reconcle: () => undefined } as never))),
    ).toBe('unknown option "reconcle" in ctx.step options (did you mean "reconcile"?)');
    expect(refused(await run(async (ctx) => ctx.publish('q', {}, { routingkey: 'r' } as never)))).toBe(
      'unknown option "routingkey" in ctx.publish options (did you mean "routingKey"?)',
    );
    const executor = createIdempotentExecutor({ consumer: 'api', store: createMemoryStore(), logger: quiet });
    await expect(
      executor.execute({ key: 'k', payload: 1, requestID: 'r' } as never, () => 1),
    ).rejects.toThrow('unknown option "requestID" in execute request (did you mean "requestId"?)');
    await expect(findStuck(createMemoryStore(), { consumer: 'c', olderThanMS: 1 } as never)).rejects.toThrow(
      '(did you mean "olderThanMs"?)',
    );
  });

  it('requires the heartbeat to be at most half the lease', () => {
    expect(() => createProcessor({ ...base, consumer: 'c', leaseMs: 1000, heartbeatMs: 900 })).toThrow(
      /heartbeatMs \(900\) must be at most half of leaseMs/,
    );
  });

  it('takes a publishWaitMs of 0 or a positive duration, and cuts the default to the lease', () => {
    expect(() => createProcessor({ ...base, consumer: 'c', publishWaitMs: -1 })).toThrow(/publishWaitMs/);
    expect(() => createProcessor({ ...base, consumer: 'c', publishWaitMs: Number.NaN })).toThrow(
      /publishWaitMs/,
    );
    expect(resolveProcessorOptions({ ...base, consumer: 'c', publishWaitMs: 0 }).publishWaitMs).toBe(0);
    expect(resolveProcessorOptions({ ...base, consumer: 'c' }).publishWaitMs).toBe(3_000);
    expect(resolveProcessorOptions({ ...base, consumer: 'c', leaseMs: 1_000 }).publishWaitMs).toBe(1_000);
    expect(resolveProcessorOptions({ ...base, consumer: 'c', publishWaitMs: 10_000 }).publishWaitMs).toBe(
      10_000,
    );
  });

  it('refuses a retention shorter than the retry schedule plus the redelivery horizon', () => {
    expect(() =>
      createProcessor({ ...base, consumer: 'c', retentionMs: 60_000, redeliveryHorizonMs: 3_600_000 }),
    ).toThrow(/retentionMs \(60000 ms\) is shorter.*or set retentionCheck: 'warn'\.$/);
    const warnings: string[] = [];
    createProcessor({
      ...base,
      consumer: 'c',
      retentionMs: 60_000,
      retentionCheck: 'warn',
      logger: { debug() {}, info() {}, error() {}, warn: (m) => warnings.push(m) },
    });
    expect(warnings).toHaveLength(1);
    // Already warned: no advice to do what is done.
    expect(warnings[0]).toMatch(/lower the horizon\.$/);
  });

  it("names the store's retention when it keeps records longer than retentionMs (a tiered store)", () => {
    // Before, the message said "retentionMs (150000 ms)" to a user who had set 15000.
    const store = Object.assign(createMemoryStore(), { effectiveRetentionMs: () => 150_000 });
    expect(() => createProcessor({ ...base, store, consumer: 'c', retentionMs: 15_000 })).toThrow(
      /the store's retention \(150000 ms for retentionMs 15000: a tiered store's cold tier\) is shorter/,
    );
  });

  it('validates retry policies', () => {
    expect(() => resolveRetryPolicy({ maxAttempts: 0 })).toThrow(ConfigError);
    expect(() => resolveRetryPolicy({ initialDelayMs: 10, maxDelayMs: 5 })).toThrow(/maxDelayMs/);
  });
});

describe('retry delays', () => {
  it('grow exponentially up to the cap, with jitter inside the bounds', () => {
    const p = resolveRetryPolicy({ initialDelayMs: 100, maxDelayMs: 1000, multiplier: 2, maxAttempts: 6 });
    expect([1, 2, 3, 4, 5].map((a) => backoffMs(p, a))).toEqual([100, 200, 400, 800, 1000]);
    expect(worstCaseRetrySpanMs(p)).toBe(2500);
    expect(retryDelayMs(p, 3, () => 0)).toBe(200);
    expect(retryDelayMs(p, 3, () => 1)).toBe(400);
    expect(retryDelayMs({ ...p, jitter: 'full' }, 3, () => 0)).toBe(0);
  });
});

describe("an error's own retryAfterMs", () => {
  const p = resolveRetryPolicy({ initialDelayMs: 100, maxDelayMs: 10_000, jitter: 'none' });
  const rateLimited = (retryAfterMs: unknown) => Object.assign(new Error('429'), { retryAfterMs });

  it('sets the delay when longer than the backoff, never past maxDelayMs', () => {
    expect(delayAfterFailure(p, 1, rateLimited(2_500))).toBe(2_500);
    expect(delayAfterFailure(p, 1, rateLimited(60_000))).toBe(10_000);
    // Shorter than the backoff: the backoff (a provider does not make retries faster).
    expect(delayAfterFailure(p, 3, rateLimited(50))).toBe(400);
  });

  it('is ignored unless a finite number >= 0', () => {
    for (const odd of [undefined, -1, Number.NaN, Number.POSITIVE_INFINITY, '5000', null]) {
      expect(delayAfterFailure(p, 1, rateLimited(odd))).toBe(100);
    }
    expect(delayAfterFailure(p, 1, 'a string thrown')).toBe(100);
  });
});

describe('stableKey', () => {
  it('is independent of field order and refuses dates', () => {
    expect(stableKey('charge', { a: 1, b: 'x' })).toBe(stableKey('charge', { b: 'x', a: 1 }));
    expect(stableKey('charge', { a: 1 })).not.toBe(stableKey('refund', { a: 1 }));
    expect(() => stableKey('charge', { at: new Date() as unknown as string })).toThrow(/clock/);
  });
});
