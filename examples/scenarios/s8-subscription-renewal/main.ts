/**
 * S8, subscription renewal (Payment -> Email -> Status): `npm run scenario -- s8-subscription-renewal`.
 * 10 renewals. One customer's address is wrong (every email fails), one subscription's status
 * DB fails 12 times then recovers, and the service process is SIGKILLed between a renewal's
 * payment and its email; a fresh process finishes. Retry delays are shrunk (50 ms / 100 ms
 * instead of 1 s / 10 s) so it runs in seconds.
 */
import { randomUUID } from 'node:crypto';
import { createPublisher } from '@exactly-once/rabbitmq';
import amqp from 'amqplib';
import { Redis } from 'ioredis';
import { createBilling, createMailer, createStatusDb } from './fakes.js';
import type { Renewal } from './service.js';
import { startWorker, type WorkerProcess } from './spawn-worker.js';
import type { WorkerConfig } from './worker.js';

const amqpUrl = process.env.EO_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
const redisUrl = process.env.EO_REDIS_URL ?? 'redis://127.0.0.1:6379';
const run = randomUUID().slice(0, 8);
const prefix = `scenario-s8-${run}`;
const queue = `scenario.s8.${run}.renewals`;
const redis = new Redis(redisUrl, { maxRetriesPerRequest: 2 });
const billing = createBilling(redis, prefix);
const mailer = createMailer(redis, prefix);
const statusDb = createStatusDb(redis, prefix);
const config: WorkerConfig = {
  amqpUrl,
  redisUrl,
  queue,
  prefix,
  leaseMs: 2_000,
  timing: { emailInitialDelayMs: 50, statusDelayMs: 100 },
};
const conn = await amqp.connect(amqpUrl);
const channel = await conn.createChannel();
await channel.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
const publisher = createPublisher({ connection: amqpUrl });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
let worker: WorkerProcess | undefined;
const n = 10;
const renewal = (i: number): Renewal => ({
  renewalId: `ren_2025_06_${i}`,
  subscriptionId: `sub_${i}`,
  customerId: `cus_${i}`,
  email: i === 3 ? 'cus_3@exmaple.invalid' : `cus_${i}@example.com`,
  amountCents: 1_999,
});

try {
  await mailer.markUndeliverable('cus_3@exmaple.invalid');
  await statusDb.failNext('sub_7', 12);
  for (let i = 0; i < n; i++)
    await publisher.send(queue, renewal(i), { idempotencyKey: renewal(i).renewalId });
  worker = startWorker({ ...config, killBeforeEmail: 5 });
  console.log(
    `worker 1 ended by ${await worker.exited} before its 5th receipt (that renewal was already paid)`,
  );
  worker = startWorker(config);
  for (;;) {
    const rows = await Promise.all(Array.from({ length: n }, (_, i) => statusDb.get(`sub_${i}`)));
    if (rows.every(Boolean)) break;
    await sleep(200);
  }
  const charges = await billing.listCharges();
  const perKey = new Map<string, number>();
  for (const c of charges) perKey.set(c.key, (perKey.get(c.key) ?? 0) + 1);
  const events = (await redis.lrange(`${prefix}:events`, 0, -1)).map((e) => JSON.parse(e));
  console.log(`${n} renewals`);
  console.log(`  charges at billing: ${charges.length}, most under one key: ${Math.max(...perKey.values())}`);
  console.log(`  receipts delivered: ${(await mailer.sent()).length}`);
  console.log(`  emails tried for cus_3 (wrong address): ${await mailer.attempts('cus_3@exmaple.invalid')}`);
  console.log(`  status writes for sub_7 (DB failed 12 times): ${await statusDb.writes('sub_7')}`);
  for (const e of events)
    console.log(`  step event: ${e.type} step=${e.step} key=${e.key} failures=${e.failures}`);
  console.log(`  sub_3 row: ${JSON.stringify(await statusDb.get('sub_3'))}`);
  console.log(`  sub_7 row: ${JSON.stringify(await statusDb.get('sub_7'))}`);
} finally {
  if (worker) {
    worker.child.kill('SIGTERM');
    await worker.exited;
  }
  await publisher.close();
  for (const q of [queue, `${queue}.dlq`, `${queue}.retry.1000`, `${queue}.retry.5000`])
    await channel.deleteQueue(q).catch(() => {});
  await conn.close();
  for await (const keys of redis.scanStream({ match: `${prefix}:*`, count: 1000 }) as AsyncIterable<
    string[]
  >) {
    if (keys.length > 0) await redis.unlink(...keys);
  }
  await redis.quit();
}
