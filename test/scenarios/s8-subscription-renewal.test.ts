/**
 * S8, subscription renewal (Payment -> Email -> Status with per-step policies): one customer's
 * email always fails, one subscription's status DB fails 12 times then recovers, and a worker
 * process is SIGKILLed between a renewal's payment and its email. Charges, receipts and status
 * writes are counted in the fakes' own Redis state, never deduplicated by the SDK.
 */
import { recordKeyFor, type StepEvent } from '@exactly-once/core';
import { createPublisher, type RabbitConsumer } from '@exactly-once/rabbitmq';
import { createRedisStore } from '@exactly-once/store-redis';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import {
  type BillingCharge,
  createBilling,
  createMailer,
  createStatusDb,
} from '../../examples/scenarios/s8-subscription-renewal/fakes.js';
import {
  CONSUMER,
  createRenewalConsumer,
  type Renewal,
  type RenewalResult,
} from '../../examples/scenarios/s8-subscription-renewal/service.js';
import {
  startWorker,
  type WorkerProcess,
} from '../../examples/scenarios/s8-subscription-renewal/spawn-worker.js';
import { rawChannel } from '../rabbitmq/helpers.js';
import { env, uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';
import { dropPrefix, newRedis } from './support-payments-redis.js';

const redis = newRedis();
const publisher = createPublisher({ connection: env.amqpUrl });
const timing = { emailInitialDelayMs: 10, statusDelayMs: 10 };
const cleanups: (() => Promise<unknown>)[] = [];
const workers = new Set<WorkerProcess>();
afterEach(async () => {
  for (const w of workers) w.child.kill('SIGKILL');
  workers.clear();
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});
afterAll(async () => {
  await publisher.close();
  await redis.quit();
});

const BAD_ADDRESS = 'cus_3@exmaple.invalid';
const renewal = (i: number): Renewal => ({
  renewalId: `ren_${i}`,
  subscriptionId: `sub_${i}`,
  customerId: `cus_${i}`,
  email: i === 3 ? BAD_ADDRESS : `cus_${i}@example.com`,
  amountCents: 1_999,
});

async function setup() {
  const prefix = uniqueName('s8');
  const queue = uniqueName('s8.renewals');
  const raw = await rawChannel();
  await raw.ch.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
  cleanups.push(async () => {
    await raw.deleteQueues([queue, `${queue}.dlq`, `${queue}.retry.1000`, `${queue}.retry.5000`]);
    await raw.close();
    await dropPrefix(redis, prefix);
  });
  const billing = createBilling(redis, prefix);
  const mailer = createMailer(redis, prefix);
  const statusDb = createStatusDb(redis, prefix);
  await mailer.markUndeliverable(BAD_ADDRESS);
  const send = async (n: number) => {
    for (let i = 0; i < n; i++)
      await publisher.send(queue, renewal(i), { idempotencyKey: renewal(i).renewalId });
  };
  const allActive = (n: number) =>
    waitUntil(
      async () =>
        (await Promise.all(Array.from({ length: n }, (_, i) => statusDb.get(`sub_${i}`)))).every(Boolean),
      { timeoutMs: 45_000, message: `${n} subscriptions active` },
    );
  return { prefix, queue, raw, billing, mailer, statusDb, send, allActive };
}

const perKey = (charges: BillingCharge[]) => {
  const m = new Map<string, number>();
  for (const c of charges) m.set(c.key, (m.get(c.key) ?? 0) + 1);
  return m;
};

describe('S8 subscription renewal: Payment -> Email -> Status', () => {
  it('gives up the email after 5 retries, alerts on the status DB after 10 failures, charges once', async () => {
    const { queue, raw, prefix, billing, mailer, statusDb, send, allActive } = await setup();
    const store = createRedisStore({ client: redis, keyPrefix: `${prefix}:eo` });
    const events: StepEvent[] = [];
    await statusDb.failNext('sub_7', 12);
    const consumer: RabbitConsumer = createRenewalConsumer({
      connection: env.amqpUrl,
      queue,
      store,
      billing,
      mailer,
      statusDb,
      timing,
      onStepEvent: (e) => events.push(e),
    });
    await consumer.start();
    cleanups.push(() => consumer.stop());
    await send(10);
    await allActive(10);
    await waitUntil(() => consumer.stats.acked === 10, { message: () => JSON.stringify(consumer.stats) });

    const charges = await billing.listCharges();
    expect(charges).toHaveLength(10);
    expect([...perKey(charges).values()].every((n) => n === 1)).toBe(true);
    // Email: the first try and 5 retries, then the give-up, journaled and reported.
    expect(await mailer.attempts(BAD_ADDRESS)).toBe(6);
    expect((await mailer.sent()).map((m) => m.renewalId).sort()).toEqual(
      Array.from({ length: 10 }, (_, i) => `ren_${i}`)
        .filter((r) => r !== 'ren_3')
        .sort(),
    );
    const giveUps = events.filter((e) => e.type === 'give-up');
    expect(giveUps).toHaveLength(1);
    expect(giveUps[0]).toMatchObject({ step: 'email', key: 'ren_3', failures: 6 });
    expect(await statusDb.get('sub_3')).toMatchObject({ status: 'active', receiptPending: true });
    const record = await store.get(recordKeyFor({ consumer: CONSUMER, key: 'ren_3' }));
    expect(record?.state).toBe('COMPLETED');
    const stored =
      record?.state === 'COMPLETED' && record.result?.kind === 'inline' ? record.result.data : undefined;
    expect(JSON.parse(Buffer.from(stored ?? []).toString()) as RenewalResult).toMatchObject({
      receiptSent: false,
      receiptPending: true,
    });
    // Status: 12 failures, the alert at the 10th, the 13th write works.
    const alerts = events.filter((e) => e.type === 'alert');
    expect(alerts).toHaveLength(1);
    expect(alerts[0]).toMatchObject({ step: 'status', key: 'ren_7', failures: 10 });
    expect(await statusDb.writes('sub_7')).toBe(13);
    expect(await statusDb.get('sub_7')).toMatchObject({ status: 'active', receiptPending: false });
    expect(consumer.stats.deadLettered).toBe(0);
    expect(await raw.count(`${queue}.dlq`)).toBe(0);
  });

  it('charges once when the worker is SIGKILLed between the payment and the email', async () => {
    const { queue, raw, prefix, billing, mailer, statusDb, send, allActive } = await setup();
    const config = { amqpUrl: env.amqpUrl, redisUrl: env.redisUrl, queue, prefix, leaseMs: 2_000, timing };
    await send(20);
    const doomed = startWorker({ ...config, killBeforeEmail: 6 });
    workers.add(doomed);
    expect(await doomed.exited).toBe('SIGKILL');
    const paidBeforeKill = (await billing.listCharges()).length;
    const mailedBeforeKill = (await mailer.sent()).length;
    expect(paidBeforeKill).toBeGreaterThan(mailedBeforeKill); // at least one paid, not mailed
    const fresh = startWorker(config);
    workers.add(fresh);
    await allActive(20);

    const charges = await billing.listCharges();
    expect(charges).toHaveLength(20);
    expect([...perKey(charges).values()].every((n) => n === 1)).toBe(true);
    const sent = await mailer.sent();
    expect(sent).toHaveLength(19); // every renewal but ren_3 (wrong address), once each
    expect(new Set(sent.map((m) => m.renewalId)).size).toBe(19);
    expect(await statusDb.get('sub_3')).toMatchObject({ receiptPending: true });
    const events = (await redis.lrange(`${prefix}:events`, 0, -1)).map((e) => JSON.parse(e) as StepEvent);
    expect(events.filter((e) => e.type === 'give-up').map((e) => e.key)).toEqual(['ren_3']);
    expect(await raw.count(`${queue}.dlq`)).toBe(0);
    fresh.child.kill('SIGTERM');
    await fresh.exited;
  });
});
