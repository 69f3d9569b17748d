/**
 * Service C, notification: consumes PaymentCaptured from Kafka with the Redis processed-store and
 * sends the customer an email through an email API that honours `Idempotency-Key`.
 *
 * - The email uses `ctx.keyFor('email')` as its key, so a repeated run (a takeover after a crash,
 *   a retry after a lost answer) cannot send a second email.
 * - An itemized receipt is several megabytes: it goes to a blob store and only its pointer travels
 *   (in the email and in the stored result). The blob is written in a journaled step, so every
 *   attempt of the message uses the same pointer and the email body stays byte-identical, which
 *   the email API checks under the key.
 */
import { createFsBlobStore, type HandlerContext, PermanentError, withTimeout } from '@exactly-once/core';
import { createConsumer } from '@exactly-once/kafka';
import { createRedisStore } from '@exactly-once/store-redis';
import { Redis } from 'ioredis';
import { Kafka, logLevel } from 'kafkajs';
import { type PaymentCaptured, RECEIPT_BYTES, required, runNames, servers } from '../shared/config.js';
import { announceReady, createLogger, onShutdown, serveStats } from '../shared/runtime.js';
import { tracedFetch } from '../shared/http.js';
import { startTracing } from '../shared/tracing.js';

const run = required('DEMO_RUN');
const instance = process.env.INSTANCE ?? 'notification-1';
const sinkUrl = required('EMAIL_SINK_URL');
const blobDir = required('BLOB_DIR');
const tracing = startTracing('notification', instance, run);
const logger = createLogger(instance);
const names = runNames(run);

/** A ~4 MiB itemized receipt, produced in 64 KiB chunks so it is never held in memory whole. */
async function* itemizedReceipt(p: PaymentCaptured): AsyncGenerator<Uint8Array> {
  const encoder = new TextEncoder();
  let written = 0;
  let line = 0;
  while (written < RECEIPT_BYTES) {
    let chunk =
      line === 0 ? `Receipt ${p.orderId} charge ${p.chargeId} ${p.amountCents} ${p.currency}\n` : '';
    while (chunk.length < 64 * 1024 && written + chunk.length < RECEIPT_BYTES) {
      line++;
      chunk += `${String(line).padStart(8, '0')}  ${p.orderId}  SKU-${(line * 7919) % 100_000}  1 x ${line % 997} c\n`;
    }
    written += chunk.length;
    yield encoder.encode(chunk);
  }
}

async function sendEmail(p: PaymentCaptured, receipt: unknown, ctx: HandlerContext): Promise<{ id: string }> {
  const res = await tracedFetch(`${sinkUrl}/v1/emails`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      'idempotency-key': ctx.keyFor('email'),
      'user-agent': instance,
    },
    body: JSON.stringify({
      to: p.email,
      orderId: p.orderId,
      requestId: ctx.requestId,
      chargeId: p.chargeId,
      ...(receipt ? { receipt } : {}),
    }),
    signal: withTimeout(ctx.signal, 2_000),
  });
  const body = (await res.json()) as { id: string; error?: string };
  if (res.ok) return body;
  const message = `email API answered ${res.status}: ${body.error ?? ''}`;
  if (res.status >= 500) throw new Error(message);
  throw new PermanentError(message);
}

const redis = new Redis(servers.redisUrl, { maxRetriesPerRequest: 2 });
const store = createRedisStore({ client: redis, keyPrefix: names.redisPrefix, logger });
await store.checkServer();
const blobs = createFsBlobStore({ directory: blobDir });
const kafka = new Kafka({
  clientId: instance,
  brokers: [...servers.kafkaBrokers],
  logLevel: logLevel.WARN,
});

const consumer = createConsumer<PaymentCaptured, { emailId: string; receipt?: unknown }>({
  kafka,
  groupId: names.notificationGroup,
  topics: [names.paymentsTopic],
  deadLetter: { topic: names.paymentsDeadLetters },
  consumer: 'notification',
  store,
  fromBeginning: true,
  // A SIGKILLed member leaves the group after 6 s instead of kafkajs' 30 s.
  consumerConfig: { sessionTimeout: 6_000, rebalanceTimeout: 10_000, heartbeatInterval: 500 },
  leaseMs: 5_000,
  retry: { maxAttempts: 6, initialDelayMs: 300, maxDelayMs: 3_000 },
  logger,
  validate: (p) => {
    if (p?.type !== 'PaymentCaptured' || typeof p.chargeId !== 'string')
      throw new Error('not a PaymentCaptured');
  },
  handler: async (payment, ctx) => {
    // Not ctx.storeBlob: its blobs belong to the run and are deleted when the run fails, but this
    // one is referenced by the email (an effect outside the record) and must outlive a failed try.
    const receipt =
      payment.receipt === 'itemized'
        ? await ctx.step('receipt', () => blobs.put(itemizedReceipt(payment)))
        : undefined;
    const email = await sendEmail(payment, receipt, ctx);
    return receipt ? { emailId: email.id, receipt } : { emailId: email.id };
  },
});
await consumer.start();
const stats = await serveStats(instance, tracing, () => ({ consumer: consumer.stats }));
announceReady({ instance, statsPort: stats.port });
logger.info(`consuming ${names.paymentsTopic}`);

onShutdown(logger, async () => {
  await consumer.stop();
  // A run stop() gave up on still needs the store to record its completion.
  await consumer.idle(30_000);
  await store.close();
  await stats.close();
  await tracing.shutdown();
  redis.disconnect();
});
