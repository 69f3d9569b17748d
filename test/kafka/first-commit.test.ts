/**
 * Partitions the group has never committed, against the real broker, with the default
 * `fromBeginning: false` (kafkajs starts such a partition at its end). A record fetched there
 * whose run was given up before the first commit, and a retry copy written to a retry-topic
 * partition nobody had committed yet, were both skipped by the next owner: it started at the end
 * again, after them, and they were never processed.
 */
import { createConsumer, type KafkaConsumer } from '@exactly-once/kafka';
import { createRedisStore } from '@exactly-once/store-redis';
import type { Redis } from 'ioredis';
import type { Admin, Kafka } from 'kafkajs';
import { afterAll, afterEach, beforeAll, describe, it } from 'vitest';
import {
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
const cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  kafka = newKafka('first-commit-test');
  admin = kafka.admin();
  await admin.connect();
  redis = newRedis();
});

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});

afterAll(async () => {
  await admin?.disconnect();
  if (redis) await dropStorePrefixes(redis);
  await redis?.quit();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function produce(topic: string, key: string): Promise<void> {
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  await producer.send({
    topic,
    acks: -1,
    messages: [{ value: JSON.stringify({ amount: 1 }), headers: { 'x-idempotency-key': key } }],
  });
  await producer.disconnect();
}

describe('kafka: partitions the group never committed (fromBeginning: false)', () => {
  it('a record whose run stop() gave up before any commit is processed by the next owner', async () => {
    const topic = uniqueName('first-commit');
    const groupId = uniqueName('first-commit-group');
    await createTopics(admin, [topic, `${topic}.dlq`], 1);
    const keyPrefix = storePrefix();
    const completed: string[] = [];
    const make = (name: string, handlerMs: number): KafkaConsumer =>
      createConsumer<{ amount: number }>({
        kafka,
        groupId,
        topics: [topic],
        deadLetter: { topic: `${topic}.dlq` },
        store: createRedisStore({ client: redis, keyPrefix }),
        consumerConfig: fastGroup,
        logger: quietLogger,
        leaseMs: 2_000,
        retentionCheck: 'off',
        handler: async (_p, ctx) => {
          await sleep(handlerMs);
          if (!ctx.signal.aborted) completed.push(`${name} ${ctx.key}`);
        },
      });
    const a = make('A', 30_000);
    await a.start();
    // The member has joined and its position on the empty partition is set (its end).
    await waitUntil(async () => (await admin.describeGroups([groupId])).groups[0]?.state === 'Stable', {
      message: 'A joined',
    });
    await sleep(1_500);
    await produce(topic, 'fc-1');
    await waitUntil(() => a.stats.received === 1, { message: 'A fetched the record' });
    await a.stop({ timeoutMs: 200 }); // its run is given up, nothing committed by it
    const b = make('B', 0);
    cleanups.push(() => b.stop());
    await b.start();
    // B must read the record again (it takes it over once A's lease has run out).
    await waitUntil(() => completed.includes('B fc-1'), { timeoutMs: 60_000, message: 'B processed fc-1' });
  }, 120_000);

  it('a retry copy written before the retry topic was ever committed is read after a restart', async () => {
    const topic = uniqueName('first-retry');
    const retryTopic = `${topic}.retry`;
    const groupId = uniqueName('first-retry-group');
    await createTopics(admin, [topic, retryTopic, `${topic}.dlq`], 1);
    const keyPrefix = storePrefix();
    const runs: string[] = [];
    const make = (name: string): KafkaConsumer =>
      createConsumer<{ amount: number }>({
        kafka,
        groupId,
        topics: [topic],
        retryTopic,
        deadLetter: { topic: `${topic}.dlq` },
        store: createRedisStore({ client: redis, keyPrefix }),
        consumerConfig: fastGroup,
        logger: quietLogger,
        retentionCheck: 'off',
        retry: { maxAttempts: 3, initialDelayMs: 4_000, maxDelayMs: 4_000, jitter: 'none' },
        handler: async (_p, ctx) => {
          runs.push(`${name} attempt ${ctx.attempt}`);
          if (ctx.attempt === 1) throw new Error('try again later');
        },
      });
    const a = make('A');
    await a.start();
    await waitUntil(async () => (await admin.describeGroups([groupId])).groups[0]?.state === 'Stable', {
      message: 'A joined',
    });
    await sleep(1_500);
    await produce(topic, 'rt-1');
    await waitUntil(() => a.stats.retried === 1, { message: 'the retry copy written' });
    await a.stop(); // a deploy: the copy is not due yet
    const b = make('B');
    cleanups.push(() => b.stop());
    await b.start();
    await waitUntil(() => runs.includes('B attempt 2'), {
      timeoutMs: 60_000,
      message: () => `B ran attempt 2 (${runs})`,
    });
  }, 120_000);
});
