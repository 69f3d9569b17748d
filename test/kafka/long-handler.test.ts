/**
 * A long handler against the real broker: past `maxInPlaceWaitMs` its partition is paused and its
 * batch returns, so the consumer's other partitions go on. kafkajs fetches again only once every
 * batch of a fetch returned, so a handler waited for in place held up every partition.
 */
import { PermanentError, scopeKey } from '@exactly-once/core';
import { createConsumer, type KafkaConsumer } from '@exactly-once/kafka';
import { createRedisStore } from '@exactly-once/store-redis';
import type { Redis } from 'ioredis';
import type { Admin, Kafka, Producer } from 'kafkajs';
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
let producer: Producer;
const consumers: KafkaConsumer[] = [];

beforeAll(async () => {
  kafka = newKafka('long-handler-test');
  admin = kafka.admin();
  await admin.connect();
  producer = kafka.producer();
  await producer.connect();
  redis = newRedis();
});

afterAll(async () => {
  for (const c of consumers) await c.stop();
  await producer?.disconnect();
  await admin?.disconnect();
  if (redis) await dropStorePrefixes(redis);
  await redis?.quit();
});

const send = (topic: string, partition: number, id: string) =>
  producer.send({
    topic,
    acks: -1,
    messages: [{ partition, value: JSON.stringify({ id }), headers: { 'x-idempotency-key': id } }],
  });

/** A handler that, for `slow`, holds until released; events in the order they happened. */
function gatedHandler(onSlow: () => void) {
  const events: string[] = [];
  let open = () => {};
  const gate = new Promise<void>((resolve) => {
    open = resolve;
  });
  const handler = async ({ id }: { id: string }) => {
    events.push(`start:${id}`);
    if (id === 'slow') {
      await gate;
      onSlow();
    }
    events.push(`end:${id}`);
  };
  return { events, handler, open: () => open() };
}

/** A started consumer of `topic` on a fresh group and key prefix, dead letters to `dlq`. */
async function startConsumer(topic: string, dlq: string, handler: (p: { id: string }) => Promise<void>) {
  const groupId = uniqueName('long-handler-group');
  const store = createRedisStore({ client: redis, keyPrefix: storePrefix() });
  const consumer = createConsumer<{ id: string }>({
    kafka,
    groupId,
    topics: [topic],
    deadLetter: { topic: dlq },
    store,
    fromBeginning: true,
    consumerConfig: fastGroup,
    logger: quietLogger,
    handler,
  });
  consumers.push(consumer);
  await consumer.start();
  return { consumer, groupId, store };
}

describe('a long handler', () => {
  it('does not hold up the other partitions; its own partition stays in order and it runs once', async () => {
    const topic = uniqueName('long-handler');
    await createTopics(admin, [topic], 2);
    const { events, handler, open } = gatedHandler(() => {});
    const { consumer, groupId, store } = await startConsumer(topic, `${topic}.dlq`, handler);

    await send(topic, 0, 'slow');
    await waitUntil(() => events.includes('start:slow'), { message: 'the slow handler started' });
    await waitUntil(() => consumer.stats.detached >= 1, { message: 'the slow run detached' });
    await send(topic, 0, 'after-slow');
    await send(topic, 1, 'other');
    // Before: not until the slow handler returned (the batch waited for it in place).
    await waitUntil(() => events.includes('end:other'), {
      message: 'the other partition processed while the slow handler runs',
      timeoutMs: 30_000,
    });
    expect(events).not.toContain('end:slow');
    expect(events).not.toContain('start:after-slow');

    open();
    await waitUntil(() => events.includes('end:after-slow'), { message: 'the slow partition goes on' });
    await waitUntil(() => fullyCommitted(admin, groupId, topic), { message: 'both partitions committed' });
    // Once each, and in offset order on partition 0.
    expect(events.filter((e) => e === 'start:slow')).toHaveLength(1);
    expect(events.indexOf('start:after-slow')).toBeGreaterThan(events.indexOf('end:slow'));
    expect((await store.get(scopeKey('default', groupId, 'slow')))?.state).toBe('COMPLETED');
    expect(consumer.stats.byOutcome.duplicate).toBe(1); // the slow record, fetched again
  }, 120_000);

  it('that fails for good is dead-lettered with its own reason, not as a failed-before record', async () => {
    const topic = uniqueName('long-handler-dl');
    const dlq = `${topic}.dlq`;
    await createTopics(admin, [topic, dlq], 1);
    const { events, handler, open } = gatedHandler(() => {
      throw new PermanentError('card declined');
    });
    const { consumer, groupId } = await startConsumer(topic, dlq, handler);
    await send(topic, 0, 'slow');
    await waitUntil(() => consumer.stats.detached >= 1, { message: 'the slow run detached' });
    open();
    const letters = await readTopic(kafka, dlq, (r) => r.length >= 1);
    expect(letters).toHaveLength(1);
    expect(letters[0]?.headers).toMatchObject({
      'x-eo-error-code': 'PERMANENT',
      'x-eo-error-message': 'card declined',
      'x-idempotency-key': 'slow',
    });
    await waitUntil(() => fullyCommitted(admin, groupId, topic), { message: 'committed past it' });
    expect(events.filter((e) => e === 'start:slow')).toHaveLength(1);
  }, 120_000);
});
