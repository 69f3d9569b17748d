/**
 * Service B, billing: consumes OrderCreated from RabbitMQ with the MongoDB (FerretDB)
 * processed-store, charges the payment provider, and publishes PaymentCaptured to Kafka.
 *
 * - The charge uses `ctx.keyFor('charge')` as the provider's Idempotency-Key: the same on every
 *   attempt of this message, so a run repeated after a crash or a lost response gets the first
 *   charge back instead of making a second one.
 * - The charge is a journaled `ctx.step` with its own quick retries: once it succeeded, a later
 *   attempt (a retry after a failure further on, or a takeover) reads the journaled charge
 *   instead of calling the provider again.
 * - PaymentCaptured goes through `ctx.publish`, the outbox: stored with the completion record and
 *   produced to Kafka after it, re-sent by a redelivery until Kafka acknowledged it.
 */
import { type HandlerContext, PermanentError, withTimeout } from '@exactly-once/core';
import { createProducer } from '@exactly-once/kafka';
import { createConsumer } from '@exactly-once/rabbitmq';
import { createMongoStore } from '@exactly-once/store-mongo';
import { Kafka, logLevel } from 'kafkajs';
import { MongoClient } from 'mongodb';
import {
  BILLING_RETRY_DELAYS_MS,
  type OrderCreated,
  type PaymentCaptured,
  required,
  runNames,
  servers,
} from '../shared/config.js';
import { announceReady, createLogger, onShutdown, serveStats } from '../shared/runtime.js';
import { tracedFetch } from '../shared/http.js';
import { startTracing } from '../shared/tracing.js';

const run = required('DEMO_RUN');
const instance = process.env.INSTANCE ?? 'billing-1';
const providerUrl = required('PROVIDER_URL');
const tracing = startTracing('billing', instance, run);
const logger = createLogger(instance);
const names = runNames(run);

/** A timeout well under the lease, so a stalled provider costs a retry, not the lease. */
const PROVIDER_TIMEOUT_MS = 2_000;

interface ChargeResult {
  id: string;
  status: string;
  amountCents: number;
}

/** Retryable unless the provider said the request itself is wrong (4xx other than 409). */
async function charge(order: OrderCreated, ctx: HandlerContext, signal: AbortSignal): Promise<ChargeResult> {
  const res = await tracedFetch(`${providerUrl}/v1/charges`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      'idempotency-key': ctx.keyFor('charge'),
      'user-agent': instance,
    },
    body: JSON.stringify({
      amountCents: order.amountCents,
      currency: order.currency,
      customer: order.customerId,
      metadata: { orderId: order.orderId, requestId: ctx.requestId },
    }),
    signal: withTimeout(signal, PROVIDER_TIMEOUT_MS),
  });
  const body = (await res.json()) as ChargeResult & { error?: string };
  if (res.ok) return body;
  const message = `provider answered ${res.status}: ${body.error ?? ''}`;
  if (res.status === 409 || res.status >= 500) throw new Error(message);
  throw new PermanentError(message);
}

const mongo = new MongoClient(servers.mongoUrl, { serverSelectionTimeoutMS: 5_000 });
await mongo.connect();
const store = createMongoStore({ db: mongo.db(names.mongoDb) });
await store.ensureIndexes();
// Expired records are deleted by the sweeper (never by a TTL index: see the store's README).
store.startSweeper(60_000);

const kafka = new Kafka({
  clientId: instance,
  brokers: [...servers.kafkaBrokers],
  logLevel: logLevel.WARN,
});
const producer = createProducer({ kafka });

const consumer = createConsumer<OrderCreated, { chargeId: string }>({
  connection: servers.amqpUrl,
  queue: names.billingQueue,
  consumer: 'billing',
  store,
  publisher: producer,
  prefetch: 4,
  // Short leases: a SIGKILLed worker's message is taken over within seconds. Only with a store
  // that answers in milliseconds: a heartbeat answered later than leaseMs * 2/3 lets the lease
  // lapse, and the run's steps refuse to start (LeaseLostError); a slow server wants the default.
  leaseMs: 5_000,
  retry: { maxAttempts: 6, initialDelayMs: 500, maxDelayMs: 5_000 },
  retryDelaysMs: BILLING_RETRY_DELAYS_MS,
  logger,
  validate: (o) => {
    if (o?.type !== 'OrderCreated' || typeof o.orderId !== 'string' || !(o.amountCents > 0)) {
      throw new Error('not an OrderCreated');
    }
  },
  handler: async (order, ctx) => {
    const result = await ctx.step('charge', (signal) => charge(order, ctx, signal), {
      retry: { maxAttempts: 3, initialDelayMs: 200, maxDelayMs: 1_000 },
    });
    const event: PaymentCaptured = {
      type: 'PaymentCaptured',
      orderId: order.orderId,
      chargeId: result.id,
      email: order.email,
      amountCents: order.amountCents,
      currency: order.currency,
      receipt: order.receipt,
    };
    // Kafka key = order id: every event of an order lands on one partition, in order.
    ctx.publish(names.paymentsTopic, event, { name: 'payment-captured', routingKey: order.orderId });
    return { chargeId: result.id };
  },
});
await consumer.start();
const stats = await serveStats(instance, tracing, () => ({ consumer: consumer.stats }));
announceReady({ instance, statsPort: stats.port });
logger.info(`consuming ${names.billingQueue}`);

onShutdown(logger, async () => {
  await consumer.stop({ timeoutMs: 5_000 });
  // A run stop() gave up on still needs the store to record its completion.
  await consumer.idle(30_000);
  await producer.disconnect();
  await store.close();
  await mongo.close();
  await stats.close();
  await tracing.shutdown();
});
