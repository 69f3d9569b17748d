/**
 * Appended to the Kafka README consumer: waits until the group fetched (joined, offsets resolved:
 * the README's consumer starts at the end of a new topic), sends one order through the package's
 * producer, waits until the consumer committed it, stops the consumer, counts the invoices topic
 * and deletes the run's topics.
 */
import { randomUUID } from 'node:crypto';
import { createProducer, type KafkaConsumer } from '@exactly-once/kafka';
import { Kafka, logLevel } from 'kafkajs';
import { finish, setting, waitUntil } from './run-once.js';

export async function runOnce(consumer: KafkaConsumer): Promise<never> {
  const brokers = setting('EO_KAFKA_BROKERS').split(',');
  const topic = setting('EO_INSTALL_TOPIC');
  const invoices = setting('EO_INSTALL_INVOICES');
  const client = consumer.consumer;
  const fetchEvent = client.events?.FETCH;
  if (!client.on || !fetchEvent) throw new Error('the consumer exposes no FETCH instrumentation event');
  await new Promise<void>((resolve) => client.on?.(fetchEvent, () => resolve()));

  const kafka = new Kafka({ brokers, logLevel: logLevel.NOTHING });
  const producer = createProducer({ kafka });
  const order = { orderId: randomUUID(), amount: 42 };
  const sent = await producer.send(topic, order, { key: order.orderId });
  await waitUntil(`the order acked (${JSON.stringify(consumer.stats)})`, () => consumer.stats.acked === 1);
  await consumer.stop();
  await producer.disconnect();

  const admin = kafka.admin();
  await admin.connect();
  const offsets = await admin.fetchTopicOffsets(invoices);
  const invoiceRecords = offsets.reduce((n, p) => n + Number(p.high) - Number(p.low), 0);
  const existing = new Set(await admin.listTopics());
  await admin.deleteTopics({ topics: [topic, `${topic}.dlq`, invoices].filter((t) => existing.has(t)) });
  await admin.disconnect();

  finish({
    sent: order,
    idempotencyKey: sent.idempotencyKey,
    invoiceRecords,
    acked: consumer.stats.acked,
    commits: consumer.stats.commits,
    byOutcome: consumer.stats.byOutcome,
  });
}
