// Compile-time check (npm run typecheck): kafkajs' client fits the adapter's structural types.
import type { Kafka } from 'kafkajs';
import type { KafkaLike } from '@exactly-once/kafka';

export const fits = (kafka: Kafka): KafkaLike => kafka;
