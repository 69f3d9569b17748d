/** The SDK producer: first-service headers on `send`, and core's confirmed publisher contract. */
import { createHash } from 'node:crypto';
import { createProducer } from '@exactly-once/kafka';
import { type Admin, Kafka, logLevel } from 'kafkajs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lossyKafkaSockets } from '../support/lossy-kafka-sockets.js';
import { expectUnusableKeysRefused } from '../support/unusable-keys.js';
import {
  CLIENTS,
  clientKafka,
  createTopics,
  env,
  newKafka,
  readTopic,
  topicSize,
  uniqueName,
} from './helpers.js';

let kafka: Kafka;
let admin: Admin;

beforeAll(async () => {
  kafka = newKafka('producer-test');
  admin = kafka.admin();
  await admin.connect();
});

afterAll(async () => {
  await admin?.disconnect();
});

describe('kafka producer', () => {
  it('send sets request id, idempotency key (defaulting to the request id) and keeps extra headers', async () => {
    const topic = uniqueName('producer');
    await createTopics(admin, [topic], 3);
    const producer = createProducer({ kafka });
    try {
      const a = await producer.send(topic, { n: 1 }, { key: 'k1' });
      const b = await producer.send(
        topic,
        { n: 2 },
        {
          key: 'k2',
          requestId: 'req-2',
          idempotencyKey: 'idem-2',
          headers: { 'x-tenant': 'acme', 'x-request-id': 'spoofed' },
        },
      );
      expect(a.requestId).toMatch(/^[0-9a-f-]{36}$/);
      expect(a.idempotencyKey).toBe(a.requestId);
      expect(b).toEqual({ requestId: 'req-2', idempotencyKey: 'idem-2' });
      const records = await readTopic(kafka, topic, (r) => r.length >= 2);
      const r1 = records.find((r) => r.key === 'k1');
      const r2 = records.find((r) => r.key === 'k2');
      expect(r1?.headers['x-request-id']).toBe(a.requestId);
      expect(r1?.headers['x-idempotency-key']).toBe(a.requestId);
      expect(r1?.headers['content-type']).toBe('application/json');
      expect(JSON.parse(r1?.value ?? '')).toEqual({ n: 1 });
      expect(r2?.headers['x-request-id']).toBe('req-2'); // the SDK's own headers win
      expect(r2?.headers['x-idempotency-key']).toBe('idem-2');
      expect(r2?.headers['x-tenant']).toBe('acme');
    } finally {
      await producer.disconnect();
    }
  });

  it('send answers and sends a request id past 255 bytes as the sha256 form consumers read it as', async () => {
    // Before: the 300-byte id went out and came back as given, while every consumer logged and
    // traced it as sha256:<hex>: the sender's logs named a request id no service had.
    const topic = uniqueName('producer-long-id');
    await createTopics(admin, [topic], 1);
    const producer = createProducer({ kafka });
    const given = `req-${'r'.repeat(300)}`;
    try {
      const sent = await producer.send(topic, { n: 1 }, { requestId: given });
      expect(sent.requestId).toBe(`sha256:${createHash('sha256').update(given).digest('hex')}`);
      // The key defaults to the request id as given: consumers hash a long key themselves.
      expect(sent.idempotencyKey).toBe(given);
      const [record] = await readTopic(kafka, topic, (r) => r.length >= 1);
      expect(record?.headers['x-request-id']).toBe(sent.requestId);
      expect(record?.headers['x-idempotency-key']).toBe(given);
    } finally {
      await producer.disconnect();
    }
  });

  it('send refuses an empty key or request id, or one that is not UTF-8, with InvalidKeyError and sends nothing', async () => {
    const topic = uniqueName('producer-badkey');
    await createTopics(admin, [topic], 1);
    const producer = createProducer({ kafka });
    try {
      await expectUnusableKeysRefused((idempotencyKey) => producer.send(topic, { n: 1 }, { idempotencyKey }));
      // A request id is checked as the consumers check it: it is also the key when none is given.
      await expectUnusableKeysRefused((requestId) => producer.send(topic, { n: 1 }, { requestId }));
      await expectUnusableKeysRefused((requestId) =>
        producer.send(topic, { n: 1 }, { requestId, idempotencyKey: 'k-valid' }),
      );
      await producer.send(topic, { n: 2 }, { idempotencyKey: 'k-ok' });
      expect(await topicSize(admin, topic)).toBe(1);
    } finally {
      await producer.disconnect();
    }
  });

  it('publish sends outgoing messages to their topics with the routing key as Kafka key', async () => {
    const t1 = uniqueName('publish-a');
    const t2 = uniqueName('publish-b');
    await createTopics(admin, [t1, t2], 1);
    const producer = createProducer({ kafka });
    try {
      await producer.publish([
        { id: 'c1', destination: t1, routingKey: 'r1', body: Buffer.from('{"a":1}'), headers: { h: '1' } },
        { id: 'c2', destination: t2, body: Buffer.from('{"b":2}'), headers: { h: '2' } },
      ]);
      const [a] = await readTopic(kafka, t1, (r) => r.length >= 1);
      const [b] = await readTopic(kafka, t2, (r) => r.length >= 1);
      expect(a).toMatchObject({ key: 'r1', value: '{"a":1}', headers: { h: '1' } });
      expect(b).toMatchObject({ key: null, value: '{"b":2}', headers: { h: '2' } });
    } finally {
      await producer.disconnect();
    }
  });

  it.each(CLIENTS)(
    '%s: a request that failed for one topic and was appended for another leaves the producer writing every later send',
    async (client) => {
      // The broker appends per partition: `ok` takes its record, `small` refuses one over its size
      // limit (MESSAGE_TOO_LARGE, not retried). A producer that then numbered `ok`'s next batch as
      // if the first had not been appended would see it refused for ever (out of order) or, with
      // the same record count, taken for a retry and dropped unwritten.
      const ok = uniqueName('partial-ok');
      const small = uniqueName('partial-small');
      await createTopics(admin, [ok], 1);
      await admin.createTopics({
        topics: [
          { topic: small, numPartitions: 1, configEntries: [{ name: 'max.message.bytes', value: '1000' }] },
        ],
      });
      await createTopics(admin, [small], 1);
      const producer = createProducer({ kafka: clientKafka(client, 'producer-partial') });
      const message = (destination: string, body: string) => ({
        id: body,
        destination,
        routingKey: 'k',
        body: Buffer.from(body),
        headers: {},
      });
      try {
        await expect(
          producer.publish([message(ok, 'first'), message(small, 'x'.repeat(2_000))]),
        ).rejects.toThrow(/larger than the max message size|too large/i);
        await producer.publish([message(ok, 'second')]);
        await producer.publish([message(ok, 'third'), message(ok, 'fourth')]);
        const records = await readTopic(kafka, ok, (r) => r.some((x) => x.value === 'fourth'), 30_000);
        // `first` was appended before the request failed; the later ones each once.
        expect(records.map((r) => r.value)).toEqual(['first', 'second', 'third', 'fourth']);
      } finally {
        await producer.disconnect();
      }
    },
  );

  it('records without a key keep their partition when kafkajs sends a request again', async () => {
    // The broker appends the first request and its answer is lost: kafkajs times out and sends it
    // again. kafkajs' default partitioner sends a keyless record to the next partition each time
    // it is asked: the second request's batches would be new to some partitions (written twice)
    // and match an appended batch in others (taken for a retry).
    const topic = uniqueName('keyless');
    await createTopics(admin, [topic], 3);
    const sockets = lossyKafkaSockets();
    const lossy = new Kafka({
      clientId: 'producer-lossy',
      brokers: env.kafkaBrokers,
      logLevel: logLevel.NOTHING,
      requestTimeout: 1_500,
      socketFactory: sockets.socketFactory,
    });
    const producer = createProducer({ kafka: lossy, timeoutMs: 500 });
    const message = (body: string) => ({
      id: body,
      destination: topic,
      body: Buffer.from(body),
      headers: {},
    });
    try {
      await producer.publish([message('warm-up')]);
      sockets.loseNextProduceAnswer();
      await producer.publish([message('a'), message('b')]);
      expect(sockets.lost).toBe(1);
      // Every record the broker appended counts, read or not yet.
      expect(await topicSize(admin, topic)).toBe(3);
      const records = await readTopic(kafka, topic, (r) => r.length >= 3, 30_000);
      expect(records.map((r) => r.value).sort()).toEqual(['a', 'b', 'warm-up']);
    } finally {
      await producer.disconnect();
    }
  });
});
