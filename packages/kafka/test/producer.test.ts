/** The producer's request coalescing, against a scripted client. */
import { describe, expect, it } from 'vitest';
import type { KafkaLike, ProducerLike, ProducerRecordMessageLike } from '../src/client.js';
import { createProducer } from '../src/producer.js';

type Batch = { topic: string; messages: ProducerRecordMessageLike[] }[];

function fakeKafka(fail: (batch: Batch) => boolean = () => false) {
  const requests: Batch[] = [];
  let configSeen: unknown;
  const producer: ProducerLike = {
    connect: async () => {},
    disconnect: async () => {},
    sendBatch: async ({ topicMessages }) => {
      requests.push(topicMessages);
      await new Promise((r) => setTimeout(r, 5));
      if (fail(topicMessages)) throw new Error('rejected by broker');
    },
  };
  const kafka: KafkaLike = {
    consumer: () => {
      throw new Error('not used');
    },
    producer: (config) => {
      configSeen = config;
      return producer;
    },
  };
  return { kafka, requests, config: () => configSeen };
}

const msg = (id: string, destination: string) => ({
  id,
  destination,
  routingKey: id,
  body: Buffer.from(id),
  headers: { 'x-idempotency-key': id },
});

describe('producer', () => {
  it('is idempotent with one request in flight', () => {
    const { kafka, config } = fakeKafka();
    createProducer({ kafka, producerConfig: { allowAutoTopicCreation: false } });
    expect(config()).toMatchObject({
      idempotent: true,
      maxInFlightRequests: 1,
      allowAutoTopicCreation: false,
    });
  });

  it('sends concurrent publishes together, in arrival order', async () => {
    const { kafka, requests } = fakeKafka();
    const producer = createProducer({ kafka });
    await Promise.all([
      producer.publish([msg('a1', 'A')]),
      producer.publish([msg('b1', 'B')]),
      producer.publish([msg('a2', 'A')]),
    ]);
    expect(requests).toHaveLength(2); // the first goes alone, the two that waited go together
    const keys = (b: Batch) => b.map((t) => `${t.topic}:${t.messages.map((m) => m.key).join(',')}`);
    expect(keys(requests[0] as Batch)).toEqual(['A:a1']);
    expect(keys(requests[1] as Batch)).toEqual(['B:b1', 'A:a2']);
  });

  it('isolates a failing send from the ones it shared a request with', async () => {
    const { kafka } = fakeKafka((batch) => batch.some((t) => t.topic === 'bad'));
    const producer = createProducer({ kafka });
    const results = await Promise.allSettled([
      producer.publish([msg('x', 'ok')]),
      producer.publish([msg('y', 'bad')]),
      producer.publish([msg('z', 'ok')]),
    ]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect((results[1] as PromiseRejectedResult).reason.code).toBe('PUBLISH_FAILED');
  });

  it("send: an extra header naming the SDK's own in another letter case is dropped, not sent beside it", async () => {
    // Before: `X-Request-Id` went out beside `x-request-id`, and every consumer dead-lettered the
    // record as INVALID_KEY (the name present twice).
    const { kafka, requests } = fakeKafka();
    const producer = createProducer({ kafka });
    await producer.send(
      'payments',
      { amount: 1 },
      {
        idempotencyKey: 'k1',
        headers: { 'X-Request-Id': 'mine', 'X-Idempotency-Key': 'other', tenant: 't1' },
      },
    );
    const headers = requests[0]?.[0]?.messages[0]?.headers as Record<string, string>;
    const names = Object.keys(headers).map((n) => n.toLowerCase());
    expect(names.filter((n) => n === 'x-request-id' || n === 'x-idempotency-key')).toHaveLength(2);
    expect(headers).toMatchObject({ 'x-idempotency-key': 'k1', tenant: 't1' });
  });
});
