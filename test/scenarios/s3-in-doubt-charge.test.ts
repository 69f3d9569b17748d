/**
 * S3, in-doubt charge at an external processor: the provider charges and then loses its answer
 * (which is encrypted anyway), and a worker process is SIGKILLed right after the provider
 * charged. Charges are counted in the provider's own ledger in Redis, which never deduplicates.
 */
import { createConsumer, createPublisher, type RabbitConsumer } from '@exactly-once/rabbitmq';
import { createRedisStore } from '@exactly-once/store-redis';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { createProvider, type ProviderCharge } from '../../examples/scenarios/s3-in-doubt-charge/provider.js';
import { dailyReconciliation } from '../../examples/scenarios/s3-in-doubt-charge/reconcile-job.js';
import {
  createChargeService,
  createPaymentRecords,
  type PendingCharge,
} from '../../examples/scenarios/s3-in-doubt-charge/service.js';
import { startWorker, type WorkerProcess } from '../../examples/scenarios/s3-in-doubt-charge/spawn-worker.js';
import { rawChannel } from '../rabbitmq/helpers.js';
import { env, uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';
import { dropPrefix, newRedis } from './support-payments-redis.js';

const redis = newRedis();
const publisher = createPublisher({ connection: env.amqpUrl });
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

async function setup() {
  const prefix = uniqueName('s3');
  const queue = uniqueName('s3.charges');
  const raw = await rawChannel();
  await raw.ch.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
  cleanups.push(async () => {
    await raw.deleteQueues([queue, `${queue}.dlq`, `${queue}.retry.200`, `${queue}.retry.1000`]);
    await raw.close();
    await dropPrefix(redis, prefix);
  });
  const provider = createProvider(redis, `${prefix}:provider`);
  const records = createPaymentRecords(redis, prefix);
  const store = createRedisStore({ client: redis, keyPrefix: `${prefix}:eo` });
  const send = async (n: number, from = 0) => {
    for (let i = from; i < from + n; i++) {
      const charge: PendingCharge = { paymentId: `pay_${i}`, customerId: `cus_${i}`, amountCents: 1_000 + i };
      await publisher.send(queue, charge, { idempotencyKey: charge.paymentId });
    }
  };
  const run = async (consumer: RabbitConsumer) => {
    await consumer.start();
    cleanups.push(() => consumer.stop());
    return consumer;
  };
  return { prefix, queue, raw, provider, records, store, send, run };
}

const countByKey = (charges: ProviderCharge[]) => {
  const m = new Map<string, number>();
  for (const c of charges) m.set(c.idempotencyKey, (m.get(c.idempotencyKey) ?? 0) + 1);
  return m;
};

describe('S3 in-doubt charge at an external processor', () => {
  it('control: a plain step charges again when the answer was lost', async () => {
    const { queue, provider, store, send, run } = await setup();
    await provider.loseResponses(3);
    const consumer = await run(
      createConsumer<PendingCharge>({
        connection: env.amqpUrl,
        queue,
        consumer: 'charges',
        store,
        retryDelaysMs: [200, 1_000],
        retry: { maxAttempts: 5, initialDelayMs: 200, maxDelayMs: 1_000 },
        handler: (p, ctx) =>
          ctx.step('charge', () =>
            provider.charge({
              idempotencyKey: ctx.keyFor('charge'),
              customerId: p.customerId,
              amountCents: p.amountCents,
            }),
          ),
      }),
    );
    await send(10);
    await waitUntil(() => consumer.stats.acked === 10, { message: () => JSON.stringify(consumer.stats) });
    const charges = await provider.listCharges();
    // 10 payments, 13 charges: each lost answer became a second charge.
    expect(charges).toHaveLength(13);
    expect([...countByKey(charges).values()].filter((n) => n === 2)).toHaveLength(3);
  });

  it('with reconcile, a lost answer is looked up by its key: 20 payments, 20 charges', async () => {
    const { queue, provider, records, store, send, run } = await setup();
    await provider.loseResponses(5);
    const consumer = await run(
      createChargeService({ connection: env.amqpUrl, queue, store, provider, records }),
    );
    await send(20);
    await waitUntil(async () => (await records.list()).length === 20 && consumer.stats.acked === 20, {
      message: () => JSON.stringify(consumer.stats),
    });
    const charges = await provider.listCharges();
    expect(charges).toHaveLength(20);
    expect([...countByKey(charges).values()].every((n) => n === 1)).toBe(true);
    const ours = await records.list();
    expect(ours.filter((r) => r.via === 'reconciled')).toHaveLength(5);
    // The transaction ids come from the lookup (the answer itself is sealed) and match.
    const byKey = new Map(charges.map((c) => [c.idempotencyKey, c]));
    for (const r of ours) expect(r.transactionId).toBe(byKey.get(r.chargeKey)?.id);
    expect(consumer.stats.deadLettered).toBe(0);
  });

  it('never charges twice when the worker is SIGKILLed right after the provider charged', async () => {
    const { prefix, queue, provider, records, send } = await setup();
    const config = { amqpUrl: env.amqpUrl, redisUrl: env.redisUrl, queue, prefix, leaseMs: 2_000 };
    await send(30);
    const doomed = startWorker({ ...config, killAfterCharges: 7 });
    workers.add(doomed);
    expect(await doomed.exited).toBe('SIGKILL');
    // The 7th charge is at the provider; the journal never heard of it.
    expect((await provider.listCharges()).length).toBeGreaterThanOrEqual(7);
    const fresh = startWorker(config);
    workers.add(fresh);
    await waitUntil(async () => (await records.list()).length === 30, {
      timeoutMs: 45_000,
      message: 'all 30 payments recorded',
    });
    const charges = await provider.listCharges();
    expect(charges).toHaveLength(30);
    expect([...countByKey(charges).values()].every((n) => n === 1)).toBe(true);
    const ours = await records.list();
    expect(ours.filter((r) => r.via === 'reconciled').length).toBeGreaterThanOrEqual(1);
    const byKey = new Map(charges.map((c) => [c.idempotencyKey, c]));
    for (const r of ours) expect(r.transactionId).toBe(byKey.get(r.chargeKey)?.id);
    fresh.child.kill('SIGTERM');
    await fresh.exited;
  });

  it('daily reconciliation finds a charge we do not have and a charge pending too long', async () => {
    const { queue, provider, records, store, send, run } = await setup();
    await run(createChargeService({ connection: env.amqpUrl, queue, store, provider, records }));
    await send(5);
    await waitUntil(async () => (await records.list()).length === 5);
    // A charge made outside the service, under a key we never used.
    await provider.charge({
      idempotencyKey: 'manual-dashboard-charge',
      customerId: 'cus_x',
      amountCents: 4_200,
    });
    // A charge that hangs at the provider: its record stays IN_PROGRESS.
    await provider.stall('cus_5');
    await send(1, 5);
    await waitUntil(
      async () =>
        (await dailyReconciliation({ provider, records, store, pendingOlderThanMs: 1_000 })).stuck.length ===
        1,
      {
        message: 'the pending charge to age past the threshold',
      },
    );
    const report = await dailyReconciliation({ provider, records, store, pendingOlderThanMs: 1_000 });
    expect(report.providerOnly.map((c) => c.idempotencyKey)).toEqual(['manual-dashboard-charge']);
    expect(report.oursOnly).toEqual([]);
    expect(report.chargedTwice).toEqual([]);
    expect(report.mismatched).toEqual([]);
    expect(report.stuck.map((s) => s.key)).toEqual(['default:charges:pay_5']);
    // A fresh charge is not reported as pending.
    expect(
      (await dailyReconciliation({ provider, records, store, pendingOlderThanMs: 60_000 })).stuck,
    ).toEqual([]);
    await provider.unstall('cus_5');
    await waitUntil(async () => (await records.list()).length === 6);
  });
});
