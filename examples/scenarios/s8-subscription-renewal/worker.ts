/**
 * One renewal-service process. Configured by the JSON in `S8_WORKER`; with `killBeforeEmail: n`
 * it SIGKILLs itself when its n-th receipt is about to be sent: that renewal's payment is
 * journaled, its email is not (a crash between Payment and Email). Step events go to a Redis list
 * so they outlive the process.
 */
import { createRedisStore } from '@exactly-once/store-redis';
import { Redis } from 'ioredis';
import { createBilling, createMailer, createStatusDb } from './fakes.js';
import { createRenewalConsumer, type RenewalTiming } from './service.js';

export interface WorkerConfig {
  amqpUrl: string;
  redisUrl: string;
  queue: string;
  prefix: string;
  leaseMs: number;
  timing: RenewalTiming;
  killBeforeEmail?: number;
}

const config = JSON.parse(process.env.S8_WORKER ?? '{}') as WorkerConfig;
const redis = new Redis(config.redisUrl, { maxRetriesPerRequest: 2 });
const mailer = createMailer(redis, config.prefix);
let emails = 0;
const send = mailer.sendReceipt;
mailer.sendReceipt = async (mail) => {
  if (++emails === config.killBeforeEmail) process.kill(process.pid, 'SIGKILL');
  return send(mail);
};
const consumer = createRenewalConsumer({
  connection: config.amqpUrl,
  queue: config.queue,
  store: createRedisStore({ client: redis, keyPrefix: `${config.prefix}:eo` }),
  billing: createBilling(redis, config.prefix),
  mailer,
  statusDb: createStatusDb(redis, config.prefix),
  timing: config.timing,
  leaseMs: config.leaseMs,
  onStepEvent: (event) => {
    const { error, ...rest } = event;
    void redis.rpush(`${config.prefix}:events`, JSON.stringify({ ...rest, error: String(error) }));
  },
});
process.on('SIGTERM', () => {
  void consumer
    .stop({ timeoutMs: 5_000 })
    // A run stop() gave up on still needs the store to record its completion.
    .then(() => consumer.idle(30_000))
    .then(() => redis.quit())
    .finally(() => process.exit(0));
});
await consumer.start();
process.stdout.write('started\n');
