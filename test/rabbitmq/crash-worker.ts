/**
 * A RabbitMQ consumer process for the crash tests. It SIGKILLs itself at the n-th event of one
 * pipeline point; the points are injected by wrapping the store, the publisher and the handler
 * here, so the library has no test-only branches.
 *
 * Config: JSON in EO_WORKER_CONFIG (see CrashWorkerConfig).
 * Ledger (Redis, its own key space):
 *   <ledger>:runs         key -> handler runs (every re-run counts)
 *   <ledger>:effects      ctx.keyFor('effect') -> key, HSETNX: the idempotent external effect
 *   <ledger>:completions  key -> successful store completions (fencing allows one)
 */
import type { OutgoingMessage, ProcessedStore } from '@exactly-once/core';
import { createConsumer, createPublisher } from '@exactly-once/rabbitmq';
import { createRedisStore } from '@exactly-once/store-redis';
import { env } from '../support/env.js';
import { newRedis } from './helpers.js';

export type KillPoint =
  | 'none'
  | 'after-begin'
  | 'in-handler'
  | 'after-complete'
  | 'after-publish'
  | 'before-ack';
export interface CrashWorkerConfig {
  queue: string;
  outQueue: string;
  ledger: string;
  storePrefix: string;
  killPoint: KillPoint;
  killAt: number;
}

const config = JSON.parse(process.env.EO_WORKER_CONFIG ?? '{}') as CrashWorkerConfig;
let events = 0;
function hit(at: KillPoint): void {
  if (at !== config.killPoint) return;
  if (++events === config.killAt) process.kill(process.pid, 'SIGKILL');
}

const redis = newRedis();
const base = createRedisStore({ client: redis, keyPrefix: config.storePrefix });
const store: ProcessedStore = {
  async begin(request) {
    const r = await base.begin(request);
    if (r.status === 'acquired') hit('after-begin');
    return r;
  },
  async complete(request) {
    const r = await base.complete(request);
    if (r === 'ok') {
      await redis.hincrby(`${config.ledger}:completions`, request.key, 1);
      hit('after-complete');
    }
    return r;
  },
  // markPublished is the pipeline's last step before the ack.
  async markPublished(key, fence, ids) {
    await base.markPublished(key, fence, ids);
    hit('before-ack');
  },
  extend: (key, fence, leaseMs) => base.extend(key, fence, leaseMs),
  release: (key, fence, error) => base.release(key, fence, error),
  fail: (key, fence, error, retentionMs) => base.fail(key, fence, error, retentionMs),
  saveStep: (key, fence, name, result) => base.saveStep(key, fence, name, result),
  get: (key) => base.get(key),
};

const rabbit = createPublisher({ connection: env.amqpUrl });
const publisher = {
  async publish(messages: readonly OutgoingMessage[]) {
    await rabbit.publish(messages);
    hit('after-publish');
  },
};

const consumer = createConsumer<{ id: string }>({
  connection: env.amqpUrl,
  queue: config.queue,
  consumer: 'crash',
  store,
  publisher,
  prefetch: 8,
  leaseMs: 2_000,
  retentionCheck: 'off',
  retryDelaysMs: [100, 500],
  retry: { maxAttempts: 8, initialDelayMs: 100, maxDelayMs: 500 },
  handler: async (order, ctx) => {
    await redis.hincrby(`${config.ledger}:runs`, ctx.key, 1);
    await redis.hsetnx(`${config.ledger}:effects`, ctx.keyFor('effect'), ctx.key);
    hit('in-handler');
    ctx.publish(config.outQueue, { id: order.id });
    return { ok: true };
  },
});

process.on('SIGTERM', () => {
  void (async () => {
    await consumer.stop({ timeoutMs: 5_000 });
    await rabbit.close();
    await redis.quit();
    process.exit(0);
  })();
});

await consumer.start();
process.stdout.write('started\n');
