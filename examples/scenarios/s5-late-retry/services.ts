/**
 * S5, A -> B -> C with a late retry: the services. A publishes an order with the client's request
 * id as its key; B (billing, RabbitMQ) charges it and publishes PaymentCaptured to Kafka; C
 * (notification, Kafka) sends one email. B and C keep their records in a tiered store: Redis for
 * a short while ("24 hours"), MongoDB for the full retention ("30 days").
 *
 * Time is scaled down so the run takes seconds: 2 s stand for 24 hours, 60 s for 30 days.
 */
import { createTieredStore, type ProcessedStore, type TieredStore } from '@exactly-once/core';
import { createConsumer as createKafkaConsumer, type KafkaConsumer } from '@exactly-once/kafka';
import type { ExactlyOnceProducer } from '@exactly-once/kafka';
import { createConsumer as createRabbitConsumer, type RabbitConsumer } from '@exactly-once/rabbitmq';
import { createMongoStore } from '@exactly-once/store-mongo';
import { createRedisStore } from '@exactly-once/store-redis';
import type { Redis } from 'ioredis';
import type { Kafka } from 'kafkajs';
import type { Db } from 'mongodb';

/** "24 hours": how long Redis (the hot tier) answers duplicates. */
export const HOT_RETENTION_MS = 2_000;
/** "30 days": how long MongoDB (the cold tier) answers duplicates. */
export const COLD_RETENTION_MS = 60_000;

/**
 * The processing options of B and C, on the same scale. With them a message can come back at most
 * 3 × (maxRunMs + leaseMs) + retries + redeliveryHorizonMs ≈ 50 s after it first arrived (3 attempts,
 * takeovers included): more than the hot tier keeps (2 s), less than the cold tier (60 s). The
 * consumer checks this at start.
 */
export const TIMING = {
  retentionMs: HOT_RETENTION_MS,
  leaseMs: 2_000,
  maxRunMs: 8_000,
  retry: { maxAttempts: 3, initialDelayMs: 100, maxDelayMs: 500 },
  maxTakeoverAttempts: 3,
  /** How late a copy may come back besides retries ("10 days": a DLQ replay, an offset reset). */
  redeliveryHorizonMs: 20_000,
} as const;

export interface Order {
  readonly orderId: string;
  readonly amount: number;
}
export interface PaymentCaptured {
  readonly orderId: string;
  readonly amount: number;
}

/** One effect, as the service's own database would record it: not deduplicated. */
export interface LedgerRow {
  readonly service: 'B' | 'C';
  readonly requestId: string;
  readonly orderId: string;
  /** The message's idempotency key. */
  readonly key: string;
}

/** Redis for 24 hours, MongoDB for 30 days. */
export function tieredStore(options: { redis: Redis; db: Db; name: string }): TieredStore {
  return createTieredStore({
    hot: createRedisStore({ client: options.redis, keyPrefix: options.name }),
    cold: createMongoStore({ db: options.db, collectionName: `${options.name}_records` }),
    hotRetentionMs: HOT_RETENTION_MS,
    coldRetentionMs: COLD_RETENTION_MS,
    coldLeaseMs: TIMING.leaseMs,
  });
}

/** B: charges the order (a ledger row) and publishes PaymentCaptured to Kafka. */
export function createBilling(options: {
  amqpUrl: string;
  queue: string;
  store: ProcessedStore;
  /** Where PaymentCaptured goes: a Kafka producer. */
  producer: ExactlyOnceProducer;
  paymentsTopic: string;
  ledger: LedgerRow[];
  /** Awaited before the charge: the scenario blocks one order here to make it stuck. */
  gate?: (order: Order, signal: AbortSignal) => Promise<void>;
  retentionCheck?: 'error' | 'off';
}): RabbitConsumer {
  return createRabbitConsumer<Order>({
    connection: options.amqpUrl,
    queue: options.queue,
    consumer: 'billing',
    store: options.store,
    publisher: options.producer,
    retryDelaysMs: [100, 500],
    ...TIMING,
    ...(options.retentionCheck ? { retentionCheck: options.retentionCheck } : {}),
    handler: async (order, ctx) => {
      await options.gate?.(order, ctx.signal);
      options.ledger.push({ service: 'B', requestId: ctx.requestId, orderId: order.orderId, key: ctx.key });
      // x-request-id travels with it: C sees the client's request id.
      ctx.publish(
        options.paymentsTopic,
        { orderId: order.orderId, amount: order.amount } satisfies PaymentCaptured,
        {
          routingKey: order.orderId,
        },
      );
      return { charged: order.amount };
    },
  });
}

/** C: sends one email per PaymentCaptured (a ledger row). */
export function createNotification(options: {
  kafka: Kafka;
  groupId: string;
  topic: string;
  deadLetterTopic: string;
  store: ProcessedStore;
  ledger: LedgerRow[];
}): KafkaConsumer {
  return createKafkaConsumer<PaymentCaptured>({
    kafka: options.kafka,
    groupId: options.groupId,
    topics: [options.topic],
    deadLetter: { topic: options.deadLetterTopic },
    consumer: 'notification',
    fromBeginning: true,
    store: options.store,
    ...TIMING,
    handler: async (payment, ctx) => {
      options.ledger.push({ service: 'C', requestId: ctx.requestId, orderId: payment.orderId, key: ctx.key });
      return { emailed: true };
    },
  });
}
