/** The relay process: reads pending order documents and publishes their events to Kafka. */
import {
  createOutboxRelay,
  type Logger,
  type OutboxRelay,
  type OutboxRelayOptions,
} from '@exactly-once/core';
import { createProducer, type ExactlyOnceProducer } from '@exactly-once/kafka';
import { createMongoOutboxSource } from '@exactly-once/store-mongo';
import type { Kafka } from 'kafkajs';
import type { Collection, Document } from 'mongodb';

export interface OrderRelay {
  readonly relay: OutboxRelay;
  readonly producer: ExactlyOnceProducer;
  stop(): Promise<void>;
}

export async function startOrderRelay(options: {
  orders: Collection<Document>;
  kafka: Kafka;
  window?: OutboxRelayOptions['window'];
  lagAlert?: OutboxRelayOptions['lagAlert'];
  logger?: Logger;
}): Promise<OrderRelay> {
  const source = createMongoOutboxSource({ collection: options.orders });
  await source.ensureIndexes();
  // Short produce timeouts and few client retries: while Kafka is down the relay's own backoff
  // decides when to try again, and a round fails fast instead of hanging for minutes.
  const producer = createProducer({
    kafka: options.kafka,
    timeoutMs: 10_000,
    producerConfig: { retry: { retries: 2, initialRetryTime: 200, maxRetryTime: 2_000 } },
  });
  const relay = createOutboxRelay({
    source,
    publisher: producer,
    window: options.window ?? { initial: 256, min: 16, max: 2_048 },
    retry: { initialDelayMs: 250, maxDelayMs: 5_000 },
    ...(options.lagAlert ? { lagAlert: options.lagAlert } : {}),
    ...(options.logger ? { logger: options.logger } : {}),
  });
  relay.start();
  return {
    relay,
    producer,
    async stop() {
      await relay.stop();
      await producer.disconnect();
    },
  };
}
