/**
 * A work topic written in Kafka transactions (a Kafka Streams or transactional Java producer
 * upstream): committed records are processed once each, aborted ones never, and the group's
 * commit reaches the partition's end past the transaction markers. Before, it stopped at the last
 * record (a lag of 1 or more that never went away), and a trailing aborted transaction was never
 * committed past at all.
 */
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
  newKafka,
  newRedis,
  quietLogger,
  storePrefix,
  uniqueName,
  waitUntil,
} from './helpers.js';

let kafka: Kafka;
let admin: Admin;
let redis: Redis;

beforeAll(async () => {
  kafka = newKafka('transactional-input-test');
  admin = kafka.admin();
  await admin.connect();
  redis = newRedis();
});

afterAll(async () => {
  await admin?.disconnect();
  if (redis) await dropStorePrefixes(redis);
  await redis?.quit();
});

describe('a work topic written in transactions', () => {
  it('processes each committed record once, no aborted one, and commits past the markers', async () => {
    const topic = uniqueName('tx-input');
    const groupId = uniqueName('tx-input-group');
    await createTopics(admin, [topic, `${topic}.dlq`], 1);
    const writer = kafka.producer({
      transactionalId: uniqueName('tx-writer'),
      idempotent: true,
      maxInFlightRequests: 1,
    });
    await writer.connect();
    const write = async (keys: string[], commit: boolean) => {
      const tx = await writer.transaction();
      await tx.send({
        topic,
        messages: keys.map((key) => ({
          value: JSON.stringify({ key }),
          headers: { 'x-idempotency-key': key },
        })),
      });
      await (commit ? tx.commit() : tx.abort());
    };
    const handled: string[] = [];
    const consumer = createConsumer<{ key: string }>({
      kafka,
      groupId,
      topics: [topic],
      deadLetter: { topic: `${topic}.dlq` },
      store: createRedisStore({ client: redis, keyPrefix: storePrefix() }),
      fromBeginning: true,
      consumerConfig: fastGroup,
      logger: quietLogger,
      retentionCheck: 'off',
      handler: (p) => {
        handled.push(p.key);
      },
    });
    const committedTo = (offset: number, message: string) =>
      waitUntil(async () => (await committed(admin, groupId, topic)).get(0) === offset, {
        message,
        timeoutMs: 30_000,
      });
    try {
      // Offsets: k0 0, k1 1, commit marker 2; k2 3, k3 4 aborted, marker 5; k4 6, marker 7. Written
      // before the consumer starts, so that its first fetch ends in the marker.
      await write(['k0', 'k1'], true);
      await write(['k2', 'k3'], false);
      await write(['k4'], true);
      await consumer.start();
      await committedTo(8, 'a commit past the last marker');
      expect(handled).toEqual(['k0', 'k1', 'k4']);
      // Caught up, an aborted transaction (8, 9, marker 10): a fetch of nothing but filtered records.
      await write(['k5', 'k6'], false);
      await committedTo(11, 'a commit past the aborted transaction');
      await write(['k7'], true);
      await committedTo(13, 'a commit past the next transaction');
      expect(handled).toEqual(['k0', 'k1', 'k4', 'k7']);
    } finally {
      await consumer.stop();
      await writer.disconnect();
      await admin.deleteTopics({ topics: [topic, `${topic}.dlq`] }).catch(() => undefined);
    }
  }, 120_000);
});
