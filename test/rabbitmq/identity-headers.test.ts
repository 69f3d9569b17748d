/**
 * Identity headers (`x-idempotency-key`, `x-request-id`) that are ambiguous through the real
 * broker: an AMQP array, a number, a boolean, a nested table, or the name twice in different
 * case. Core refuses each as an InvalidKeyError; the adapter must hand it the raw AMQP value, not
 * drop it (a dropped key would fall back to `missingKey` and be processed under another key).
 */
import { createConsumer, type RabbitConsumer } from '@exactly-once/rabbitmq';
import { createRedisStore } from '@exactly-once/store-redis';
import { afterAll, describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';
import { newRedis, queuesOf, rawChannel } from './helpers.js';

const redis = newRedis();
afterAll(() => redis.quit());

const invalid: [string, Record<string, unknown>][] = [
  ['an AMQP array of strings', { 'x-idempotency-key': ['a', 'b'] }],
  ['an AMQP array of numbers', { 'x-idempotency-key': [1, 2] }],
  ['a number', { 'x-idempotency-key': 42 }],
  ['a boolean', { 'x-idempotency-key': true }],
  ['a nested table', { 'x-idempotency-key': { value: 'a' } }],
  ['the name twice in different case', { 'x-idempotency-key': 'a', 'X-Idempotency-Key': 'b' }],
  ['a multi-valued request id', { 'x-idempotency-key': 'with-bad-request-id', 'x-request-id': ['r1', 'r2'] }],
  ['a numeric request id', { 'x-idempotency-key': 'with-numeric-request-id', 'x-request-id': 7 }],
];

describe('rabbitmq: ambiguous identity headers', () => {
  it('dead-letters each as InvalidKeyError; the handler never runs and nothing is acked as a duplicate', async () => {
    const queue = uniqueName('rmq-ident');
    const raw = await rawChannel();
    const runs: string[] = [];
    // broker-id: a key the adapter dropped would be replaced by the message id and processed.
    const consumer: RabbitConsumer = createConsumer<{ n: number }>({
      connection: env.amqpUrl,
      queue,
      consumer: 'ident',
      store: createRedisStore({ client: redis, keyPrefix: `t:${queue}` }),
      missingKey: 'broker-id',
      retryDelaysMs: [100],
      retentionCheck: 'off',
      handler: (_p, ctx) => {
        runs.push(ctx.key);
      },
    });
    await consumer.start();
    try {
      for (const [i, [, headers]] of invalid.entries()) {
        await raw.publish(queue, { n: i }, headers, `m-${i}`);
      }
      await raw.publish(queue, { n: 99 }, { 'x-idempotency-key': 'good-1' }, 'm-good');
      const dlq = await waitUntil(
        async () =>
          (await raw.count(`${queue}.dlq`)) === invalid.length ? raw.drain(`${queue}.dlq`) : undefined,
        { message: () => `${invalid.length} dead letters (${JSON.stringify(consumer.stats)})` },
      );
      // The outcome is counted once the record is stored complete, a while after the handler
      // returns: wait for the count, not for the handler's run.
      await waitUntil(() => consumer.stats.byOutcome.acquired === 1, {
        message: 'the valid message processed',
      });
      expect(runs).toEqual(['good-1']);
      const byId = new Map(dlq.map((m) => [String(m.properties.messageId), m]));
      for (const [i, [what, headers]] of invalid.entries()) {
        const m = byId.get(`m-${i}`);
        expect(m, what).toBeDefined();
        expect(m?.properties.headers?.['x-eo-error-class'], what).toBe('InvalidKeyError');
        expect(m?.properties.headers?.['x-eo-error-code'], what).toBe('INVALID_KEY');
        // The copy keeps the original values as they were sent, for whoever inspects it.
        for (const [name, value] of Object.entries(headers)) {
          expect(m?.properties.headers?.[name], `${what}: ${name}`).toEqual(value);
        }
      }
      expect(consumer.stats.deadLettered).toBe(invalid.length);
      expect(consumer.stats.byOutcome.invalid).toBe(invalid.length);
      expect(consumer.stats.byOutcome.duplicate).toBeUndefined();
      expect(consumer.stats.byOutcome.acquired).toBe(1);
      expect(await raw.count(queue)).toBe(0);
    } finally {
      await consumer.stop();
      await raw.deleteQueues(queuesOf(queue, [100]));
      await raw.close();
    }
  });
});
