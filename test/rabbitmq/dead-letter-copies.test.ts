/**
 * Messages the broker delivers but whose retry or dead-letter copy amqplib cannot encode again,
 * against the real broker: a header table that fits alone but not with the reason headers added,
 * a nested table that reads as one of amqplib's typed values, and a message id whose bytes were
 * not UTF-8 (each decoded to a 3-byte U+FFFD, past the 255-byte limit). Each used to close the
 * consuming channel on every attempt, for ever, taking the deliveries beside it along; each is
 * now dead-lettered with its reason (a reduced copy saying what was left out), and the channel
 * stays open.
 */
import { createConsumer, type RabbitConsumer } from '@exactly-once/rabbitmq';
import { createRedisStore } from '@exactly-once/store-redis';
import { afterAll, describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';
import { closeRedis, newRedis, queuesOf, rawChannel, storePrefix } from './helpers.js';

const redis = newRedis();
afterAll(() => closeRedis(redis));

describe('rabbitmq: copies amqplib cannot encode', () => {
  it('are dead-lettered reduced, with their reason; the channel and the deliveries beside them go on', async () => {
    const queue = uniqueName('rmq-unencodable');
    const raw = await rawChannel();
    const longId = 'M'.repeat(200);
    raw.rewriteOnWire(longId, Buffer.alloc(200, 0xff));
    const runs: string[] = [];
    const consumer: RabbitConsumer = createConsumer<{ n: number }>({
      connection: env.amqpUrl,
      queue,
      consumer: 'unencodable',
      store: createRedisStore({ client: redis, keyPrefix: storePrefix(queue) }),
      retryDelaysMs: [100],
      retentionCheck: 'off',
      handler: (payload, ctx) => {
        runs.push(ctx.key);
        if (payload.n === 3) throw new Error('try again later'); // a retry copy is needed
      },
    });
    await consumer.start();
    try {
      const lookalike = { '!': 'object', value: { '!': 'decimal', value: 'hello' } };
      await raw.publish(queue, { n: 0 }, { 'x-idempotency-key': 'beside-1' }, 'm-beside-1');
      await raw.publish(
        queue,
        'not json',
        { 'x-idempotency-key': 'huge', 'x-pad': 'a'.repeat(65_300) },
        'm-huge',
      );
      await raw.publish(
        queue,
        'not json',
        { 'x-idempotency-key': 'lookalike', 'x-t': lookalike },
        'm-lookalike',
      );
      await raw.publish(queue, 'not json', { 'x-idempotency-key': 'long-id' }, longId);
      await raw.publish(
        queue,
        { n: 3 },
        { 'x-idempotency-key': 'retry-lookalike', 'x-t': lookalike },
        'm-retry',
      );
      await raw.publish(queue, { n: 0 }, { 'x-idempotency-key': 'beside-2' }, 'm-beside-2');
      const dlq = await waitUntil(
        async () => ((await raw.count(`${queue}.dlq`)) === 4 ? raw.drain(`${queue}.dlq`) : undefined),
        { message: () => `4 dead letters (${JSON.stringify(consumer.stats)})` },
      );
      const byKey = new Map(dlq.map((m) => [String(m.properties.headers?.['x-idempotency-key']), m]));
      for (const key of ['huge', 'lookalike', 'long-id']) {
        const m = byKey.get(key);
        expect(m?.properties.headers?.['x-eo-error-class'], key).toBe('MalformedMessageError');
        expect(String(m?.properties.headers?.['x-eo-copy-reduced']), key).toContain('cannot be encoded');
        expect(m?.content.toString(), key).toBe('not json');
      }
      const retried = byKey.get('retry-lookalike');
      expect(retried?.properties.headers?.['x-eo-error-message']).toContain('its retry copy cannot be sent');
      await waitUntil(() => consumer.stats.acked === 2, { message: 'both messages beside them acked' });
      expect(runs.filter((k) => k.startsWith('beside')).sort()).toEqual(['beside-1', 'beside-2']);
      expect(runs.filter((k) => k === 'retry-lookalike')).toEqual(['retry-lookalike']);
      expect(consumer.stats.abandoned).toBe(0); // the channel was never closed under them
      expect(await raw.count(queue)).toBe(0);
    } finally {
      await consumer.stop();
      await raw.deleteQueues(queuesOf(queue, [100]));
      await raw.close();
    }
  }, 60_000);
});

describe('rabbitmq: dead-letter copies', () => {
  it('keep reply-to and priority (a replayed request still answers and keeps its place)', async () => {
    const queue = uniqueName('rmq-copy-props');
    const raw = await rawChannel();
    const consumer: RabbitConsumer = createConsumer<{ n: number }>({
      connection: env.amqpUrl,
      queue,
      consumer: 'copy-props',
      store: createRedisStore({ client: redis, keyPrefix: storePrefix(queue) }),
      retryDelaysMs: [100],
      retentionCheck: 'off',
      handler: () => {},
    });
    await consumer.start();
    try {
      await new Promise<void>((resolve, reject) =>
        raw.ch.sendToQueue(
          queue,
          Buffer.from('not json'),
          {
            persistent: true,
            replyTo: 'answers',
            priority: 3,
            correlationId: 'c-1',
            headers: { 'x-idempotency-key': 'p-1' },
          },
          (e) => (e ? reject(e) : resolve()),
        ),
      );
      const [letter] = await waitUntil(
        async () => ((await raw.count(`${queue}.dlq`)) === 1 ? raw.drain(`${queue}.dlq`) : undefined),
        { message: 'the dead letter' },
      );
      expect(letter?.properties).toMatchObject({ replyTo: 'answers', priority: 3, correlationId: 'c-1' });
    } finally {
      await consumer.stop();
      await raw.deleteQueues(queuesOf(queue, [100]));
      await raw.close();
    }
  });
});
