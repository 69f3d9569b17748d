/**
 * The processed-store goes down mid-stream (core's fault wrapper around the real Redis store):
 * while it is down nothing begins and only what completed is committed; handlers that ran try
 * their completions until it is back, and everything completes once it is, each handler run once.
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
  it('commits only what completed while the store is down, runs no handler twice and loses nothing', async () => {
    const topic = uniqueName('outage');
    const groupId = uniqueName('outage-group');
    await createTopics(admin, [topic, `${topic}.dlq`], 3);
    const ids = Array.from({ length: 900 }, (_, i) => `o-${i}`);
    await produceOrders(kafka, topic, ids);

    let down = false;
    let refused = 0;
    // The most times one key's completion was refused.
    const completeTries = new Map<string, number>();
    let mostCompleteTries = 0;
    const base = createRedisStore({ client: redis, keyPrefix: storePrefix() });
    const store = withFaults(base, {
      failWhen: (op, key) => {
        if (!down) return false;
        refused++;
        if (op === 'complete') {
          const tries = (completeTries.get(key) ?? 0) + 1;
          completeTries.set(key, tries);
          mostCompleteTries = Math.max(mostCompleteTries, tries);
        }
        return true;
      },
    });
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
    // Records whose state passes `which`, read from the store itself, past the faults.
    const countRecords = async (which: (state: string) => boolean) =>
      (await Promise.all(ids.map((id) => base.get(scopeKey('default', groupId, id))))).filter(
        (r) => r != null && which(r.state),
      ).length;
    await consumer.start();
    try {
      await waitUntil(() => effects.size >= 200, { timeoutMs: 60_000, message: '200 processed' });
      down = true;
      // Once a completion has been refused, nothing begins: only handlers begun before the
      // outage run, and try their completions.
      await waitUntil(() => mostCompleteTries >= 1, { message: 'outage observed' });
      const begunAtOutage = await countRecords(() => true);
      const before = await committed(admin, groupId, topic);
      // A completion tried 7 times has waited 5.1 s between tries: past the 3 s lease's local end.
      await waitUntil(() => mostCompleteTries >= 7, { message: 'completions tried past the lease' });
      const during = await committed(admin, groupId, topic);
      const processedDuring = effects.size;
      const completedDuring = await countRecords((state) => state === 'COMPLETED');
      down = false;
      await waitUntil(() => fullyCommitted(admin, groupId, topic), {
        timeoutMs: 60_000,
        message: 'all committed',
      });

      const completed = await countRecords((state) => state === 'COMPLETED');
      table('Kafka store outage', [
        {
          messages: ids.length,
          'committed before outage': sum(before),
          'committed during outage': sum(during),
          'begun at outage': begunAtOutage,
          'handler effects during outage': processedDuring,
          'deferred (store down)': consumer.stats.deferred,
          'refused store calls': refused,
          'most tries of one completion': mostCompleteTries,
          'handler runs': runs,
          'distinct effects': effects.size,
          completed,
          lost: ids.length - completed,
        },
      ]);
      // While the store is down, only what completed is committed (a commit of what completed
      // before may still go out), and only handlers begun before the outage run.
      expect(sum(during)).toBeGreaterThanOrEqual(sum(before));
      expect(sum(during)).toBeLessThanOrEqual(completedDuring);
      expect(processedDuring).toBeLessThanOrEqual(begunAtOutage);
      expect(completed).toBe(ids.length);
      expect(effects.size).toBe(ids.length);
      // A handler that ran before the outage is not run again: its completion was tried until
      // the store answered. Before, it was given up at the lease's end and the key taken over.
      expect(runs).toBe(ids.length);
    } finally {
      await consumer.stop();
    }
  }, 120_000);
});
