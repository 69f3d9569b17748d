import { Kafka, logLevel } from 'kafkajs';
import { describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';

describe('smoke: Kafka (kafkajs against the KRaft broker)', () => {
  it('creates a topic, produces idempotently with headers, consumes in a group and commits', async () => {
    const kafka = new Kafka({ clientId: 'smoke', brokers: env.kafkaBrokers, logLevel: logLevel.NOTHING });
    const admin = kafka.admin();
    const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
    const topic = uniqueName('smoke');
    const groupId = uniqueName('smoke-group');
    const consumer = kafka.consumer({ groupId, sessionTimeout: 10_000, heartbeatInterval: 1_000 });
    await admin.connect();
    try {
      expect(await admin.createTopics({ topics: [{ topic, numPartitions: 3 }], waitForLeaders: true })).toBe(
        true,
      );
      await producer.connect();
      await producer.send({
        topic,
        acks: -1,
        messages: [0, 1, 2, 3, 4, 5].map((i) => ({
          key: `k${i}`,
          value: JSON.stringify({ i }),
          headers: { 'x-request-id': `r${i}` },
        })),
      });
      await consumer.connect();
      await consumer.subscribe({ topic, fromBeginning: true });
      const seen: { i: number; header: unknown }[] = [];
      await consumer.run({
        autoCommit: false,
        eachMessage: async ({ partition, message }) => {
          seen.push({ i: JSON.parse(String(message.value)).i, header: message.headers?.['x-request-id'] });
          await consumer.commitOffsets([
            { topic, partition, offset: (BigInt(message.offset) + 1n).toString() },
          ]);
        },
      });
      await waitUntil(() => seen.length === 6, { timeoutMs: 60_000, message: 'six messages' });
      expect(seen.every((s) => Buffer.isBuffer(s.header))).toBe(true);
      expect(seen.map((s) => s.i).sort()).toEqual([0, 1, 2, 3, 4, 5]);
      const committed = await waitUntil(
        async () => {
          const [offsets] = await admin.fetchOffsets({ groupId, topics: [topic] });
          const total = (offsets?.partitions ?? []).reduce((n, p) => n + Math.max(0, Number(p.offset)), 0);
          return total === 6 ? total : 0;
        },
        { message: 'committed offsets' },
      );
      expect(committed).toBe(6);
    } finally {
      await consumer.disconnect();
      await producer.disconnect();
      await admin.deleteTopics({ topics: [topic] }).catch(() => {});
      await admin.disconnect();
    }
  });
});
