/**
 * S3, in-doubt charge at an external processor: `npm run scenario -- s3-in-doubt-charge`.
 * 20 pending charges; the provider loses 3 answers (after charging) and the service process is
 * SIGKILLed right after its 8th charge; a fresh process finishes the queue. Then the daily
 * reconciliation runs, with a charge made outside the service and a charge left pending.
 */
import { randomUUID } from 'node:crypto';
import { createPublisher } from '@exactly-once/rabbitmq';
import { createRedisStore } from '@exactly-once/store-redis';
import amqp from 'amqplib';
import { Redis } from 'ioredis';
import { createProvider } from './provider.js';
import { dailyReconciliation } from './reconcile-job.js';
import { createPaymentRecords, type PendingCharge } from './service.js';
import { startWorker, type WorkerProcess } from './spawn-worker.js';
import type { WorkerConfig } from './worker.js';

const amqpUrl = process.env.EO_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
const redisUrl = process.env.EO_REDIS_URL ?? 'redis://127.0.0.1:6379';
const run = randomUUID().slice(0, 8);
const prefix = `scenario-s3-${run}`;
const queue = `scenario.s3.${run}.charges`;
const redis = new Redis(redisUrl, { maxRetriesPerRequest: 2 });
const provider = createProvider(redis, `${prefix}:provider`);
const records = createPaymentRecords(redis, prefix);
const store = createRedisStore({ client: redis, keyPrefix: `${prefix}:eo` });
const config: WorkerConfig = { amqpUrl, redisUrl, queue, prefix, leaseMs: 2_000 };
const conn = await amqp.connect(amqpUrl);
const channel = await conn.createChannel();
await channel.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
const publisher = createPublisher({ connection: amqpUrl });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
let worker: WorkerProcess | undefined;

const send = (charge: PendingCharge) => publisher.send(queue, charge, { idempotencyKey: charge.paymentId });
try {
  const n = 20;
  await provider.loseResponses(3);
  for (let i = 0; i < n; i++)
    await send({ paymentId: `pay_${i}`, customerId: `cus_${i}`, amountCents: 10_000 });

  worker = startWorker({ ...config, killAfterCharges: 8 });
  console.log(`worker 1 ended by ${await worker.exited} right after its 8th charge`);
  worker = startWorker(config);
  while ((await records.list()).length < n) await sleep(200);

  const charges = await provider.listCharges();
  const perKey = new Map<string, number>();
  for (const c of charges) perKey.set(c.idempotencyKey, (perKey.get(c.idempotencyKey) ?? 0) + 1);
  const ours = await records.list();
  console.log(`${n} pending charges, 3 answers lost, 1 worker SIGKILLed after charging`);
  console.log(
    `  charges at the provider: ${charges.length}, most under one key: ${Math.max(...perKey.values())}`,
  );
  console.log(
    `  our payments: ${ours.length} (charged ${ours.filter((r) => r.via === 'charged').length}, found by reconcile ${ours.filter((r) => r.via === 'reconciled').length})`,
  );

  // Daily reconciliation: a charge made outside the service, and one charge left pending.
  await provider.charge({
    idempotencyKey: 'dashboard-refund-retry-17',
    customerId: 'cus_x',
    amountCents: 4_200,
  });
  await provider.stall('cus_stuck');
  await send({ paymentId: 'pay_stuck', customerId: 'cus_stuck', amountCents: 10_000 });
  await sleep(2_500);
  const report = await dailyReconciliation({ provider, records, store, pendingOlderThanMs: 2_000 });
  console.log('daily reconciliation (pending threshold 2 s here, 24 h in production):');
  console.log(
    `  at the provider, not ours: ${report.providerOnly.map((c) => `${c.id} key=${c.idempotencyKey}`).join(', ')}`,
  );
  console.log(`  ours, not at the provider: ${report.oursOnly.length}`);
  console.log(`  keys charged twice: ${report.chargedTwice.length}, mismatched: ${report.mismatched.length}`);
  console.log(`  pending too long: ${report.stuck.map((s) => `${s.key} (attempt ${s.attempt})`).join(', ')}`);
  await provider.unstall('cus_stuck');
  while ((await records.list()).length < n + 1) await sleep(100);
} finally {
  if (worker) {
    worker.child.kill('SIGTERM');
    await worker.exited;
  }
  await publisher.close();
  for (const q of [queue, `${queue}.dlq`, `${queue}.retry.200`, `${queue}.retry.1000`])
    await channel.deleteQueue(q).catch(() => {});
  await conn.close();
  for await (const keys of redis.scanStream({ match: `${prefix}:*`, count: 1000 }) as AsyncIterable<
    string[]
  >) {
    if (keys.length > 0) await redis.unlink(...keys);
  }
  await redis.quit();
}
