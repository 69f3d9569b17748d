/**
 * S5 end to end on the local servers: orders through A -> B -> C, a client retry at once (answered
 * by Redis), a retry "25 hours" later after Redis forgot the key (answered by MongoDB), the same
 * late retry against a Redis-only B (processed twice: what the cold tier prevents), the retention
 * check with and without the cold tier, and an order stuck in B raising the stuck alert.
 */
import { randomBytes } from 'node:crypto';
import {
  ConfigError,
  findStuck,
  type InProgressEntry,
  recordKeyFor,
  type TieredStore,
  watchStuck,
} from '@exactly-once/core';
import { createProducer, type KafkaConsumer } from '@exactly-once/kafka';
import { createPublisher, type RabbitConsumer } from '@exactly-once/rabbitmq';
import { createRedisStore } from '@exactly-once/store-redis';
import amqp from 'amqplib';
import { Redis } from 'ioredis';
import { Kafka, logLevel } from 'kafkajs';
import { MongoClient } from 'mongodb';
import {
  COLD_RETENTION_MS,
  createBilling,
  createNotification,
  HOT_RETENTION_MS,
  type LedgerRow,
  type Order,
  tieredStore,
} from './services.js';

export const servers = {
  redisUrl: process.env.EO_REDIS_URL ?? 'redis://127.0.0.1:6379',
  amqpUrl: process.env.EO_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672',
  kafkaBrokers: (process.env.EO_KAFKA_BROKERS ?? '127.0.0.1:9092').split(','),
  mongoUrl: process.env.EO_MONGO_URL ?? 'mongodb://127.0.0.1:27017',
};

/** The stuck alert's threshold, standing for the scenario's "a request taking over 5 minutes". */
export const STUCK_AFTER_MS = 1_000;

