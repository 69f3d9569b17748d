/**
 * The processed-store goes down mid-stream (core's fault wrapper around the real Redis store):
 * nothing is committed while it is down, and everything completes once it is back.
 */
import { scopeKey, withFaults } from '@exactly-once/core';
import { createConsumer } from '@exactly-once/kafka';
import { createRedisStore } from '@exactly-once/store-redis';
import type { Redis } from 'ioredis';
import type { Admin, Kafka } from 'kafkajs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  committed,
  createTopics,
  dropStorePrefixes,
  fastGroup,
  fullyCommitted,
  newKafka,
  newRedis,
  produceOrders,
  quietLogger,
  storePrefix,
  table,
  uniqueName,
  waitUntil,
} from './helpers.js';

let kafka: Kafka;
let admin: Admin;
let redis: Redis;

beforeAll(async () => {
  kafka = newKafka('store-outage');
  admin = kafka.admin();
  await admin.connect();
  redis = newRedis();
});

afterAll(async () => {
  await admin?.disconnect();
  if (redis) await dropStorePrefixes(redis);
  await redis?.quit();
});

const sum = (m: Map<number, number>) => [...m.values()].reduce((n, v) => n + Math.max(0, v), 0);

describe('store outage mid-stream', () => {
  it('commits nothing while the store is down and loses nothing', async () => {
    const topic = uniqueName('outage');
    const groupId = uniqueName('outage-group');
    await createTopics(admin, [topic, `${topic}.dlq`], 3);
    const ids = Array.from({ length: 900 }, (_, i) => `o-${i}`);
    await produceOrders(kafka, topic, ids);

    let down = false;
    const base = createRedisStore({ client: redis, keyPrefix: storePrefix() });
    const store = withFaults(base, { failWhen: () => down });
    const effects = new Set<string>();
    let runs = 0;
    const consumer = createConsumer<{ id: string }>({
      kafka,
      groupId,
      topics: [topic],
      deadLetter: { topic: `${topic}.dlq` },
      store,
      fromBeginning: true,
      consumerConfig: fastGroup,
      commitEveryMessages: 10,
      leaseMs: 3_000,
      logger: quietLogger,
      handler: async (order) => {
        runs++;
        await new Promise((r) => setTimeout(r, 5));
        effects.add(order.id);
      },
    });
    await consumer.start();
    try {
      await waitUntil(() => effects.size >= 200, { timeoutMs: 60_000, message: '200 processed' });
      down = true;
      // Once every partition has hit the outage, progress stops; take the snapshot then.
      const deferredAtOutage = consumer.stats.deferred;
      await waitUntil(() => consumer.stats.deferred >= deferredAtOutage + 6, { message: 'outage observed' });
      const processedAtOutage = effects.size;
      const before = await committed(admin, groupId, topic);
      const deferredBefore = consumer.stats.deferred;
      // Let the consumer keep failing for a while (several defer rounds), then compare.
      await waitUntil(() => consumer.stats.deferred >= deferredBefore + 9, { message: 'outage lasts' });
      const during = await committed(admin, groupId, topic);
      const processedDuring = effects.size;
      down = false;
      await waitUntil(() => fullyCommitted(admin, groupId, topic), {
        timeoutMs: 60_000,
        message: 'all committed',
      });

      const completed = (
        await Promise.all(ids.map((id) => base.get(scopeKey('default', groupId, id))))
      ).filter((r) => r?.state === 'COMPLETED').length;
      table('Kafka store outage', [
        {
          messages: ids.length,
          'committed before outage': sum(before),
          'committed during outage': sum(during),
          'handler effects at outage': processedAtOutage,
          'handler effects during outage': processedDuring,
          'deferred (store down)': consumer.stats.deferred,
          'handler runs': runs,
          'distinct effects': effects.size,
          completed,
          lost: ids.length - completed,
        },
      ]);
      expect(during).toEqual(before);
      expect(processedDuring).toBe(processedAtOutage);
      // Nothing committed beyond what had completed before the outage.
      expect(sum(during)).toBeLessThanOrEqual(processedAtOutage);
      expect(completed).toBe(ids.length);
      expect(effects.size).toBe(ids.length);
    } finally {
      await consumer.stop();
    }
  }, 120_000);
});
