/** `createConsumer`: a kafkajs consumer group member that runs every record through core's pipeline. */
import {
  ConfigError,
  MalformedMessageError,
  type ProcessorOptions,
  silentLogger,
  toErrorInfo,
} from '@exactly-once/core';
import { createProcessor, decodeJson, type Delivery, type Processor } from '@exactly-once/core/spi';
import { type BatchEnv, runBatch } from './batch.js';
import type { ConsumerConfigLike, ConsumerLike, KafkaLike } from './client.js';
import { isTombstone } from './delivery.js';
import { createProducer, type ExactlyOnceProducer } from './producer.js';
import { type ConsumerStats, emptyStats } from './stats.js';

export interface KafkaConsumerOptions<T = unknown, R = unknown>
  extends Omit<ProcessorOptions<T, R>, 'consumer' | 'publisher'> {
  kafka: KafkaLike;
  groupId: string;
  topics: readonly string[];
  /** Consumer name in store keys. @defaultValue `groupId` */
  consumer?: string;
  /**
   * Where permanently failed, malformed and poison records go (produced with acks -1 by an
   * idempotent producer, with reason and origin headers) before their offset is resolved.
   */
  deadLetter: { topic: string };
  /**
   * Optional retry topic. Unset (default): a retryable failure waits in place and the same record
   * is tried again, keeping the partition's order. Set: the record is copied to this topic with
   * its next attempt and due time, its offset is resolved, and the consumer (which also subscribes
   * to it) processes the copy when due. Keeps the partition flowing; gives up order for retries.
   */
  retryTopic?: string;
  /**
   * Producer for the handler's `ctx.publish` messages and for dead-letter/retry copies.
   * @defaultValue an idempotent producer created from `kafka`, disconnected by `stop()`
   */
  producer?: ExactlyOnceProducer;
  /** Partitions processed at the same time (each in order). @defaultValue 8 */
  partitionsConsumedConcurrently?: number;
  /** Where a group with no committed offset starts. @defaultValue false (latest) */
  fromBeginning?: boolean;
  /**
   * Passed to `kafka.consumer()`. Tune `sessionTimeout` (default 30000), `rebalanceTimeout`
   * (60000) and `heartbeatInterval` (3000) here; the adapter heartbeats during long work itself.
   * `maxWaitTimeInMs` defaults to 1000 here (kafkajs: 5000) so a resumed partition is fetched
   * soon.
   */
  consumerConfig?: Omit<ConsumerConfigLike, 'groupId'>;
  /** Commit after this many settled records of a partition, or at the batch end. @defaultValue 100 */
  commitEveryMessages?: number;
  /** Commit a partition's progress at least this often during a batch. @defaultValue 1000 */
  commitIntervalMs?: number;
  /**
   * A defer/retry wait up to this long happens in place; a longer one pauses the partition and
   * resumes it when due, so other partitions keep flowing. @defaultValue 1000
   */
  maxInPlaceWaitMs?: number;
  /**
   * On revocation or stop, how long a run already under way may still finish and be committed.
   * Keep it well under `rebalanceTimeout`. @defaultValue 5000
   */
  revokeGraceMs?: number;
}

/** A running (or startable) exactly-once consumer group member. */
export interface KafkaConsumer {
  /** Connects, subscribes and starts consuming. Resolves once the consumer runs. */
  start(): Promise<void>;
  /**
   * Stops taking records, lets in-flight runs finish (up to `revokeGraceMs`), commits what was
   * settled, leaves the group and disconnects. Safe to call twice.
   */
  stop(): Promise<void>;
  /** The underlying client consumer, e.g. for `on(consumer.events.GROUP_JOIN, ...)`. */
  readonly consumer: ConsumerLike;
  readonly processor: Processor;
  readonly producer: ExactlyOnceProducer;
  /** Live counters. */
  readonly stats: Readonly<ConsumerStats>;
}

/**
 * Creates an exactly-once consumer: ordered per partition, offsets committed only past settled
 * records, retries in place, poison to the dead-letter topic.
 *
 * @example
 * ```ts
 * const consumer = createConsumer({
 *   kafka, groupId: 'billing', topics: ['orders'], deadLetter: { topic: 'orders.dlq' },
 *   store: createRedisStore({ client: redis }),
 *   handler: async (order, ctx) => ctx.publish('invoices', { orderId: order.id }),
 * });
 * await consumer.start();
 * ```
 */
