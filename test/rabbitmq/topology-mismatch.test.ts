/**
 * A retry tier or dead-letter queue declared earlier with other arguments (another TTL,
 * another dead-letter routing, classic instead of quorum): start() must reject with a
 * ConfigError naming the queue and argument, consume nothing, and leave no unhandled error.
 */
import { ConfigError } from '@exactly-once/core';
import { createConsumer } from '@exactly-once/rabbitmq';
import { createRedisStore } from '@exactly-once/store-redis';
import { afterAll, describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';
import { closeRedis, newRedis, queuesOf, rawChannel, storePrefix } from './helpers.js';

const redis = newRedis();
afterAll(() => closeRedis(redis));
const delays = [100, 1_000];

const cases: [
  string,
  (raw: Awaited<ReturnType<typeof rawChannel>>, queue: string) => Promise<unknown>,
  RegExp,
][] = [
  [
    'a retry tier with another x-message-ttl',
    (raw, q) =>
      raw.ch.assertQueue(`${q}.retry.100`, {
        durable: true,
        arguments: {
          'x-queue-type': 'quorum',
          'x-message-ttl': 5_000,
          'x-dead-letter-exchange': '',
          'x-dead-letter-routing-key': q,
          'x-dead-letter-strategy': 'at-least-once',
          'x-overflow': 'reject-publish',
        },
      }),
    /x-message-ttl.*retry\.100|retry\.100.*x-message-ttl/,
  ],
  [
    'a retry tier without a dead-letter exchange (an old or hand-made declaration)',
    (raw, q) =>
      raw.ch.assertQueue(`${q}.retry.1000`, {
        durable: true,
        arguments: { 'x-queue-type': 'quorum', 'x-message-ttl': 1_000 },
      }),
    /x-dead-letter-exchange|x-dead-letter-routing-key/,
  ],
  [
    'a classic dead-letter queue where quorum is declared',
    (raw, q) => raw.ch.assertQueue(`${q}.dlq`, { durable: true }),
    /x-queue-type.*dlq|dlq.*x-queue-type/,
  ],
];

describe('rabbitmq topology declared earlier with other arguments', () => {
  for (const [title, predeclare, named] of cases) {
    it(`${title}: start() rejects with a ConfigError naming it, nothing consumed`, async () => {
      const queue = uniqueName('rmq-other-args');
      const raw = await rawChannel();
      const unhandled: unknown[] = [];
      const onUnhandled = (e: unknown) => unhandled.push(e);
      process.on('unhandledRejection', onUnhandled);
      process.on('uncaughtException', onUnhandled);
      try {
        await raw.ch.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
        await predeclare(raw, queue);
        await raw.publish(queue, { id: 'a' }, { 'x-idempotency-key': 'a' });
        let ran = 0;
        const consumer = createConsumer<{ id: string }>({
          connection: env.amqpUrl,
          queue,
          consumer: 'other-args',
          store: createRedisStore({ client: redis, keyPrefix: storePrefix(queue) }),
          retryDelaysMs: delays,
          retentionCheck: 'off',
          logger: { debug() {}, info() {}, warn() {}, error() {} },
          handler: () => {
            ran++;
          },
        });
        const error = await consumer.start().then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(error).toBeInstanceOf(ConfigError);
        expect(String((error as Error).message)).toMatch(named);
        await new Promise((r) => setTimeout(r, 1_000));
        expect(ran).toBe(0);
        expect(consumer.stats.acked + consumer.stats.received).toBe(0);
        expect(await raw.count(queue)).toBe(1);
        expect(unhandled).toEqual([]);
      } finally {
        process.off('unhandledRejection', onUnhandled);
        process.off('uncaughtException', onUnhandled);
        await raw.deleteQueues(queuesOf(queue, delays));
        await raw.close();
      }
    });
  }
});
