/**
 * A RabbitMQ consumer process for the crash tests. It SIGKILLs itself at the n-th event of one
 * pipeline point; the points are injected by wrapping the store, the publisher and the handler
 * (test/support/crash-ledger.ts, shared with the Kafka worker), so the library has no test-only
 * branches.
 *
 * Config: JSON in EO_WORKER_CONFIG (see CrashWorkerConfig). The ledger it writes is described in
 * test/support/crash-ledger.ts.
 */
import type { OutgoingMessage, ProcessedStore } from '@exactly-once/core';
import { createConsumer, createPublisher } from '@exactly-once/rabbitmq';
import { createMongoStore } from '@exactly-once/store-mongo';
import { createRedisStore } from '@exactly-once/store-redis';
import { MongoClient } from 'mongodb';
import { type KillPoint as AnyKillPoint, crashKit } from '../support/crash-ledger.js';
import { env } from '../support/env.js';
import { newRedis } from './helpers.js';

export type KillPoint = Extract<
  AnyKillPoint,
  'none' | 'after-begin' | 'in-handler' | 'after-complete' | 'after-publish' | 'before-ack' | 'mid-batch'
>;
export interface CrashWorkerConfig {
  queue: string;
  outQueue: string;
  ledger: string;
  storePrefix: string;
  /** The processed-store: Redis (default), or MongoDB with its records in this database. */
  mongoDb?: string;
  killPoint: KillPoint;
  killAt: number;
}

const config = JSON.parse(process.env.EO_WORKER_CONFIG ?? '{}') as CrashWorkerConfig;
const redis = newRedis();
const mongo = config.mongoDb === undefined ? undefined : await MongoClient.connect(env.mongoUrl);
const store: ProcessedStore =
  mongo === undefined
    ? createRedisStore({ client: redis, keyPrefix: config.storePrefix })
    : createMongoStore({ db: mongo.db(config.mongoDb) });
const kit = crashKit({
  redis,
  ledger: config.ledger,
  store,
  killPoint: config.killPoint,
  killAt: config.killAt,
});

const rabbit = createPublisher({ connection: env.amqpUrl });
const publisher = {
  async publish(messages: readonly OutgoingMessage[]) {
    await rabbit.publish(messages);
    await kit.published(messages);
  },
};

/**
 * mid-batch needs completes that go out together. Deliveries that arrive together (a worker's
 * first prefetch window) complete together, but once the queue flows, each ack frees one slot,
 * the broker sends one delivery, and on a quiet machine the completes go out one by one (a
 * worker saw 3 calls of >= 2 in 313). So under mid-batch the handlers return in pairs: after its
 * effect, a handler waits for the next one (at most 100 ms, so the queue's last delivery is not
 * kept), and both return in the same turn, so core's coalescer sends their completes in one call.
 */
let waiting: (() => void) | undefined;
function pairUp(): Promise<void> {
  const other = waiting;
  if (other) {
    waiting = undefined;
    other();
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    const release = () => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      if (waiting === release) waiting = undefined;
      resolve();
    }, 100);
    waiting = release;
  });
}

const consumer = createConsumer<{ id: string }>({
  connection: env.amqpUrl,
  queue: config.queue,
  consumer: 'crash',
  store: kit.store,
  publisher,
  prefetch: 8,
  leaseMs: 2_000,
  retentionCheck: 'off',
  retryDelaysMs: [100, 500],
  retry: { maxAttempts: 8, initialDelayMs: 100, maxDelayMs: 500 },
  handler: async (order, ctx) => {
    await kit.started(ctx);
    await kit.effect(ctx);
    if (config.killPoint === 'mid-batch') await pairUp();
    ctx.publish(config.outQueue, { id: order.id }, { headers: kit.publishHeaders(ctx) });
    return { ok: true };
  },
});

process.on('SIGTERM', () => {
  void (async () => {
    await consumer.stop({ timeoutMs: 5_000 });
    await rabbit.close();
    await redis.quit();
    await mongo?.close();
    process.exit(0);
  })();
});

await consumer.start();
process.stdout.write('started\n');