export function createConsumer<T = unknown, R = unknown>(options: KafkaConsumerOptions<T, R>): KafkaConsumer {
  const {
    kafka,
    groupId,
    topics,
    deadLetter,
    retryTopic,
    producer: givenProducer,
    partitionsConsumedConcurrently = 8,
    fromBeginning = false,
    consumerConfig = {},
    commitEveryMessages = 100,
    commitIntervalMs = 1000,
    maxInPlaceWaitMs = 1000,
    revokeGraceMs = 5000,
    ...rest
  } = options;
  if (!kafka) throw new ConfigError('kafka (a kafkajs Kafka instance) is required');
  if (typeof groupId !== 'string' || groupId.length === 0) throw new ConfigError('groupId is required');
  if (!Array.isArray(topics) || topics.length === 0)
    throw new ConfigError('topics must list at least one topic');
  if (!deadLetter?.topic) throw new ConfigError('deadLetter.topic is required');
  if (topics.includes(deadLetter.topic))
    throw new ConfigError('deadLetter.topic must not be a consumed topic');
  for (const [name, v] of Object.entries({
    partitionsConsumedConcurrently,
    commitEveryMessages,
    commitIntervalMs,
    maxInPlaceWaitMs,
    revokeGraceMs,
  })) {
    if (!(typeof v === 'number' && v >= 0 && Number.isFinite(v))) {
      throw new ConfigError(`${name} must be a number >= 0`);
    }
  }
  const logger = rest.logger ?? silentLogger;
  const producer = givenProducer ?? createProducer({ kafka });
  const userDecode = rest.decode;
  const processor = createProcessor<T, R>({
    ...rest,
    consumer: rest.consumer ?? groupId,
    publisher: producer,
    decode: (body: Uint8Array, delivery: Delivery): T => {
      // A tombstone has no payload to process; it can only be a producer's mistake here.
      if (isTombstone(delivery)) throw new MalformedMessageError('record has a null value (tombstone)');
      return userDecode ? userDecode(body, delivery) : (decodeJson(body) as T);
    },
  });

  const heartbeatIntervalMs = Math.max(100, Math.floor(Number(consumerConfig.heartbeatInterval ?? 3000) / 3));
  // A paused partition is fetched again only when the current long poll returns; a shorter
  // poll than kafkajs' 5 s default keeps resumed partitions (retry waits) responsive.
  const consumer = kafka.consumer({ maxWaitTimeInMs: 1000, ...consumerConfig, groupId });
  const stats = emptyStats();
  const stopController = new AbortController();
  const resumeTimers = new Set<NodeJS.Timeout>();
  const orphans = new Set<Promise<unknown>>();
  let state: 'new' | 'running' | 'stopping' | 'stopped' = 'new';
  let stopping: Promise<void> | undefined;

  const env: BatchEnv = {
    processor,
    groupId,
    deadLetterTopic: deadLetter.topic,
    retryTopic,
    producer,
    logger,
    stats,
    commitEveryMessages: Math.max(1, commitEveryMessages),
    commitIntervalMs,
    heartbeatIntervalMs,
    maxInPlaceWaitMs,
    revokeGraceMs,
    stopSignal: stopController.signal,
    scheduleResume(ms, resume) {
      const timer = setTimeout(() => {
        resumeTimers.delete(timer);
        if (!stopController.signal.aborted) resume();
      }, ms);
      resumeTimers.add(timer);
    },
    track(run) {
      orphans.add(run);
      void run.finally(() => orphans.delete(run));
    },
  };

  consumer.on?.(consumer.events?.CRASH ?? 'consumer.crash', (event: { payload?: { error?: unknown } }) => {
    logger.warn('kafka consumer crashed (kafkajs restarts it when the error is retriable)', {
      groupId,
      error: toErrorInfo(event?.payload?.error),
    });
  });

  return {
    consumer,
    processor,
    producer,
    stats,
    async start() {
      if (state !== 'new') throw new ConfigError('a consumer can be started once');
      state = 'running';
      await producer.connect();
      await consumer.connect();
      await consumer.subscribe({ topics: retryTopic ? [...topics, retryTopic] : [...topics], fromBeginning });
      await consumer.run({
        autoCommit: false,
        // Offsets are resolved one by one as records settle; never past an unsettled one.
        eachBatchAutoResolve: false,
        partitionsConsumedConcurrently: Math.max(1, Math.floor(partitionsConsumedConcurrently)),
        eachBatch: (payload) => runBatch(env, payload),
      });
    },
    stop() {
      stopping ??= (async () => {
        if (state === 'new') {
          state = 'stopped';
          return;
        }
        state = 'stopping';
        // Batches see the abort, let their current run finish (bounded), commit and return;
        // disconnect waits for them and then leaves the group.
        stopController.abort();
        for (const t of resumeTimers) clearTimeout(t);
        resumeTimers.clear();
        try {
          await consumer.disconnect();
        } finally {
          await waitAtMost([...orphans], revokeGraceMs);
          if (!givenProducer) await producer.disconnect().catch(() => {});
          state = 'stopped';
        }
      })();
      return stopping;
    },
  };
}

async function waitAtMost(runs: Promise<unknown>[], ms: number): Promise<void> {
  if (runs.length === 0) return;
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    Promise.allSettled(runs),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
    }),
  ]);
  clearTimeout(timer);
}
