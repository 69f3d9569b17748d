/**
 * A Kafka consumer process for the poison-crash tests: the record `poison` SIGKILLs its worker
 * `poisonAfterMs` into its handler (default: as it starts); every other handler works `workMs`
 * (default 0), then appends its id to the ledger (a file, written before the handler returns).
 *
 * Config: JSON in EO_WORKER_CONFIG (see PoisonWorkerConfig).
 */
import { appendFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { defaultLogger } from '@exactly-once/core';
import { createConsumer } from '@exactly-once/kafka';
import { createRedisStore } from '@exactly-once/store-redis';
import { fastGroup, newKafka, newRedis } from './helpers.js';

export interface PoisonWorkerConfig {
  topic: string;
  dlqTopic: string;
  groupId: string;
  ledger: string;
  storePrefix: string;
  maxTakeoverAttempts: number;
  poisonAfterMs?: number;
  workMs?: number;
}

const config = JSON.parse(process.env.EO_WORKER_CONFIG ?? '{}') as PoisonWorkerConfig;
const redis = newRedis();
const consumer = createConsumer<{ id: string }>({
  kafka: newKafka(`poison-${process.pid}`),
  groupId: config.groupId,
  topics: [config.topic],
  deadLetter: { topic: config.dlqTopic },
  store: createRedisStore({ client: redis, keyPrefix: config.storePrefix }),
  fromBeginning: true,
  consumerConfig: fastGroup,
  leaseMs: 1_000,
  maxTakeoverAttempts: config.maxTakeoverAttempts,
  retentionCheck: 'off',
  logger: defaultLogger,
  handler: async ({ id }) => {
    if (id === 'poison') {
      if (config.poisonAfterMs) await sleep(config.poisonAfterMs);
      process.kill(process.pid, 'SIGKILL');
    }
    if (config.workMs) await sleep(config.workMs);
    appendFileSync(config.ledger, `${id}\n`);
    return { ok: true };
  },
});

process.on('SIGTERM', () => {
  void (async () => {
    await consumer.stop();
    await redis.quit();
    process.exit(0);
  })();
});

await consumer.start();
process.stdout.write('started\n');
