/**
 * A consumer process for the crash and rebalance tests. It SIGKILLs itself at the n-th event of
 * one pipeline point; the points are injected by wrapping the store, the publisher and the
 * client here, so the library has no test-only branches.
 *
 * Config: JSON in EO_WORKER_CONFIG (see WorkerConfig in helpers.ts).
 *
 * Ledger (Redis, its own key space):
 *   <ledger>:runs         hash key -> handler runs (counts every re-run)
 *   <ledger>:effects      hash ctx.keyFor('effect') -> key, written with HSETNX (the idempotent effect)
 *   <ledger>:completions  hash key -> successful store completions (fencing allows one)
 */
import type { ProcessedStore } from '@exactly-once/core';
import { createConsumer, createProducer, type KafkaLike } from '@exactly-once/kafka';
import { createRedisStore } from '@exactly-once/store-redis';
import type { WorkerConfig } from './helpers.js';
import { fastGroup, newKafka, newRedis } from './helpers.js';

const config = JSON.parse(process.env.EO_WORKER_CONFIG ?? '{}') as WorkerConfig;
const point = config.killPoint ?? 'none';
let events = 0;

/** Counts an event of the configured kill point; dies at the configured one. */
function hit(at: WorkerConfig['killPoint']): void {
  if (at !== point) return;
  events++;
  if (events === config.killAt) {
    console.log(`killing at ${at} #${events}`);
    process.kill(process.pid, 'SIGKILL');
  }
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
  extend: (key, fence, leaseMs) => base.extend(key, fence, leaseMs),
  release: (key, fence, error) => base.release(key, fence, error),
  fail: (key, fence, error, retentionMs) => base.fail(key, fence, error, retentionMs),
  markPublished: (key, fence, ids) => base.markPublished(key, fence, ids),
  saveStep: (key, fence, name, result) => base.saveStep(key, fence, name, result),
  get: (key) => base.get(key),
};

const realKafka = newKafka(`worker-${process.pid}`);
// The client wrapper is where a kill lands between resolving offsets and committing them.
const kafka: KafkaLike = {
  producer: (c) => realKafka.producer(c),
  consumer(c) {
    const consumer = realKafka.consumer(c as Parameters<typeof realKafka.consumer>[0]);
    const run = consumer.run.bind(consumer);
    consumer.run = (cfg) =>
      run({
        ...cfg,
        eachBatch: cfg?.eachBatch
          ? (payload) =>
              cfg.eachBatch!({
                ...payload,
                commitOffsetsIfNecessary: async (offsets) => {
                  hit('before-commit');
                  return payload.commitOffsetsIfNecessary(offsets);
                },
              })
          : undefined,
      });
    return consumer as unknown as ReturnType<KafkaLike['consumer']>;
  },
};

const producer = createProducer({ kafka });
const publisher = {
  ...producer,
  async publish(messages: Parameters<typeof producer.publish>[0]) {
    await producer.publish(messages);
    hit('after-publish');
  },
};

const consumer = createConsumer<{ id: string }>({
  kafka,
  groupId: config.groupId,
  topics: [config.topic],
  deadLetter: { topic: config.dlqTopic },
  producer: publisher,
  store,
  fromBeginning: true,
  consumerConfig: fastGroup,
  leaseMs: 3_000,
  retry: { maxAttempts: 5, initialDelayMs: 100, maxDelayMs: 1_000 },
  handler: async (order, ctx) => {
    await redis.hincrby(`${config.ledger}:runs`, ctx.key, 1);
    if (config.handlerDelayMs) await new Promise((r) => setTimeout(r, config.handlerDelayMs));
    await redis.hsetnx(`${config.ledger}:effects`, ctx.keyFor('effect'), ctx.key);
    hit('in-handler');
    ctx.publish(config.outTopic, { id: order.id }, { routingKey: order.id });
    return { ok: true };
  },
});

let stopping = false;
process.on('SIGTERM', () => {
  if (stopping) return;
  stopping = true;
  void (async () => {
    await consumer.stop();
    await producer.disconnect();
    await redis.quit();
    process.exit(0);
  })();
});

await consumer.start();
console.log('started');
