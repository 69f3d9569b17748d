/**
 * Identity headers (`x-idempotency-key`, `x-request-id`) that are ambiguous through the real
 * broker: a header repeated in one record (kafkajs produces `['a', 'b']` as two headers and hands
 * them back as an array) or the name twice in different case. Core refuses each as an
 * InvalidKeyError; the adapter hands it the raw values and its dead-letter copy keeps them all.
 */
import { createConsumer } from '@exactly-once/kafka';
import { createRedisStore } from '@exactly-once/store-redis';
import type { Redis } from 'ioredis';
import type { Admin, IHeaders, Kafka, Message } from 'kafkajs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CLIENTS,
  clientKafka,
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
  kafka = newKafka('identity-test');
  admin = kafka.admin();
  await admin.connect();
  redis = newRedis();
});

afterAll(async () => {
  await admin?.disconnect();
  if (redis) await dropStorePrefixes(redis);
  await redis?.quit();
});

const invalid: [string, IHeaders][] = [
  ['a repeated key header', { 'x-idempotency-key': ['a', 'b'] }],
  ['the key twice in different case', { 'x-idempotency-key': 'a', 'X-Idempotency-Key': 'b' }],
  ['a repeated request id', { 'x-idempotency-key': 'with-bad-request-id', 'x-request-id': ['r1', 'r2'] }],
];

/** A new topic (and its dead-letter topic) holding `messages`, and a group name to read it with. */
async function topicWith(
  name: string,
  messages: Message[],
): Promise<{ topic: string; dlq: string; groupId: string }> {
  const topic = uniqueName(name);
  const dlq = `${topic}.dlq`;
  await createTopics(admin, [topic, dlq], 1);
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  try {
    await producer.send({ topic, acks: -1, messages });
  } finally {
    await producer.disconnect();
  }
  return { topic, dlq, groupId: uniqueName(`${name}-group`) };
}

describe('kafka: ambiguous identity headers', () => {
  it('dead-letters each as InvalidKeyError with every original value; the handler never runs', async () => {
    const { topic, dlq, groupId } = await topicWith('ident', [
      ...invalid.map(([what, headers]) => ({ key: what, value: JSON.stringify({ what }), headers })),
      { key: 'good', value: JSON.stringify({ what: 'good' }), headers: { 'x-idempotency-key': 'good-1' } },
    ]);

    const runs: string[] = [];
    // broker-id: a key the adapter dropped or collapsed would be processed under another key.
    const consumer = createConsumer<{ what: string }>({
      kafka,
      groupId,
      topics: [topic],
      deadLetter: { topic: dlq },
      store: createRedisStore({ client: redis, keyPrefix: storePrefix() }),
      missingKey: 'broker-id',
      fromBeginning: true,
      consumerConfig: fastGroup,
      logger: quietLogger,
      handler: (_p, ctx) => {
        runs.push(ctx.key);
      },
    });
    await consumer.start();
    try {
      await waitUntil(() => fullyCommitted(admin, groupId, topic), { message: 'all committed' });
      expect(runs).toEqual(['good-1']);
      expect(consumer.stats.deadLettered).toBe(invalid.length);
      expect(consumer.stats.acked).toBe(1);
      const letters = await readTopic(kafka, dlq, (r) => r.length >= invalid.length);
      expect(letters).toHaveLength(invalid.length);
      for (const [what, headers] of invalid) {
        const copy = letters.find((r) => r.key === what);
        expect(copy?.headers['x-eo-error-class'], what).toBe('InvalidKeyError');
        expect(copy?.headers['x-eo-error-code'], what).toBe('INVALID_KEY');
        // Every value survives the copy: collapsing a repeat to one value would turn the copy
        // into a valid message with a guessed key for whoever replays it.
        for (const [name, value] of Object.entries(headers)) {
          expect(copy?.headerValues[name], `${what}: ${name}`).toEqual(
            Array.isArray(value) ? value : [value],
          );
        }
      }
    } finally {
      await consumer.stop();
    }
  });
});

describe.each(CLIENTS)('kafka on %s: an empty key header', (client) => {
  it('is dead-lettered KEY_MISSING with the header still present and empty in the copy, not null', async () => {
    const { topic, dlq, groupId } = await topicWith('empty-key', [
      { key: 'empty', value: '{}', headers: { 'x-idempotency-key': '', note: Buffer.alloc(0) } },
      { key: 'good', value: '{}', headers: { 'x-idempotency-key': 'good-1' } },
    ]);

    const runs: string[] = [];
    const consumer = createConsumer({
      kafka: clientKafka(client, 'empty-key-test'),
      groupId,
      topics: [topic],
      deadLetter: { topic: dlq },
      store: createRedisStore({ client: redis, keyPrefix: storePrefix() }),
      fromBeginning: true,
      consumerConfig: fastGroup,
      logger: quietLogger,
      handler: (_p, ctx) => {
        runs.push(ctx.key);
      },
    });
    await consumer.start();
    try {
      await waitUntil(() => fullyCommitted(admin, groupId, topic), { message: 'all committed' });
      expect(runs).toEqual(['good-1']);
      const [copy] = await readTopic(kafka, dlq, (r) => r.length >= 1);
      expect(copy?.headers['x-eo-error-code']).toBe('KEY_MISSING');
      // librdkafka writes an empty Buffer as a null value: a reader (the CLI's replay) then met
      // a header without a value, which no producer takes back.
      expect(copy?.headerValues['x-idempotency-key']).toEqual(['']);
      expect(copy?.headerValues.note).toEqual(['']);
    } finally {
      await consumer.stop();
    }
  });
});
