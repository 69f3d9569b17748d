/** The SDK producer: first-service headers on `send`, and core's confirmed publisher contract. */
import { createProducer } from '@exactly-once/kafka';
import type { Admin, Kafka } from 'kafkajs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTopics, newKafka, readTopic, uniqueName } from './helpers.js';

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
});
