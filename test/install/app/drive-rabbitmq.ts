/**
 * Appended to the RabbitMQ README consumer: sends one order through the package's publisher,
 * waits until the consumer acked it, stops the consumer and deletes the run's queues.
 */
import { randomUUID } from 'node:crypto';
import { createPublisher, DEFAULT_RETRY_DELAYS_MS, type RabbitConsumer } from '@exactly-once/rabbitmq';
import amqp from 'amqplib';
import { charges } from './payments.js';
import { finish, setting, waitUntil } from './run-once.js';

export async function runOnce(consumer: RabbitConsumer): Promise<never> {
  const url = setting('EO_AMQP_URL');
  const queue = setting('EO_INSTALL_QUEUE');
  const publisher = createPublisher({ connection: url });
  const order = { orderId: randomUUID(), amount: 42 };
  const sent = await publisher.send(queue, order);
  await waitUntil(`the order acked (${JSON.stringify(consumer.stats)})`, () => consumer.stats.acked === 1);
  await consumer.stop();
  await publisher.close();

  const connection = await amqp.connect(url);
  const channel = await connection.createChannel();
  for (const q of [queue, `${queue}.dlq`, ...DEFAULT_RETRY_DELAYS_MS.map((d) => `${queue}.retry.${d}`)]) {
    await channel.deleteQueue(q);
  }
  await connection.close();

  finish({
    sent: order,
    idempotencyKey: sent.idempotencyKey,
    charges,
    acked: consumer.stats.acked,
    byOutcome: consumer.stats.byOutcome,
  });
}
