/**
 * One charge-service process. Configured by the JSON in `S3_WORKER`; with `killAfterCharges: n`
 * it SIGKILLs itself right after its n-th charge reached the provider, before the step could
 * journal it (the crash of S3: the provider charged, we never learned it).
 */
import { createRedisStore } from '@exactly-once/store-redis';
import { Redis } from 'ioredis';
import { createProvider } from './provider.js';
import { createChargeService, createPaymentRecords } from './service.js';

export interface WorkerConfig {
  amqpUrl: string;
  redisUrl: string;
  queue: string;
  /** Prefix of the store's keys, the provider's and our payments table. */
  prefix: string;
  leaseMs: number;
  killAfterCharges?: number;
}

const config = JSON.parse(process.env.S3_WORKER ?? '{}') as WorkerConfig;
const redis = new Redis(config.redisUrl, { maxRetriesPerRequest: 2 });
const provider = createProvider(redis, `${config.prefix}:provider`);
let charges = 0;
const charge = provider.charge;
provider.charge = async (request, signal) => {
  const answer = await charge(request, signal);
  if (++charges === config.killAfterCharges) process.kill(process.pid, 'SIGKILL');
  return answer;
};
const service = createChargeService({
  connection: config.amqpUrl,
  queue: config.queue,
  store: createRedisStore({ client: redis, keyPrefix: `${config.prefix}:eo` }),
  provider,
  records: createPaymentRecords(redis, config.prefix),
  leaseMs: config.leaseMs,
});
process.on('SIGTERM', () => {
  void service
    .stop({ timeoutMs: 5_000 })
    // A run stop() gave up on still needs the store to record its completion.
    .then(() => service.idle(30_000))
    .then(() => redis.quit())
    .finally(() => process.exit(0));
});
await service.start();
process.stdout.write('started\n');
