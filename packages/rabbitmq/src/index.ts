/**
 * `@exactly-once/rabbitmq`: effectively-once RabbitMQ consumers (ack last, retries through delay
 * queues, dead letters with reasons) and a confirmed publisher, on amqplib.
 */

export type { AmqpConnectionManager, ConnectionInput } from './connection.js';
export type { RabbitConsumer, RabbitConsumerOptions, StopOptions } from './consumer.js';
export { createConsumer, DEFAULT_PREFETCH } from './consumer.js';
export type { PublisherOptions, RabbitPublisher, SendOptions } from './publisher.js';
export { createPublisher } from './publisher.js';
export type { BaseConsumerStats, ConsumerStats } from './stats.js';
export type { Topology, TopologyOptions } from './topology.js';
export {
  checkTopology,
  DEFAULT_RETRY_DELAYS_MS,
  declareTopology,
  retryQueueFor,
  topologyFor,
} from './topology.js';
