/**
 * A repeated header one of whose values is null on the wire (length -1, as Java
 * producers write a null header). kafkajs cannot produce one, so the test lets it: its size
 * check calls Buffer.byteLength(null), patched for the send only; its encoder then writes -1.
 */
import { createConsumer } from '@exactly-once/kafka';
import { createRedisStore } from '@exactly-once/store-redis';
import type { Redis } from 'ioredis';
import type { Admin, Kafka } from 'kafkajs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createTopics,
  dropStorePrefixes,
  fastGroup,
  fullyCommitted,
  newKafka,
  newRedis,
  quietLogger,
  readTopic,
  storePrefix,
  uniqueName,
  waitUntil,
} from './helpers.js';

let kafka: Kafka;
let admin: Admin;
let redis: Redis;

beforeAll(async () => {
  kafka = newKafka('null-header');
  admin = kafka.admin();
  await admin.connect();
  redis = newRedis();
});

afterAll(async () => {
  await admin?.disconnect();
  if (redis) await dropStorePrefixes(redis);
  await redis?.quit();
});

const TP = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';

describe('kafka repeated header with a null value', () => {
  it('ambiguous keys are dead-lettered InvalidKeyError, other repeated nulls are harmless; the partition goes on', async () => {
    const topic = uniqueName('nullhdr');
    const dlq = `${topic}.dlq`;
    await createTopics(admin, [topic, dlq], 1);
    const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    const byteLength = Buffer.byteLength;
    // biome-ignore lint/suspicious/noExplicitAny: test-only patch
    (Buffer as any).byteLength = (v: unknown, ...rest: unknown[]) =>
      v === null ? 0 : (byteLength as (...a: unknown[]) => number)(v, ...rest);
    try {
      await producer.send({
        topic,
        acks: -1,
        messages: [
          { key: 'key-then-null', value: '{}', headers: { 'x-idempotency-key': ['a', null] as never } },
          { key: 'null-then-key', value: '{}', headers: { 'x-idempotency-key': [null, 'b'] as never } },
          {
            key: 'null-elsewhere',
            value: '{}',
            headers: {
              'x-idempotency-key': 'c',
              traceparent: [null, TP] as never,
              baggage: ['k=v', null] as never,
              other: [null, null] as never,
            },
          },
          {
            key: 'request-id-null',
            value: '{}',
            headers: { 'x-idempotency-key': 'd', 'x-request-id': ['r', null] as never },
          },
          { key: 'good', value: '{}', headers: { 'x-idempotency-key': 'e' } },
        ],
      });
    } finally {
      // biome-ignore lint/suspicious/noExplicitAny: test-only patch
      (Buffer as any).byteLength = byteLength;
      await producer.disconnect();
    }
    // The records really carry nulls.
    const raw = await readTopic(kafka, topic, (r) => r.length >= 5);
    expect(raw.find((r) => r.key === 'key-then-null')?.headerValues['x-idempotency-key']).toEqual([
      'a',
      'null',
    ]);

    const groupId = uniqueName('nullhdr-group');
    const runs: string[] = [];
    const errors: unknown[] = [];
    const logger = { ...quietLogger, error: (m: string, meta?: unknown) => errors.push([m, meta]) };
    const consumer = createConsumer({
      kafka,
      groupId,
      topics: [topic],
      deadLetter: { topic: dlq },
      store: createRedisStore({ client: redis, keyPrefix: storePrefix() }),
      fromBeginning: true,
      consumerConfig: fastGroup,
      logger,
      handler: (_p, ctx) => {
        runs.push(ctx.key);
      },
    });
    await consumer.start();
    try {
      await waitUntil(() => fullyCommitted(admin, groupId, topic), {
        timeoutMs: 30_000,
        message: 'all committed',
      });
      const letters = await readTopic(kafka, dlq, (r) => r.length >= 2);
      console.log(
        JSON.stringify({
          runs,
          stats: consumer.stats,
          letters: letters.map((l) => [l.key, l.headers['x-eo-error-code']]),
        }),
      );
      expect(runs.sort()).toEqual(['c', 'e'].concat(runs.includes('d') ? ['d'] : []).sort());
      const codes = Object.fromEntries(letters.map((l) => [l.key, l.headers['x-eo-error-code']]));
      expect(codes['key-then-null']).toBe('INVALID_KEY');
      expect(codes['null-then-key']).toBe('INVALID_KEY');
      expect(errors).toEqual([]);
    } finally {
      await consumer.stop();
    }
  }, 90_000);
});
