/**
 * `@exactly-once/kafka`: effectively-once Kafka consumers (kafkajs) on top of
 * `@exactly-once/core`, and an idempotent producer that sets the SDK's headers.
 */
export { createConsumer } from './consumer.js';
export type { KafkaConsumer, KafkaConsumerOptions } from './consumer.js';
export { createProducer } from './producer.js';
export type { ExactlyOnceProducer, ProducerOptions, SendOptions, SendResult } from './producer.js';
export { brokerIdOf, KafkaAttributes, KafkaHeaderNames } from './delivery.js';
export type { ConsumerStats } from './stats.js';
export type {
  ConsumerConfigLike,
  ConsumerLike,
  ConsumerRunConfigLike,
  EachBatchPayloadLike,
  KafkaBatchLike,
  KafkaHeaders,
  KafkaHeaderValue,
  KafkaLike,
  KafkaMessageLike,
  OffsetsByTopicPartitionLike,
  ProducerConfigLike,
  ProducerLike,
  ProducerRecordMessageLike,
} from './client.js';
