/**
 * `@exactly-once/kafka`: effectively-once Kafka consumers (kafkajs or
 * `@confluentinc/kafka-javascript`) on top of
 * `@exactly-once/core`, and an idempotent producer that sets the SDK's headers.
 */

export type {
  ConsumerConfigLike,
  ConsumerLike,
  ConsumerRunConfigLike,
  EachBatchPayloadLike,
  KafkaBatchLike,
  KafkaHeaders,
  KafkaHeaderValue,
  KafkaJSBlockConfigLike,
  KafkaLike,
  KafkaMessageLike,
  OffsetsByTopicPartitionLike,
  ProducerConfigLike,
  ProducerLike,
  ProducerRecordMessageLike,
} from './client.js';
export type { KafkaConsumer, KafkaConsumerOptions, StopOptions } from './consumer.js';
export { createConsumer } from './consumer.js';
export { brokerIdOf, KafkaAttributes, KafkaHeaderNames } from './delivery.js';
export type { ExactlyOnceProducer, ProducerOptions, SendOptions, SendResult } from './producer.js';
export { createProducer } from './producer.js';
export type { BaseConsumerStats, ConsumerStats } from './stats.js';
