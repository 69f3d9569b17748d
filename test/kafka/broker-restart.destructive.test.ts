/**
 * DESTRUCTIVE: restarts the shared Kafka broker (scripts/infra.sh down/up kafka) while records
 * flow. Runs after the other test files, alone (see the root `test` script).
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { scopeKey } from '@exactly-once/core';
import { createConsumer } from '@exactly-once/kafka';
import { createRedisStore } from '@exactly-once/store-redis';
import type { Redis } from 'ioredis';
import type { Kafka } from 'kafkajs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createTopics,
  distinctKeys,
  dropStorePrefixes,
  fastGroup,
  fullyCommitted,
  newKafka,
  newRedis,
  produceOrders,
  quietLogger,
  readTopic,
  storePrefix,
  table,
  uniqueName,
  waitUntil,
} from './helpers.js';

const run = promisify(execFile);
const root = fileURLToPath(new URL('../..', import.meta.url));
const infra = (...args: string[]) =>
  run('bash', ['scripts/infra.sh', ...args], { cwd: root, timeout: 300_000 });

let kafka: Kafka;
let redis: Redis;

beforeAll(async () => {
  kafka = newKafka('broker-restart');
  redis = newRedis();
});

afterAll(async () => {
  if (redis) await dropStorePrefixes(redis);
  await redis?.quit();
  // Leave the broker up for whatever runs next, even when the test failed half-way.
  await infra('up', 'kafka');
});

describe('broker restart mid-stream (destructive)', () => {
  it('processes every record once across a Kafka restart', async () => {
    const topic = uniqueName('restart');
    const out = `${topic}.out`;
    const groupId = uniqueName('restart-group');
    const admin = kafka.admin();
    await admin.connect();
    await createTopics(admin, [topic, out, `${topic}.dlq`], 3);
    await admin.disconnect();
    const ids = Array.from({ length: 1200 }, (_, i) => `br-${i}`);
    await produceOrders(kafka, topic, ids.slice(0, 600));

    const store = createRedisStore({ client: redis, keyPrefix: storePrefix() });
    const effects = new Map<string, number>();
    const consumer = createConsumer<{ id: string }>({
      kafka,
      groupId,
      topics: [topic],
      deadLetter: { topic: `${topic}.dlq` },
      store,
      fromBeginning: true,
      consumerConfig: { ...fastGroup, retry: { retries: 30, initialRetryTime: 300, maxRetryTime: 5_000 } },
      leaseMs: 3_000,
      logger: quietLogger,
      handler: async (order, ctx) => {
        await new Promise((r) => setTimeout(r, 10));
        effects.set(order.id, (effects.get(order.id) ?? 0) + 1);
        ctx.publish(out, { id: order.id }, { routingKey: order.id });
      },
    });
    await consumer.start();
    try {
      await waitUntil(() => effects.size >= 150, { timeoutMs: 60_000, message: '150 processed' });
      const atRestart = effects.size;
      await infra('down', 'kafka');
      await infra('up', 'kafka');
      const afterRestart = effects.size;
      await produceOrders(kafka, topic, ids.slice(600));
      const admin2 = kafka.admin();
      await admin2.connect();
      try {
        await waitUntil(() => fullyCommitted(admin2, groupId, topic), {
          timeoutMs: 180_000,
          intervalMs: 500,
          message: 'all committed after the restart',
        });
      } finally {
        await admin2.disconnect();
      }
      let completed = 0;
      for (const id of ids) {
        if ((await store.get(scopeKey('default', groupId, id)))?.state === 'COMPLETED') completed++;
      }
      const records = await readTopic(kafka, out, (r) => distinctKeys(r) >= ids.length);
      const runs = [...effects.values()].reduce((a, b) => a + b, 0);
      table('Kafka broker restart', [
        {
          messages: ids.length,
          'processed at restart': atRestart,
          'processed when back': afterRestart,
          'handler runs': runs,
          completed,
          lost: ids.length - completed,
          'outgoing records': records.length,
          'outgoing distinct': distinctKeys(records),
        },
      ]);
      expect(completed).toBe(ids.length);
      expect(effects.size).toBe(ids.length);
      expect(distinctKeys(records)).toBe(ids.length);
    } finally {
      await consumer.stop();
    }
  }, 400_000);
});
