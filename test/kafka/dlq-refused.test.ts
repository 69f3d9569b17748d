/**
 * A dead-letter copy the topic refuses (too large for it) against the real broker: its partition
 * waits until the copy is taken, the consumer's other partitions do not. kafkajs fetches again only
 * once every batch of a fetch returned, so a copy retried in place held up every partition.
 */
import { PermanentError, scopeKey } from '@exactly-once/core';
import { createConsumer, type KafkaConsumer } from '@exactly-once/kafka';
import { createRedisStore } from '@exactly-once/store-redis';
import type { Redis } from 'ioredis';
import { type Admin, ConfigResourceTypes, type Kafka } from 'kafkajs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createTopics,
  dropStorePrefixes,
  fastGroup,
  fullyCommitted,
  newKafka,
  newRedis,
  readTopic,
  storePrefix,
  uniqueName,
  waitUntil,
} from './helpers.js';

let kafka: Kafka;
let admin: Admin;
let redis: Redis;
let consumer: KafkaConsumer | undefined;

beforeAll(async () => {
  kafka = newKafka('dlq-refused-test');
  admin = kafka.admin();
  await admin.connect();
  redis = newRedis();
});

afterAll(async () => {
  await consumer?.stop();
  await admin?.disconnect();
  if (redis) await dropStorePrefixes(redis);
  await redis?.quit();
});

describe('a dead-letter copy the topic refuses', () => {
  it('holds up its own partition only; once the topic takes it, it carries the first reason', async () => {
    const topic = uniqueName('dlq-refused');
    const dlq = `${topic}.dlq`;
    await createTopics(admin, [topic], 2);
    await admin.createTopics({
      waitForLeaders: true,
      topics: [
        { topic: dlq, numPartitions: 1, configEntries: [{ name: 'max.message.bytes', value: '1000' }] },
      ],
    });
    const groupId = uniqueName('dlq-refused-group');
    const store = createRedisStore({ client: redis, keyPrefix: storePrefix() });
    const handled: string[] = [];
    let refusals = 0;
    const count = (message: string) => {
      if (/dead-letter copy not acknowledged/.test(message)) refusals++;
    };
    consumer = createConsumer<{ id: string; pad?: string }>({
      kafka,
      groupId,
      topics: [topic],
      deadLetter: { topic: dlq },
      store,
      fromBeginning: true,
      consumerConfig: fastGroup,
      logger: { debug() {}, info() {}, warn: count, error: count },
      handler: (p) => {
        if (p.pad !== undefined) throw new PermanentError('card declined');
        handled.push(p.id);
      },
    });
    await consumer.start();
    const producer = kafka.producer();
    await producer.connect();
    const send = (partition: number, id: string, pad?: string) =>
      producer.send({
        topic,
        acks: -1,
        messages: [
          {
            partition,
            value: JSON.stringify({ id, ...(pad ? { pad } : {}) }),
            headers: { 'x-idempotency-key': id },
          },
        ],
      });
    try {
      // Its dead-letter copy (over 2 KB) is over the topic's 1000-byte limit.
      await send(0, 'big', 'x'.repeat(2_000));
      await waitUntil(() => refusals >= 4 && (consumer?.stats.paused ?? 0) >= 1, {
        message: 'the copy refused, past the in-place retries',
      });
      await send(1, 'other');
      // Before: not until the copy was taken (the in-place retries held the fetch for good).
      await waitUntil(() => handled.includes('other'), {
        message: 'the other partition processed',
        timeoutMs: 30_000,
      });
      expect(await fullyCommitted(admin, groupId, topic)).toBe(false);

      await admin.alterConfigs({
        validateOnly: false,
        resources: [
          {
            type: ConfigResourceTypes.TOPIC,
            name: dlq,
            configEntries: [{ name: 'max.message.bytes', value: '1048588' }],
          },
        ],
      });
      const letters = await readTopic(kafka, dlq, (r) => r.length >= 1);
      expect(letters).toHaveLength(1);
      // The record is FAILED by now, and its later runs answer PREVIOUSLY_FAILED: the copy still
      // says why it failed.
      expect(letters[0]?.headers).toMatchObject({
        'x-eo-error-code': 'PERMANENT',
        'x-eo-error-message': 'card declined',
        'x-idempotency-key': 'big',
      });
      await waitUntil(() => fullyCommitted(admin, groupId, topic), {
        message: 'both partitions committed',
        timeoutMs: 60_000,
      });
      expect((await store.get(scopeKey('default', groupId, 'big')))?.state).toBe('FAILED');
      expect(handled).toEqual(['other']);
    } finally {
      await producer.disconnect();
    }
  }, 120_000);
});