export interface LateRetryReport {
  /** What `createConsumer` said about B's retention: with Redis alone, and with the tiered store. */
  readonly retentionCheck: { readonly redisOnly: string; readonly tiered: string };
  readonly orders: readonly string[];
  /** Effects counted in each service's own ledger (not deduplicated). */
  readonly billing: readonly LedgerRow[];
  readonly notification: readonly LedgerRow[];
  /** The client's immediate retry of the first order, answered from Redis. */
  readonly immediateRetry: { readonly billingDuplicates: number };
  readonly lateRetry: {
    readonly requestId: string;
    /** Redis no longer had the key when the retry came (B's record, then C's). */
    readonly billingHotForgot: boolean;
    readonly notificationHotForgot: boolean;
    /** ms between the first delivery and the late retry. */
    readonly afterMs: number;
    /** Answered as duplicates (consumer stats), by B and by C. */
    readonly billingDuplicates: number;
    readonly notificationDuplicates: number;
  };
  /** The same late retry against a B whose records live in Redis only: its effects. */
  readonly redisOnly: { readonly effects: number };
  readonly stuck: {
    readonly requestId: string;
    readonly alert: readonly InProgressEntry[];
    /** ms from sending the order to the alert naming it (the threshold is STUCK_AFTER_MS). */
    readonly alertAfterMs: number;
    /** Stuck records once the order was released and completed. */
    readonly afterRelease: number;
    readonly effects: number;
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function waitFor<T>(what: string, check: () => T | Promise<T>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

export async function runLateRetry(
  options: { orders?: number; log?: (line: string) => void } = {},
): Promise<LateRetryReport> {
  const log = options.log ?? (() => {});
  const run = randomBytes(5).toString('hex');
  const names = {
    queue: `s5.${run}.billing`,
    redisOnlyQueue: `s5.${run}.billing-redis-only`,
    payments: `s5.${run}.payments`,
    paymentsDlq: `s5.${run}.payments.dlq`,
    redisOnlyPayments: `s5.${run}.payments-redis-only`,
    group: `s5.${run}.notification`,
  };
  const redis = new Redis(servers.redisUrl, { maxRetriesPerRequest: 3 });
  const mongo = await MongoClient.connect(servers.mongoUrl);
  const db = mongo.db(`s5_${run}`);
  const kafka = new Kafka({ clientId: 's5', brokers: servers.kafkaBrokers, logLevel: logLevel.NOTHING });
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({
    waitForLeaders: true,
    topics: [names.payments, names.paymentsDlq, names.redisOnlyPayments].map((topic) => ({ topic })),
  });
  const producer = createProducer({ kafka });
  const publisher = createPublisher({ connection: servers.amqpUrl }); // A
  const billingLedger: LedgerRow[] = [];
  const notificationLedger: LedgerRow[] = [];
  const redisOnlyLedger: LedgerRow[] = [];
  const stores: TieredStore[] = [];
  const consumers: (RabbitConsumer | KafkaConsumer)[] = [];
  // The stuck order's handler waits here (every attempt of it) until the scenario releases it.
  let release: () => void = () => {};
  const released = new Promise<void>((resolve) => {
    release = resolve;
  });
  let blockedRuns = 0;

  try {
    // The retention check: B with Redis alone cannot keep records as long as a message can come back.
    let redisOnly = 'accepted';
    try {
      createBilling({
        amqpUrl: servers.amqpUrl,
        queue: names.queue,
        store: createRedisStore({ client: redis, keyPrefix: `s5-${run}-check` }),
        producer,
        paymentsTopic: names.payments,
        ledger: [],
      });
    } catch (error) {
      redisOnly = error instanceof ConfigError ? `ConfigError: ${error.message}` : String(error);
    }
    log(`retention check, B on Redis alone (${HOT_RETENTION_MS} ms): ${redisOnly}`);

    const billingStore = tieredStore({ redis, db, name: `s5-${run}-billing` });
    const notificationStore = tieredStore({ redis, db, name: `s5-${run}-notification` });
    stores.push(billingStore, notificationStore);
    let blocked: string | undefined;
    const billing = createBilling({
      amqpUrl: servers.amqpUrl,
      queue: names.queue,
      store: billingStore,
      producer,
      paymentsTopic: names.payments,
      ledger: billingLedger,
      gate: (order, signal) => {
        if (order.orderId !== blocked) return Promise.resolve();
        blockedRuns++;
        return new Promise<void>((resolve, reject) => {
          void released.then(resolve);
          signal.addEventListener('abort', () => reject(signal.reason), { once: true });
        });
      },
    });
    const tiered = `accepted: the cold tier keeps records ${COLD_RETENTION_MS} ms`;
    log(`retention check, B on the tiered store: ${tiered}`);
    const notification = createNotification({
      kafka,
      groupId: names.group,
      topic: names.payments,
      deadLetterTopic: names.paymentsDlq,
      store: notificationStore,
      ledger: notificationLedger,
    });
    consumers.push(billing, notification);
    await Promise.all([billing.start(), notification.start()]);

    // A: each order's key is the client's request id.
    const orders = Array.from({ length: options.orders ?? 3 }, (_, i) => `order-${i + 1}`);
    const requestIdOf = (orderId: string) => `req-${run}-${orderId}`;
    const place = (queue: string, order: Order) =>
      publisher.send(queue, order, {
        requestId: requestIdOf(order.orderId),
        idempotencyKey: requestIdOf(order.orderId),
      });
    const firstSent = Date.now();
    for (const orderId of orders) await place(names.queue, { orderId, amount: 100 });
    await place(names.queue, { orderId: 'order-1', amount: 100 }); // the client retries at once
    await waitFor('every order emailed', () => notificationLedger.length >= orders.length);
    await waitFor('the immediate retry answered', () => billing.stats.acked >= orders.length + 1);
    const immediateDuplicates = billing.stats.byOutcome.duplicate ?? 0;
    log(`${orders.length} orders charged and emailed; the immediate retry of order-1: duplicate (Redis)`);

    // "25 hours later": wait until Redis has forgotten order-1 in B and C, then it comes back.
    const late = requestIdOf('order-1');
    const emailRow = notificationLedger.find((r) => r.orderId === 'order-1') as LedgerRow;
    const billingKey = recordKeyFor({ consumer: 'billing', key: late });
    const notificationKey = recordKeyFor({ consumer: 'notification', key: emailRow.key });
    await waitFor(
      'Redis to forget order-1',
      async () =>
        (await billingStore.hot.get(billingKey)) === undefined &&
        (await notificationStore.hot.get(notificationKey)) === undefined,
    );
    const billingHotForgot = (await billingStore.hot.get(billingKey)) === undefined;
    const notificationHotForgot = (await notificationStore.hot.get(notificationKey)) === undefined;
    const afterMs = Date.now() - firstSent;
    const billingDuplicatesBefore = billing.stats.byOutcome.duplicate ?? 0;
    const notificationDuplicatesBefore = notification.stats.byOutcome.duplicate ?? 0;
    // The client retries the order; and PaymentCaptured comes back to C (an offset reset, a replay).
    await place(names.queue, { orderId: 'order-1', amount: 100 });
    await producer.send(
      names.payments,
      { orderId: 'order-1', amount: 100 },
      { key: 'order-1', idempotencyKey: emailRow.key, requestId: emailRow.requestId },
    );
    await waitFor(
      'the late copies answered',
      () =>
        (billing.stats.byOutcome.duplicate ?? 0) > billingDuplicatesBefore &&
        (notification.stats.byOutcome.duplicate ?? 0) > notificationDuplicatesBefore,
    );
    const lateRetry = {
      requestId: late,
      billingHotForgot,
      notificationHotForgot,
      afterMs,
      billingDuplicates: (billing.stats.byOutcome.duplicate ?? 0) - billingDuplicatesBefore,
      notificationDuplicates: (notification.stats.byOutcome.duplicate ?? 0) - notificationDuplicatesBefore,
    };
    log(
      `late retry of order-1 after ${afterMs} ms (Redis had forgotten it: B ${billingHotForgot}, C ${notificationHotForgot}): ` +
        `duplicate at B ${lateRetry.billingDuplicates}, at C ${lateRetry.notificationDuplicates} (MongoDB answered)`,
    );

    // The same late retry against a B whose records live in Redis only (its retention check off).
    const redisOnlyBilling = createBilling({
      amqpUrl: servers.amqpUrl,
      queue: names.redisOnlyQueue,
      store: createRedisStore({ client: redis, keyPrefix: `s5-${run}-redis-only` }),
      producer,
      paymentsTopic: names.redisOnlyPayments,
      ledger: redisOnlyLedger,
      retentionCheck: 'off',
    });
    consumers.push(redisOnlyBilling);
    await redisOnlyBilling.start();
    await place(names.redisOnlyQueue, { orderId: 'order-1', amount: 100 });
    await waitFor('the Redis-only B to charge', () => redisOnlyLedger.length >= 1);
    await sleep(HOT_RETENTION_MS + 500);
    await place(names.redisOnlyQueue, { orderId: 'order-1', amount: 100 });
    await waitFor('the Redis-only B to settle the late retry', () => redisOnlyBilling.stats.acked >= 2);
    log(`the same late retry against B on Redis alone: charged ${redisOnlyLedger.length} times`);

    // An order stuck in B: its handler blocks. The stuck watch raises the alert past its threshold.
    // The query SCANs Redis (≈ 0.4 s on a server holding 300k keys): poll no faster than it answers.
    const watch = watchStuck(billingStore, {
      consumer: 'billing',
      olderThanMs: STUCK_AFTER_MS,
      intervalMs: 1_000,
    });
    blocked = 'order-stuck';
    const stuckId = requestIdOf('order-stuck');
    const stuckSent = Date.now();
    await place(names.queue, { orderId: 'order-stuck', amount: 100 });
    // The alert rule: exactly_once_in_progress_stuck > 0 (here: the watch's last count).
    await waitFor('the stuck alert', () => (watch.count ?? 0) > 0);
    const alertAfterMs = Date.now() - stuckSent;
    // Who is stuck: the same query. Asked again until it answers, since an attempt given up at
    // maxRunMs starts again and is young for a moment (the query SCANs, and may take that long).
    let alert: InProgressEntry[] = [];
    await waitFor('the stuck order in the list', async () => {
      alert = await findStuck(billingStore, { consumer: 'billing', olderThanMs: STUCK_AFTER_MS });
      return alert.length > 0;
    });
    log(
      `stuck alert after ${alertAfterMs} ms (threshold ${STUCK_AFTER_MS} ms): ${alert.map((e) => e.key).join(', ')}`,
    );
    await waitFor('the stuck order to be blocked', () => blockedRuns > 0);
    release();
    await waitFor('the stuck order to complete', () =>
      billingLedger.some((r) => r.orderId === 'order-stuck'),
    );
    await waitFor('the gauge back to 0', async () => (await watch.refresh()) === 0);
    watch.stop();
    log('released: it completed and the gauge is back to 0');

    return {
      retentionCheck: { redisOnly, tiered },
      orders,
      billing: billingLedger.filter((r) => r.orderId !== 'order-stuck'),
      notification: notificationLedger.filter((r) => r.orderId !== 'order-stuck'),
      immediateRetry: { billingDuplicates: immediateDuplicates },
      lateRetry,
      redisOnly: { effects: redisOnlyLedger.length },
      stuck: {
        requestId: stuckId,
        alert,
        alertAfterMs,
        afterRelease: (await findStuck(billingStore, { consumer: 'billing', olderThanMs: 0 })).length,
        effects: billingLedger.filter((r) => r.orderId === 'order-stuck').length,
      },
    };
  } finally {
    release();
    for (const c of consumers) await c.stop().catch(() => {});
    await producer.disconnect().catch(() => {});
    await publisher.close().catch(() => {});
    await admin
      .deleteTopics({ topics: [names.payments, names.paymentsDlq, names.redisOnlyPayments] })
      .catch(() => {});
    await admin.disconnect();
    const conn = await amqp.connect(servers.amqpUrl);
    const ch = await conn.createChannel();
    for (const q of [names.queue, names.redisOnlyQueue])
      for (const name of [q, `${q}.dlq`, `${q}.retry.100`, `${q}.retry.500`]) await ch.deleteQueue(name);
    await conn.close();
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `s5-${run}-*`, 'COUNT', 500);
      cursor = next;
      if (keys.length > 0) await redis.unlink(...keys);
    } while (cursor !== '0');
    await redis.quit();
    await db.dropDatabase().catch(() => {});
    await mongo.close();
  }
}
