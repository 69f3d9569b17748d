/**
 * Poison and malformed records end in the dead-letter topic with reason and origin headers, and
 * never block their partition: the records behind them are processed.
 */
import { PermanentError, scopeKey } from '@exactly-once/core';
import { createConsumer, KafkaHeaderNames } from '@exactly-once/kafka';
import { createRedisStore } from '@exactly-once/store-redis';
import type { Admin, Kafka } from 'kafkajs';
import type { Redis } from 'ioredis';
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
  kafka = newKafka('poison-test');
  admin = kafka.admin();
  await admin.connect();
  redis = newRedis();
});

afterAll(async () => {
  await admin?.disconnect();
  if (redis) await dropStorePrefixes(redis);
  await redis?.quit();
});

describe('poison and malformed records', () => {
  it('dead-letters null, non-JSON, keyless, permanently failing and retry-exhausted records; later records flow', async () => {
    const topic = uniqueName('poison');
    const dlq = `${topic}.dlq`;
    const groupId = uniqueName('poison-group');
    await createTopics(admin, [topic, dlq], 3);

    const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    // Everything on one partition (same Kafka key), poison first, so a blocked partition shows.
    const key = 'same-partition';
    const h = (id: string) => ({ 'x-idempotency-key': id, 'x-request-id': `r-${id}` });
    await producer.send({
      topic,
      acks: -1,
      messages: [
        { key, value: null, headers: h('tombstone') },
        { key, value: 'not json {', headers: h('garbage') },
        { key, value: JSON.stringify({ kind: 'ok', n: 1 }) }, // no idempotency key, policy reject
        { key, value: JSON.stringify({ kind: 'permanent' }), headers: h('permanent') },
        { key, value: JSON.stringify({ kind: 'flaky' }), headers: h('flaky') },
        { key, value: JSON.stringify({ kind: 'ok', n: 2 }), headers: h('good-2') },
        { key, value: JSON.stringify({ kind: 'ok', n: 3 }), headers: h('good-3') },
      ],
    });
    await producer.disconnect();

    const runs = new Map<string, number>();
    const store = createRedisStore({ client: redis, keyPrefix: storePrefix() });
    const consumer = createConsumer<{ kind: string; n?: number }>({
      kafka,
      groupId,
      topics: [topic],
      deadLetter: { topic: dlq },
      store,
      fromBeginning: true,
      consumerConfig: fastGroup,
      logger: quietLogger,
      retry: { maxAttempts: 3, initialDelayMs: 20, maxDelayMs: 50 },
      handler: async (payload, ctx) => {
        runs.set(ctx.key, (runs.get(ctx.key) ?? 0) + 1);
        if (payload.kind === 'permanent') throw new PermanentError('cannot ever work');
        if (payload.kind === 'flaky') throw new Error('downstream timeout');
        return { n: payload.n };
      },
    });
    await consumer.start();
    try {
      const dead = await readTopic(kafka, dlq, (r) => r.length >= 5);
      await waitUntil(() => fullyCommitted(admin, groupId, topic), { message: 'all committed' });

      const byKey = new Map(dead.map((r) => [r.headers['x-idempotency-key'] ?? '(none)', r]));
      expect(dead).toHaveLength(5);
      expect(byKey.get('tombstone')?.headers['x-eo-error-code']).toBe('MALFORMED_MESSAGE');
      expect(byKey.get('tombstone')?.value).toBeNull();
      expect(byKey.get('garbage')?.headers['x-eo-error-code']).toBe('MALFORMED_MESSAGE');
      expect(byKey.get('(none)')?.headers['x-eo-error-code']).toBe('KEY_MISSING');
      expect(byKey.get('permanent')?.headers['x-eo-error-code']).toBe('PERMANENT');
      expect(byKey.get('flaky')?.headers['x-eo-error-code']).toBe('ATTEMPTS_EXHAUSTED');
      expect(byKey.get('flaky')?.headers['x-eo-attempts']).toBe('3');
      expect(runs.get('flaky')).toBe(3);
      expect(runs.get('permanent')).toBe(1);
      for (const r of dead) {
        expect(r.key).toBe(key);
        expect(r.headers[KafkaHeaderNames.OriginalTopic]).toBe(topic);
        expect(r.headers['x-eo-original-destination']).toBe(topic);
        expect(r.headers[KafkaHeaderNames.OriginalPartition]).toMatch(/^[0-2]$/);
        expect(r.headers[KafkaHeaderNames.OriginalOffset]).toMatch(/^\d+$/);
        expect(r.headers['x-eo-consumer']).toBe(groupId);
        expect(r.headers['x-eo-error-message']).toBeTruthy();
      }
      // Original headers travel along.
      expect(byKey.get('permanent')?.headers['x-request-id']).toBe('r-permanent');
      // The records behind the poison were processed.
      for (const id of ['good-2', 'good-3']) {
        const rec = await store.get(scopeKey('default', groupId, id));
        expect(rec?.state).toBe('COMPLETED');
      }
      expect((await store.get(scopeKey('default', groupId, 'permanent')))?.state).toBe('FAILED');
      expect(consumer.stats.deadLettered).toBe(5);
      console.table([{ ...consumer.stats, handlerRuns: [...runs.values()].reduce((a, b) => a + b, 0) }]);
    } finally {
      await consumer.stop();
    }
  });
});
