/**
 * S6, a new key per retry (minute boundary): a client whose key is hash(user, amount, minute)
 * retries across 02:00:59.5 -> 02:01:00.5 (an injected clock). Charges are counted on the fake
 * card's own statement, which does not deduplicate.
 */
import { ConfigError, type Logger, semconv, stableKey } from '@exactly-once/core';
import { trace } from '@opentelemetry/api';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { minuteBucketKey } from '../../examples/scenarios/s6-unstable-keys/keys.js';
import { JUST_BEFORE_A_MINUTE, runCase } from '../../examples/scenarios/s6-unstable-keys/scenario.js';
import { env } from '../support/env.js';
import { newRedis } from './support-payments-redis.js';

const redis = newRedis();
const exporter = new InMemorySpanExporter();
beforeAll(() => {
  trace.setGlobalTracerProvider(
    new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }),
  );
});
afterAll(async () => {
  trace.disable();
  await redis.quit();
});

const request = { userId: 'user-123', amountCents: 10_000, currency: 'USD', checkoutId: 'chk_8f2a' };
const windowMs = 10 * 60_000;
const warnings: { message: string; meta: Record<string, unknown> }[] = [];
const logger: Logger = {
  debug() {},
  info() {},
  error() {},
  warn(message, meta) {
    warnings.push({ message, meta: (meta ?? {}) as Record<string, unknown> });
  },
};
const base = { amqpUrl: env.amqpUrl, redis, requests: [request], logger };

describe('S6 a new key per retry (minute boundary)', () => {
  it('the clock key changes across the boundary: plain deduplication charges twice', async () => {
    expect(minuteBucketKey(request, JUST_BEFORE_A_MINUTE)).not.toBe(
      minuteBucketKey(request, JUST_BEFORE_A_MINUTE + 1_000),
    );
    const r = await runCase({ ...base, scheme: 'minute-bucket' });
    expect(new Set(r.keys[0]).size).toBe(2);
    expect(r.charges).toHaveLength(2);
    expect(r.deadLetters).toEqual([]);
  });

  it('stableKey from immutable request data: one key, one charge', async () => {
    const r = await runCase({ ...base, scheme: 'stable' });
    expect(r.keys[0]).toHaveLength(2);
    expect(new Set(r.keys[0]).size).toBe(1);
    expect(r.charges).toHaveLength(1);
    // And it refuses the clock outright.
    expect(() => stableKey('charge', { userId: 'user-123', at: new Date() as never })).toThrow(ConfigError);
  });

  it("payloadGuard 'flag' flags the buggy client's second key (still charged)", async () => {
    warnings.length = 0;
    exporter.reset();
    const r = await runCase({ ...base, scheme: 'minute-bucket', payloadGuard: { windowMs, action: 'flag' } });
    expect(new Set(r.keys[0]).size).toBe(2);
    expect(r.charges).toHaveLength(2); // flag detects; it does not prevent
    // One warning and one flagged span: the second key's run. (The keys themselves appear in
    // logs and spans only when the consumer is configured to record keys in telemetry.)
    const flagged = warnings.filter((w) => w.message.startsWith('same payload under a new idempotency key'));
    expect(flagged).toHaveLength(1);
    expect(flagged[0]?.meta).toMatchObject({ consumer: 'charges', action: 'flag' });
    const spans = exporter
      .getFinishedSpans()
      .filter((s) => s.attributes[semconv.ATTR_EO_PAYLOAD_REUSE] === true);
    expect(spans).toHaveLength(1);
  });

  it("payloadGuard 'dead-letter' refuses the second key: one charge, DUPLICATE_PAYLOAD", async () => {
    const r = await runCase({
      ...base,
      scheme: 'minute-bucket',
      payloadGuard: { windowMs, action: 'dead-letter' },
    });
    const [first, second] = r.keys[0] as [string, string];
    expect(r.charges).toHaveLength(1);
    expect(r.charges[0]?.key).toBe(first);
    expect(r.deadLetters).toHaveLength(1);
    expect(r.deadLetters[0]).toMatchObject({ key: second, code: 'DUPLICATE_PAYLOAD' });
  });

  it('false positive: two genuine identical orders are refused, unless the payload tells them apart', async () => {
    const order = { userId: 'user-123', amountCents: 500, currency: 'USD' };
    const guarded = {
      ...base,
      scheme: 'minute-bucket' as const,
      loseFirstAttempt: false,
      stepMs: 60_000, // a minute apart, inside the 10-minute window
      payloadGuard: { windowMs, action: 'dead-letter' as const },
    };
    const same = await runCase({ ...guarded, requests: [order, order] });
    expect(same.charges).toHaveLength(1);
    expect(same.deadLetters.map((d) => d.code)).toEqual(['DUPLICATE_PAYLOAD']);
    const distinct = await runCase({
      ...guarded,
      requests: [
        { ...order, checkoutId: 'chk_1' },
        { ...order, checkoutId: 'chk_2' },
      ],
    });
    expect(distinct.charges).toHaveLength(2);
    expect(distinct.deadLetters).toEqual([]);
  });
});
