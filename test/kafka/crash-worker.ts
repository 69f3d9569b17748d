/**
 * A consumer process for the crash and rebalance tests. It SIGKILLs itself at the n-th event of
 * one pipeline point; the points are injected by wrapping the store, the publisher and the
 * client here (store and handler hooks shared with the RabbitMQ worker, in
 * test/support/crash-ledger.ts), so the library has no test-only branches.
 *
 * Config: JSON in EO_WORKER_CONFIG (see WorkerConfig in helpers.ts). The ledger it writes is
 * described in test/support/crash-ledger.ts.
 */
import { createConsumer, createProducer, type KafkaLike } from '@exactly-once/kafka';
import { createRedisStore } from '@exactly-once/store-redis';
import type { Kafka } from 'kafkajs';
import { crashKit, type KillPoint } from '../support/crash-ledger.js';
import type { WorkerConfig } from './helpers.js';
import { clientKafka, fastGroup, newRedis } from './helpers.js';

/** WorkerConfig, with every kill point of the ledger (helpers.ts lists the points of other tests). */
export type CrashWorkerConfig = Omit<WorkerConfig, 'killPoint'> & { killPoint?: KillPoint };

const config = JSON.parse(process.env.EO_WORKER_CONFIG ?? '{}') as CrashWorkerConfig;
const redis = newRedis();
const kit = crashKit({
  redis,
  ledger: config.ledger,
  store: createRedisStore({ client: redis, keyPrefix: config.storePrefix }),
  killPoint: config.killPoint,
  killAt: config.killAt,
});

// kafkajs' types serve both clients: librdkafka's KafkaJS API has the same shape.
const realKafka = clientKafka(config.client ?? 'kafkajs', `worker-${process.pid}`) as unknown as Kafka;
// The client wrapper is where a kill lands between resolving offsets and committing them.
const kafka: KafkaLike = {
  producer: (c) => realKafka.producer(c),
  consumer(c) {
    const consumer = realKafka.consumer(c as Parameters<typeof realKafka.consumer>[0]);
    // On librdkafka the adapter commits its offsets through the consumer, not the payload.
    const commitOffsets = consumer.commitOffsets.bind(consumer);
    consumer.commitOffsets = async (offsets) => {
      await kit.hit('before-commit');
      return commitOffsets(offsets);
    };
    const run = consumer.run.bind(consumer);
    consumer.run = (cfg) =>
      run({
        ...cfg,
        eachBatch: cfg?.eachBatch
          ? (payload) =>
              cfg.eachBatch!({
                ...payload,
                commitOffsetsIfNecessary: async (offsets) => {
                  await kit.hit('before-commit');
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
    await kit.published(messages);
  },
};

const consumer = createConsumer<{ id: string }>({
  kafka,
  groupId: config.groupId,
  topics: [config.topic],
  deadLetter: { topic: config.dlqTopic },
  producer: publisher,
  store: kit.store,
  fromBeginning: true,
  consumerConfig: fastGroup,
  leaseMs: 3_000,
  retry: { maxAttempts: 5, initialDelayMs: 100, maxDelayMs: 1_000 },
  handler: async (order, ctx) => {
    await kit.started(ctx);
    if (config.handlerDelayMs) await new Promise((r) => setTimeout(r, config.handlerDelayMs));
    await kit.effect(ctx);
    ctx.publish(
      config.outTopic,
      { id: order.id },
      { routingKey: order.id, headers: kit.publishHeaders(ctx) },
    );
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
