/**
 * One run of S6: a client pays through RabbitMQ to the charge consumer; its first attempt "times
 * out" (the message was delivered, the client just did not hear back) and the clock moves across
 * a minute boundary before the retry. Returns what the card was charged and what was
 * dead-lettered.
 */
import { randomUUID } from 'node:crypto';
import type { Logger, PayloadGuardOptions } from '@exactly-once/core';
import { createPublisher } from '@exactly-once/rabbitmq';
import { createRedisStore } from '@exactly-once/store-redis';
import amqp from 'amqplib';
import type { Redis } from 'ioredis';
import { createPaymentClient, type KeyScheme, manualClock } from './client.js';
import type { ChargeRequest } from './keys.js';
import { type CardLedger, type Charge, createChargeConsumer } from './service.js';

/** 2:00:59.500 UTC: half a second before a minute boundary. */
export const JUST_BEFORE_A_MINUTE = Date.UTC(2025, 0, 1, 2, 0, 59, 500);

export interface CaseOptions {
  amqpUrl: string;
  redis: Redis;
  scheme: KeyScheme;
  payloadGuard?: PayloadGuardOptions;
  requests: ChargeRequest[];
  /** Lose the client's first attempt of each request (default true). */
  loseFirstAttempt?: boolean;
  /** How far the clock moves between attempts and between requests (default 1 s). */
  stepMs?: number;
  logger?: Logger;
}

export interface CaseResult {
  /** Every key the client sent, per request. */
  keys: string[][];
  charges: Charge[];
  deadLetters: { key: string; code: string; message: string }[];
}

export async function runCase(options: CaseOptions): Promise<CaseResult> {
  const run = randomUUID().slice(0, 8);
  const queue = `scenario.s6.${run}`;
  const keyPrefix = `scenario-s6-${run}`;
  const conn = await amqp.connect(options.amqpUrl);
  const ch = await conn.createChannel();
  await ch.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
  const card: CardLedger = { charges: [] };
  const consumer = createChargeConsumer({
    connection: options.amqpUrl,
    queue,
    store: createRedisStore({ client: options.redis, keyPrefix }),
    card,
    ...(options.payloadGuard ? { payloadGuard: options.payloadGuard } : {}),
    ...(options.logger ? { logger: options.logger } : {}),
  });
  const publisher = createPublisher({ connection: options.amqpUrl });
  const clock = manualClock(JUST_BEFORE_A_MINUTE);
  const stepMs = options.stepMs ?? 1_000;
  let sent = 0;
  let attempt = 0;
  const client = createPaymentClient({
    scheme: options.scheme,
    now: clock.now,
    send: async (key, request) => {
      await publisher.send(queue, request, { idempotencyKey: key });
      sent++;
      const lost = (options.loseFirstAttempt ?? true) && attempt++ % 2 === 0;
      clock.advance(stepMs);
      return lost ? 'timeout' : 'ok';
    },
  });
  try {
    await consumer.start();
    const keys: string[][] = [];
    for (const request of options.requests) {
      attempt = 0;
      keys.push(await client.pay(request));
    }
    const deadline = Date.now() + 30_000;
    while (consumer.stats.acked + consumer.stats.deadLettered < sent) {
      if (Date.now() > deadline)
        throw new Error(`${sent} messages not settled: ${JSON.stringify(consumer.stats)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const deadLetters: CaseResult['deadLetters'] = [];
    for (;;) {
      const m = await ch.get(`${queue}.dlq`, { noAck: true });
      if (!m) break;
      const h = m.properties.headers ?? {};
      deadLetters.push({
        key: String(h['x-idempotency-key']),
        code: String(h['x-eo-error-code']),
        message: String(h['x-eo-error-message']),
      });
    }
    return { keys, charges: card.charges, deadLetters };
  } finally {
    await consumer.stop();
    await publisher.close();
    for (const q of [queue, `${queue}.dlq`, `${queue}.retry.200`]) await ch.deleteQueue(q).catch(() => {});
    await conn.close();
    const stream = options.redis.scanStream({ match: `${keyPrefix}:*`, count: 1000 }) as AsyncIterable<
      string[]
    >;
    for await (const k of stream) if (k.length > 0) await options.redis.unlink(...k);
  }
}
