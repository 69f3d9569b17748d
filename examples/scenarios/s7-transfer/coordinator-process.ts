/**
 * The coordinator as its own process (the scenario SIGKILLs it mid-transfer and starts another).
 * Config: JSON in EO_S7_COORDINATOR ({ amqpUrl, redisUrl, queue, keyPrefix, participants }).
 * Prints `ready` once consuming; stops cleanly on SIGTERM.
 */
import { createRedisStore } from '@exactly-once/store-redis';
import { Redis } from 'ioredis';
import { createCoordinator } from './coordinator.js';

const config = JSON.parse(process.env.EO_S7_COORDINATOR ?? '{}') as {
  amqpUrl: string;
  redisUrl: string;
  queue: string;
  keyPrefix: string;
  participants: Record<string, string>;
};
const redis = new Redis(config.redisUrl, { maxRetriesPerRequest: 3 });
const coordinator = createCoordinator({
  amqpUrl: config.amqpUrl,
  queue: config.queue,
  store: createRedisStore({ client: redis, keyPrefix: config.keyPrefix }),
  participants: config.participants,
});
process.on('SIGTERM', () => {
  void coordinator
    .stop({ timeoutMs: 5_000 })
    // A run stop() gave up on still needs the store to record its completion.
    .then(() => coordinator.idle(30_000))
    .then(() => redis.quit())
    .finally(() => process.exit(0));
});
await coordinator.start();
process.stdout.write('ready\n');
