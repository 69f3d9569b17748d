/**
 * A RabbitMQ consumer process for the poison-crash test: the message `poison` SIGKILLs its worker
 * 100 ms into its handler; every other handler takes 400 ms, then appends its id to the ledger (a
 * file: it is written before the handler returns, so a kill cannot lose a line that happened).
 *
 * Config: JSON in EO_WORKER_CONFIG (see PoisonWorkerConfig).
 */
import { appendFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { defaultLogger } from '@exactly-once/core';
import { createConsumer } from '@exactly-once/rabbitmq';
import { createRedisStore } from '@exactly-once/store-redis';
import { env } from '../support/env.js';
import { newRedis } from './helpers.js';

export interface PoisonWorkerConfig {
  queue: string;
  ledger: string;
  storePrefix: string;
  maxTakeoverAttempts: number;
}

const config = JSON.parse(process.env.EO_WORKER_CONFIG ?? '{}') as PoisonWorkerConfig;
const redis = newRedis();
const consumer = createConsumer<{ id: string }>({
  connection: env.amqpUrl,
  queue: config.queue,
  consumer: 'poison',
  store: createRedisStore({ client: redis, keyPrefix: config.storePrefix }),
  prefetch: 20,
  leaseMs: 1_000,
  maxTakeoverAttempts: config.maxTakeoverAttempts,
  retentionCheck: 'off',
  logger: defaultLogger,
  handler: async ({ id }) => {
    if (id === 'poison') {
      await sleep(100);
      process.kill(process.pid, 'SIGKILL');
    }
    await sleep(400);
    appendFileSync(config.ledger, `${id}\n`);
    return { ok: true };
  },
});

process.on('SIGTERM', () => {
  void (async () => {
    await consumer.stop({ timeoutMs: 5_000 });
    await redis.quit();
    process.exit(0);
  })();
});

await consumer.start();
process.stdout.write('started\n');
