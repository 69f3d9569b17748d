/**
 * `@exactly-once/rabbitmq`: effectively-once RabbitMQ consumers (ack last, retries through delay
 * queues, dead letters with reasons) and a confirmed publisher, on amqplib.
 */
export { createConsumer } from './consumer.js';
export type { ConsumerStats, RabbitConsumer, RabbitConsumerOptions } from './consumer.js';
export { createPublisher } from './publisher.js';
export type { PublisherOptions, RabbitPublisher, SendOptions } from './publisher.js';
export {
  checkTopology,
  DEFAULT_RETRY_DELAYS_MS,
  declareTopology,
  retryQueueFor,
  topologyFor,
} from './topology.js';
export type { Topology, TopologyOptions } from './topology.js';
export type { AmqpConnectionManager, ConnectionInput } from './connection.js';
