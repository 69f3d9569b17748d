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
import { closeRedis, newRedis, queuesOf, rawChannel, storePrefix } from './helpers.js';

const redis = newRedis();
afterAll(() => closeRedis(redis));

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
      store: createRedisStore({ client: redis, keyPrefix: storePrefix(queue) }),
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

  it('keys and message ids whose bytes are not UTF-8 are refused (INVALID_KEY, encoding), not read as one key', async () => {
    // amqplib decodes an AMQP string leniently: "pay-\xff123X" and "pay-\xfe123X" both read as
    // "pay-\uFFFD123X", and the second payment was acked as a duplicate of the first.
    const queue = uniqueName('rmq-ident-bytes');
    const raw = await rawChannel();
    raw.rewriteOnWire('KEYBYTESA', Buffer.from('pay-\xff123X', 'latin1'));
    raw.rewriteOnWire('KEYBYTESB', Buffer.from('pay-\xfe123X', 'latin1'));
    raw.rewriteOnWire('MSGIDBYTES', Buffer.from('id-\xff\xfe-0001', 'latin1'));
    const runs: string[] = [];
    const consumer: RabbitConsumer = createConsumer<{ n: number }>({
      connection: env.amqpUrl,
      queue,
      consumer: 'ident-bytes',
      store: createRedisStore({ client: redis, keyPrefix: storePrefix(queue) }),
      missingKey: 'broker-id',
      retryDelaysMs: [100],
      retentionCheck: 'off',
      handler: (_p, ctx) => {
        runs.push(ctx.key);
      },
    });
    await consumer.start();
    try {
      await raw.publish(queue, { n: 1 }, { 'x-idempotency-key': 'KEYBYTESA' });
      await raw.publish(queue, { n: 1 }, { 'x-idempotency-key': 'KEYBYTESB' });
      await raw.publish(queue, { n: 2 }, { 'x-idempotency-key': 'k-ok', 'x-request-id': 'KEYBYTESA' });
      // No key: under broker-id the message id would be the key.
      await raw.publish(queue, { n: 3 }, {}, 'MSGIDBYTES');
      const dlq = await waitUntil(
        async () => ((await raw.count(`${queue}.dlq`)) === 4 ? raw.drain(`${queue}.dlq`) : undefined),
        { message: () => `4 dead letters (${JSON.stringify(consumer.stats)})` },
      );
      expect(runs).toEqual([]);
      for (const m of dlq) {
        expect(m.properties.headers?.['x-eo-error-class']).toBe('InvalidKeyError');
        expect(String(m.properties.headers?.['x-eo-error-message'])).toContain('U+FFFD');
      }
      expect(consumer.stats.byOutcome.duplicate).toBeUndefined();
      expect(await raw.count(queue)).toBe(0);
    } finally {
      await consumer.stop();
      await raw.deleteQueues(queuesOf(queue, [100]));
      await raw.close();
    }
  });
});
