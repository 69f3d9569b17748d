import { describe, expect, it } from 'vitest';
import type { HandlerContext } from '../src/context.js';
import { ConfigError, PermanentError, UnencodableValueError } from '../src/errors.js';
import { createIdempotentExecutor, ExecutionFailedError, RequestInProgressError } from '../src/executor.js';
import { sha256Hex } from '../src/keys.js';
import { withFaults } from '../src/store/faulty-store.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import { deferred, failure, recordingPublisher } from './helpers.js';

const opts = { consumer: 'orders-api', retentionCheck: 'off' as const };

/** A logger that keeps the warnings' messages and drops the rest. */
const warningsLogger = () => {
  const warnings: string[] = [];
  const noop = () => {};
  const logger = { debug: noop, info: noop, error: noop, warn: (message: string) => warnings.push(message) };
  return { warnings, logger };
};

describe('idempotent executor (HTTP-style requests)', () => {
  it('runs once per key and replays the stored response', async () => {
    const publisher = recordingPublisher();
    const ex = createIdempotentExecutor<{ sku: string }, { orderId: string }>({
      ...opts,
      store: createMemoryStore(),
      publisher,
    });
    let runs = 0;
    const handler = (order: { sku: string }, ctx: HandlerContext) => {
      runs++;
      ctx.publish('orders', order, { name: 'created' });
      return { orderId: ctx.keyFor('order') };
    };
    const a = await ex.execute({ key: 'client-key-1', payload: { sku: 'x' } }, handler);
    const b = await ex.execute({ key: 'client-key-1', payload: { sku: 'x' } }, handler);
    expect(a.status).toBe('completed');
    expect(b.status).toBe('duplicate');
    expect(b.result).toEqual(a.result);
    expect(runs).toBe(1);
    expect(publisher.sent).toHaveLength(1);
    expect(publisher.sent[0]?.headers['x-request-id']).toBe('client-key-1');
  });

  it.each([
    ['a long one', { requestId: 'r'.repeat(300) }, `sha256:${sha256Hex('r'.repeat(300))}`],
    ['one starting with sha256:', { requestId: 'sha256:my-request-1' }, 'sha256:my-request-1'],
    ['an empty one', { requestId: '' }, 'client-key-2'],
    ['none', {}, 'client-key-2'],
  ])('answers the request id it recorded and passed on: %s', async (_, given, expected) => {
    // Before: the id as given, though a long one was recorded and sent on as sha256:<hex>.
    const publisher = recordingPublisher();
    const ex = createIdempotentExecutor({ ...opts, store: createMemoryStore(), publisher });
    let recorded: string | undefined;
    const r = await ex.execute({ key: 'client-key-2', payload: {}, ...given }, (_, ctx) => {
      recorded = ctx.requestId;
      ctx.publish('orders', {}, { name: 'created' });
    });
    expect(r.requestId).toBe(expected);
    expect(recorded).toBe(expected);
    expect(publisher.sent[0]?.headers['x-request-id']).toBe(expected);
  });

  it('refuses a handler that is not a function before storing anything', async () => {
    // Before: a retryable TypeError from inside the run, which had used up an attempt.
    const store = createMemoryStore();
    const ex = createIdempotentExecutor({ ...opts, store });
    await expect(ex.execute({ key: 'k', payload: {} }, 'nope' as never)).rejects.toThrow(ConfigError);
    expect(store.size()).toBe(0);
  });

  it("hands the handler's own error over as cause when this call ran it, and none on a replay", async () => {
    // Before: only `info` (name, code, message); a caller could not tell its own error classes apart.
    class CardDeclined extends PermanentError {
      readonly declineCode = 'insufficient_funds';
    }
    const ex = createIdempotentExecutor<{ n: number }, number>({
      ...opts,
      store: createMemoryStore(),
      retry: { maxAttempts: 3, initialDelayMs: 1 },
    });
    const declined = await failure(
      ex.execute({ key: 'declined', payload: { n: 1 } }, () => {
        throw new CardDeclined('card declined');
      }),
    );
    expect(declined.outcome).toBe('failed');
    expect(declined.cause).toBeInstanceOf(CardDeclined);
    expect((declined.cause as CardDeclined).declineCode).toBe('insufficient_funds');
    // The stored failure, answered without a run: its info only.
    const replayed = await failure(ex.execute({ key: 'declined', payload: { n: 1 } }, () => 1));
    expect(replayed.outcome).toBe('failed');
    expect(replayed.info.message).toContain('card declined');
    expect(replayed.cause).toBeUndefined();

    const timeout = new Error('provider timed out');
    const retryable = await failure(
      ex.execute({ key: 'slow', payload: { n: 1 } }, async () => {
        throw timeout;
      }),
    );
    expect(retryable.outcome).toBe('retryable');
    expect(retryable.cause).toBe(timeout);
  });

  it('rejects a different body under the same key, and a concurrent run of the same key', async () => {
    const ex = createIdempotentExecutor<{ n: number }, number>({ ...opts, store: createMemoryStore() });
    const gate = deferred();
    const first = ex.execute({ key: 'k', payload: { n: 1 } }, async () => {
      await gate.promise;
      return 1;
    });
    await new Promise((r) => setTimeout(r, 10));
    await expect(ex.execute({ key: 'k', payload: { n: 1 } }, () => 1)).rejects.toBeInstanceOf(
      RequestInProgressError,
    );
    gate.resolve();
    await first;
    const reuse = await ex.execute({ key: 'k', payload: { n: 2 } }, () => 2).catch((e) => e);
    expect(reuse).toBeInstanceOf(ExecutionFailedError);
    expect(reuse.outcome).toBe('mismatch');
    expect(reuse.info.code).toBe('IDEMPOTENCY_KEY_REUSE');
  });

  it('lets a client retry a retryable failure with the same key, and remembers a permanent one', async () => {
    const ex = createIdempotentExecutor<object, string>({
      ...opts,
      store: createMemoryStore(),
      retry: { initialDelayMs: 5_000, jitter: 'none' },
    });
    const flaky = await ex
      .execute({ key: 'r', payload: {} }, () => {
        throw new Error('provider timeout');
      })
      .catch((e) => e);
    // The policy's wait, for a Retry-After header.
    expect(flaky).toMatchObject({ outcome: 'retryable', retryable: true, retryAfterMs: 5_000 });
    expect((await ex.execute({ key: 'r', payload: {} }, () => 'ok')).result).toBe('ok');
    const declined = await ex
      .execute({ key: 'p', payload: {} }, () => {
        throw new PermanentError('card declined');
      })
      .catch((e) => e);
    expect(declined).toMatchObject({ outcome: 'failed' });
    const again = await ex.execute({ key: 'p', payload: {} }, () => 'never').catch((e) => e);
    expect(again).toMatchObject({ outcome: 'failed' });
    expect(again.info.code).toBe('PREVIOUSLY_FAILED');
  });

  it('a run whose messages were never confirmed is retryable, not failed: the same key answers its result and publishes', async () => {
    // Before: ExecutionFailedError 'failed' ("500, failed permanently") for a COMPLETED charge.
    const publisher = recordingPublisher();
    const store = createMemoryStore();
    const errors: string[] = [];
    const noop = () => {};
    const ex = createIdempotentExecutor<{ sku: string }, string>({
      ...opts,
      store,
      publisher,
      maxPublishDeferrals: 0,
      logger: { debug: noop, info: noop, warn: noop, error: (message: string) => errors.push(message) },
    });
    let runs = 0;
    const handler = (order: { sku: string }, ctx: HandlerContext) => {
      runs++;
      ctx.publish('orders', order);
      return 'charged';
    };
    publisher.failing = true;
    const error = await ex.execute({ key: 'k', payload: { sku: 'x' } }, handler).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ExecutionFailedError);
    expect((error as ExecutionFailedError).outcome).toBe('retryable');
    // Before: "dead-lettering the message", for a request that nothing dead-letters.
    expect(errors).toEqual(['outgoing messages never confirmed; answering the request as retryable']);
    publisher.failing = false;
    expect(await ex.execute({ key: 'k', payload: { sku: 'x' } }, handler)).toMatchObject({
      status: 'duplicate',
      result: 'charged',
    });
    expect(runs).toBe(1);
    expect(publisher.sent).toHaveLength(1);
  });

  it('a payload JSON cannot hold is an UnencodableValueError, not a TypeError', async () => {
    const ex = createIdempotentExecutor<{ n: bigint }, number>({ ...opts, store: createMemoryStore() });
    const error = await ex.execute({ key: 'k', payload: { n: 1n } }, () => 1).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UnencodableValueError);
  });
  it('a payload nested too deep to encode is MALFORMED_MESSAGE, as one past the depth limit is', async () => {
    // Before: 5,000 levels overflowed the stack while encoding and threw a bare
    // UnencodableValueError, which an API maps to 500 instead of 400.
    const ex = createIdempotentExecutor<object, number>({ ...opts, store: createMemoryStore() });
    for (const depth of [1_500, 20_000]) {
      let payload: object = {};
      for (let i = 0; i < depth; i++) payload = { a: payload };
      const error = await ex.execute({ key: `deep-${depth}`, payload }, () => 1).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ExecutionFailedError);
      expect(error).toMatchObject({ outcome: 'failed', info: { code: 'MALFORMED_MESSAGE' } });
    }
  });
  it('speaks of requests, not messages: a refusal logs "refusing request", a missing key names Idempotency-Key', async () => {
    // Before: "dead-lettering message" for a request nothing dead-letters, and a KEY_MISSING
    // naming the broker header x-idempotency-key.
    const { warnings, logger } = warningsLogger();
    const ex = createIdempotentExecutor<{ sku: string }, number>({
      ...opts,
      store: createMemoryStore(),
      logger,
    });
    const error = await ex.execute({ key: '', payload: { sku: 'x' } }, () => 1).catch((e: unknown) => e);
    expect(error).toMatchObject({ outcome: 'failed', info: { code: 'KEY_MISSING' } });
    expect((error as ExecutionFailedError).info.message).toBe(
      'request has no idempotency key (Idempotency-Key) and missingKey policy is "reject"',
    );
    expect(warnings).toEqual(['refusing request']);
  });
  it('takes a header that was not sent as it is: key undefined is KEY_MISSING (the type allows it)', async () => {
    // Before: `key: string`, so the README's own `sent ? ... : undefined` did not compile under strict.
    const ex = createIdempotentExecutor<{ sku: string }, number>({ ...opts, store: createMemoryStore() });
    const sent: string | undefined = undefined;
    const error = await ex.execute({ key: sent, payload: { sku: 'x' } }, () => 1).catch((e: unknown) => e);
    expect(error).toMatchObject({ outcome: 'failed', info: { code: 'KEY_MISSING' } });
  });
  it('says what a store outage means for requests: answered as retryable, not "kept unacked"', async () => {
    const { warnings, logger } = warningsLogger();
    const ex = createIdempotentExecutor<{ sku: string }, number>({
      ...opts,
      store: withFaults(createMemoryStore(), { failWhen: () => true }),
      logger,
    });
    const error = await ex.execute({ key: 'k', payload: { sku: 'x' } }, () => 1).catch((e: unknown) => e);
    expect(error).toMatchObject({ outcome: 'retryable', info: { code: 'STORE_UNAVAILABLE' } });
    expect(warnings).toContain(
      'processed-store unavailable; requests are answered as retryable (STORE_UNAVAILABLE)',
    );
  });
});
