/**
 * `createConsumer`: a Kafka consumer group member (kafkajs or `@confluentinc/kafka-javascript`)
 * that runs every record through core's pipeline.
 */
import {
  ClosedError,
  ConfigError,
  defaultLogger,
  MalformedMessageError,
  type OutgoingPublisher,
  type ProcessorOptions,
  toErrorInfo,
  validateName,
} from '@exactly-once/core';
import {
  createProcessor,
  type Delivery,
  decodeJson,
  GIVE_BACK_WAIT_MS,
  keysGivenBack,
  type OptionNames,
  PROCESSOR_OPTIONS,
  type Processor,
  refuseUnknownOptions,
  settledWithin,
  timerMs,
} from '@exactly-once/core/spi';
import { type BatchEnv, commitSkipped, runBatch } from './batch.js';
import {
  type AdminLike,
  type ConsumerConfigLike,
  type ConsumerLike,
  consumerClient,
  type KafkaLike,
} from './client.js';
import { isTombstone } from './delivery.js';
import { noticeSkip, pinUncommitted } from './positions.js';
import { createProducer, type ExactlyOnceProducer } from './producer.js';
import { type ConsumerStats, emptyStats } from './stats.js';

export interface KafkaConsumerOptions<T = unknown, R = unknown>
  extends Omit<ProcessorOptions<T, R>, 'consumer' | 'publisher'> {
  /**
   * The client: a kafkajs `Kafka`, or the `Kafka` of `@confluentinc/kafka-javascript`'s
   * KafkaJS API (`require('@confluentinc/kafka-javascript').KafkaJS`); which one is detected.
   */
  kafka: KafkaLike;
  groupId: string;
  topics: readonly string[];
  /**
   * The consumer's name in store keys (`<namespace>:<consumer>:<key>`) and in `x-eo-consumer`
   * on dead letters; `[A-Za-z0-9._-]{1,100}`. Changing it, or the `groupId` while it is unset,
   * starts a new key space: records under the old name are no longer seen, so a message that
   * comes back is processed again. @defaultValue `groupId`
   */
  consumer?: string;
  /**
   * Where permanently failed, malformed and poison records go (produced with acks -1 by an
   * idempotent producer, with reason and origin headers) before their offset is resolved.
   * Must not be one of `topics` or the `retryTopic`.
   */
  deadLetter: { topic: string };
  /**
   * Optional retry topic. Unset (default): a retryable failure waits in place and the same record
   * is tried again, keeping the partition's order. Set: the record is copied to this topic with
   * its next attempt and due time, its offset is resolved, and the consumer (which also subscribes
   * to it) processes the copy when due. Keeps the partition flowing; gives up order for retries.
   * Must be a topic of its own: not one of `topics`, not `deadLetter.topic`.
   */
  retryTopic?: string;
  /**
   * Where the handler's `ctx.publish` messages go: any core `OutgoingPublisher`, e.g. a RabbitMQ
   * publisher. @defaultValue `producer`
   */
  publisher?: OutgoingPublisher;
  /**
   * Produces the dead-letter and retry copies, and is the default `publisher`. A producer you
   * pass is yours: `stop()` leaves it connected.
   * @defaultValue an idempotent producer created from `kafka`, disconnected for good by `stop()`
   */
  producer?: ExactlyOnceProducer;
  /** Partitions processed at the same time (each in order). @defaultValue 8 */
  partitionsConsumedConcurrently?: number;
  /** Where a group with no committed offset starts. @defaultValue false (latest) */
  fromBeginning?: boolean;
  /**
   * Passed to `kafka.consumer()`, in kafkajs' layout on either client. Tune `sessionTimeout`
   * (default 30000), `rebalanceTimeout` (kafkajs 60000, librdkafka 300000) and
   * `heartbeatInterval` (3000) here. kafkajs: the adapter heartbeats during long work itself;
   * `maxWaitTimeInMs` defaults to 1000 here (kafkajs: 5000) so a resumed partition is fetched
   * soon. `@confluentinc/kafka-javascript`: kafkajs' option names go into its `kafkaJS` block
   * for you, any other key (a librdkafka property such as `'js.consumer.max.batch.size'`, or
   * `rebalance_cb`) stays at the top, and a `kafkaJS` block you pass is merged.
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
   * On revocation, how long a run already under way may still finish and be committed; also
   * the default of `stop({ timeoutMs })`. Keep it well under `rebalanceTimeout`.
   * @defaultValue 5000
   */
  revokeGraceMs?: number;
}

/** Options of `stop()`; the same in `@exactly-once/rabbitmq`. */
export interface StopOptions {
  /**
   * How long runs under way may still finish (and be committed) before the consumer gives them
   * up and leaves the group. Keep it under `sessionTimeout`. @defaultValue `revokeGraceMs`
   */
  timeoutMs?: number;
}

/** A running (or startable) exactly-once consumer group member. */
export interface KafkaConsumer {
  /** Connects, subscribes and starts consuming. Resolves once the consumer runs. */
  start(): Promise<void>;
  /**
   * Stops taking records, lets the runs under way finish within `timeoutMs` (default
   * `revokeGraceMs`), commits what was settled, leaves the group and disconnects, and
   * disconnects the producer it created. A run still going then is given up: its record stays
   * uncommitted and is processed again by the next owner (a duplicate once the run completed,
   * else a takeover after its lease). After `stop()` resolved the consumer sends nothing: such a
   * run's outgoing messages and the default producer are refused with a `ClosedError`. Safe to
   * call twice.
   */
  stop(options?: StopOptions): Promise<void>;
  /**
   * Resolves true once no run of this consumer is still going (a run given up by `stop()` or,
   * on Kafka, detached or given up on a revocation, with its store writes), false after
   * `timeoutMs` (default: no limit). Call it after `stop()` and before closing the store client:
   * a run still going when the store closes cannot record its completion, so the next owner
   * takes its key over after the lease and runs the handler again, as after a crash.
   */
  idle(timeoutMs?: number): Promise<boolean>;
  /**
   * The underlying client consumer, e.g. for kafkajs' `on(consumer.events.GROUP_JOIN, ...)`
   * (`@confluentinc/kafka-javascript` has no `on`/`events`: pass a `rebalance_cb` in
   * `consumerConfig` instead).
   */
  readonly consumer: ConsumerLike;
  readonly processor: Processor;
  /** The producer of dead-letter and retry copies (the one passed in, or the one created). */
  readonly producer: ExactlyOnceProducer;
  /** Live counters. */
  readonly stats: Readonly<ConsumerStats>;
}

/** The consumer's own option names; the rest are core's. */
const KAFKA_OPTIONS = {
  kafka: true,
  groupId: true,
  topics: true,
  consumer: true,
  deadLetter: true,
  retryTopic: true,
  publisher: true,
  producer: true,
  partitionsConsumedConcurrently: true,
  fromBeginning: true,
  consumerConfig: true,
  commitEveryMessages: true,
  commitIntervalMs: true,
  maxInPlaceWaitMs: true,
  revokeGraceMs: true,
} as const satisfies OptionNames<
  Omit<KafkaConsumerOptions, Exclude<keyof ProcessorOptions, 'consumer' | 'publisher'>>
>;

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
  if (typeof options === 'object' && options !== null) {
    refuseUnknownOptions(options, { ...PROCESSOR_OPTIONS, ...KAFKA_OPTIONS });
  }
  const {
    kafka,
    groupId,
    topics,
    consumer: consumerName,
    deadLetter,
    retryTopic,
    publisher: givenPublisher,
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
  if (!kafka)
    throw new ConfigError('kafka (a kafkajs or @confluentinc/kafka-javascript Kafka instance) is required');
  if (typeof groupId !== 'string' || groupId.length === 0) throw new ConfigError('groupId is required');
  if (!Array.isArray(topics) || topics.length === 0)
    throw new ConfigError('topics must list at least one topic');
  checkTopics(topics, deadLetter, retryTopic);
  checkIsolation(consumerConfig);
  if (!Number.isInteger(partitionsConsumedConcurrently) || partitionsConsumedConcurrently < 1) {
    throw new ConfigError(
      `partitionsConsumedConcurrently must be an integer >= 1 (got ${String(partitionsConsumedConcurrently)})`,
    );
  }
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
  const name = consumerName ?? defaultName('groupId', groupId);
  const logger = rest.logger ?? defaultLogger;
  const producer = givenProducer ?? createProducer({ kafka });
  // Set once stop() is over: a run that outlived it publishes nothing more, through any
  // publisher (its record stays uncommitted; the next owner publishes its outgoing messages).
  let finished = false;
  const target: OutgoingPublisher = givenPublisher ?? producer;
  const publisher: OutgoingPublisher = {
    publish: (messages) =>
      finished
        ? Promise.reject(new ClosedError('consumer', `the consumer of group "${groupId}" is stopped`))
        : target.publish(messages),
  };
  const userDecode = rest.decode;
  const processor = createProcessor<T, R>({
    ...rest,
    consumer: name,
    publisher,
    decode: (body: Uint8Array, delivery: Delivery): T => {
      // A tombstone has no payload to process; it can only be a producer's mistake here.
      if (isTombstone(delivery)) throw new MalformedMessageError('record has a null value (tombstone)');
      return userDecode ? userDecode(body, delivery) : (decodeJson(body) as T);
    },
  });

  const heartbeatIntervalMs = Math.max(100, Math.floor(Number(consumerConfig.heartbeatInterval ?? 3000) / 3));
  // With fromBeginning false, where a never-committed partition starts is pinned by the consumer
  // (positions.ts), with an admin client of its own, connected at start; the client's reset then
  // always goes to the beginning. Without an admin client, the reset is the client's.
  const adminOf = kafka.admin?.bind(kafka);
  const pinning = !fromBeginning && adminOf !== undefined;
  let admin: Promise<AdminLike> | undefined;
  const adminClient = () => {
    admin ??= (async () => {
      const a = (adminOf as () => AdminLike)();
      await a.connect();
      return a;
    })().catch((error) => {
      admin = undefined;
      throw error;
    });
    return admin;
  };
  const client = consumerClient(
    kafka,
    { ...consumerConfig, groupId },
    { fromBeginning: fromBeginning || pinning },
  );
  const consumer = client.consumer;
  const stats = emptyStats();
  const stopController = new AbortController();
  const resumeTimers = new Set<NodeJS.Timeout>();
  const orphans = new Set<Promise<unknown>>();
  let state: 'new' | 'running' | 'stopping' | 'stopped' = 'new';
  let stopping: Promise<void> | undefined;
  let starting: Promise<void> | undefined;
  let stopDeadline = Number.POSITIVE_INFINITY;
  const remaining = () => Math.max(0, stopDeadline - performance.now());

  const track = (run: Promise<unknown>) => {
    orphans.add(run);
    void run.finally(() => orphans.delete(run));
  };
  // Shared by the pin, which sets them, and the batches, whose commits carry them (positions.ts).
  const marks = new Map<string, string>();
  // Without an admin client nothing can say whether a gap was a loss: nothing is said.
  const skipped =
    adminOf === undefined ? () => {} : noticeSkip({ groupId, admin: adminClient, logger, track });
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
    copiesOnHold: new Map(),
    groupSizes: new Map(),
    anchored: new Set(),
    marks,
    positions: new Map(),
    noticeSkip: skipped,
    graceMs: () => (stopController.signal.aborted ? remaining() : revokeGraceMs),
    stopSignal: stopController.signal,
    scheduleResume(ms, resume) {
      // A detached run can end after stop(): nothing to resume, and no timer to keep the process up.
      if (stopController.signal.aborted) return;
      const timer = setTimeout(() => {
        resumeTimers.delete(timer);
        if (!stopController.signal.aborted) resume();
      }, timerMs(ms));
      timer.unref();
      resumeTimers.add(timer);
    },
    track,
  };

  client.onCrash((error, restart) => {
    const meta = { groupId, error: toErrorInfo(error) };
    if (restart === false) {
      // kafkajs gave up: the process lives on but consumes nothing more until it is restarted.
      logger.error(
        'kafka consumer crashed and kafkajs will not restart it: nothing more is consumed; restart the process',
        meta,
      );
    } else {
      logger.warn('kafka consumer crashed; kafkajs restarts it', meta);
    }
  });

  client.onSkipped((skipped) => void commitSkipped(env, skipped));

  const pin = pinning
    ? pinUncommitted({
        groupId,
        topics,
        retryTopic,
        admin: adminClient,
        logger,
        anchored: env.anchored,
        marks,
        stopSignal: stopController.signal,
        track,
      })
    : undefined;
  client.onAssigned((assignment, control) => {
    // Where this consumer left a partition says nothing of where the next owner left it.
    env.positions.clear();
    return pin?.(assignment, control);
  });

  return {
    consumer,
    processor,
    producer,
    stats,
    async start() {
      if (state !== 'new') throw new ConfigError('a consumer can be started once');
      state = 'running';
      // A stop() while this is under way waits for it, then leaves: without the checks the member
      // would join the group after stop() returned, take partitions and never process them.
      const stoppedMeanwhile = () => {
        if (stopController.signal.aborted)
          throw new ClosedError('consumer', `consumer of ${topics.join(', ')} was stopped while it started`);
      };
      starting = (async () => {
        await producer.connect();
        stoppedMeanwhile();
        await consumer.connect();
        stoppedMeanwhile();
        // Connected before the first assignment, so that its pin waits for no connection (a
        // failure here is tried again by the pin).
        if (pinning) await adminClient().catch(() => {});
        stoppedMeanwhile();
        await client.subscribe([...topics], retryTopic);
        stoppedMeanwhile();
        // Offsets are resolved one by one as records settle (never past an unsettled one) and
        // committed by the batch: no auto-commit, no auto-resolve.
        await client.run(Math.max(1, Math.floor(partitionsConsumedConcurrently)), (payload) =>
          runBatch(env, payload),
        );
        // A stop() during the join: kafkajs finishes joining (it cannot abandon a join), and the
        // stop's disconnect takes the member out again; this start() must not pass for a success.
        stoppedMeanwhile();
      })();
      await starting;
    },
    idle: (timeoutMs = Number.POSITIVE_INFINITY) => settledWithin(orphans, timeoutMs),
    stop({ timeoutMs = revokeGraceMs }: StopOptions = {}) {
      stopping ??= (async () => {
        const wasNew = state === 'new';
        state = 'stopping';
        stopDeadline = performance.now() + timerMs(timeoutMs);
        // Batches see the abort, let their current run finish (until the deadline), commit and
        // return; disconnect waits for them and then leaves the group.
        stopController.abort();
        for (const t of resumeTimers) clearTimeout(t);
        resumeTimers.clear();
        try {
          await starting?.catch(() => {});
          if (!wasNew) await consumer.disconnect();
        } finally {
          // Runs given up earlier (a revocation) get what is left of the same deadline; the
          // handlers still running then are asked to end (ctx.signal), and one that then fails
          // gives its key back (see Processor.abortRuns).
          if (!(await settledWithin(orphans, remaining()))) {
            const cut = processor.abortRuns();
            // Said as the RabbitMQ consumer says it: these records are the next owner's to run.
            if (cut > 0) {
              logger.warn(
                'stopping with runs still going after timeoutMs; their records go to the next owner',
                {
                  groupId,
                  runs: cut,
                },
              );
            }
          }
          // Leases of records begun but not run go back before stop() resolves: a store closed
          // right after it would cut them off, and the next owner would wait out each lease.
          await keysGivenBack(processor, Promise.resolve(), Math.max(remaining(), GIVE_BACK_WAIT_MS));
          finished = true;
          await admin?.then((a) => a.disconnect()).catch(() => {});
          if (!givenProducer) await producer.disconnect().catch(() => {});
          state = 'stopped';
        }
      })();
      return stopping;
    },
  };
}

/**
 * Records of an aborted transaction are never handed to a handler: their producer took them back.
 * Reading uncommitted records (kafkajs' `readUncommitted`, librdkafka's `isolation.level`) would.
 */
function checkIsolation(config: Record<string, unknown>): void {
  const kafkaJs = config.kafkaJS as Record<string, unknown> | undefined;
  if (
    config.readUncommitted === true ||
    kafkaJs?.readUncommitted === true ||
    config['isolation.level'] === 'read_uncommitted'
  ) {
    throw new ConfigError(
      'consumerConfig: reading uncommitted records would run handlers on records of aborted ' +
        'transactions, which their producer took back; the consumer reads committed records only. ' +
        'Remove readUncommitted (isolation.level).',
    );
  }
}

function checkTopics(
  topics: readonly string[],
  deadLetter: { topic: string } | undefined,
  retryTopic: string | undefined,
): void {
  if (typeof deadLetter === 'object' && deadLetter !== null) {
    refuseUnknownOptions(deadLetter, { topic: true }, 'deadLetter');
  }
  const dlq = deadLetter?.topic;
  if (typeof dlq !== 'string' || dlq.length === 0) {
    throw new ConfigError('deadLetter.topic is required (e.g. deadLetter: { topic: "orders.dlq" })');
  }
  if (topics.includes(dlq)) {
    throw new ConfigError(
      `deadLetter.topic "${dlq}" is also in topics: every dead letter would be consumed and fail ` +
        'again, in a loop. Use a separate topic for dead letters.',
    );
  }
  if (retryTopic === undefined) return;
  if (typeof retryTopic !== 'string' || retryTopic.length === 0) {
    throw new ConfigError('retryTopic must be a topic name, or unset to retry in place');
  }
  if (retryTopic === dlq) {
    throw new ConfigError(
      `retryTopic "${retryTopic}" is also deadLetter.topic: the consumer subscribes to its retry ` +
        'topic, so every dead letter would be consumed and processed again, in a loop. Use a ' +
        `separate topic for each (e.g. retryTopic "${topics[0]}.retry", deadLetter.topic "${topics[0]}.dlq").`,
    );
  }
  if (topics.includes(retryTopic)) {
    throw new ConfigError(
      `retryTopic "${retryTopic}" is also in topics: the consumer subscribes to its retry topic by ` +
        'itself and takes every record there for a retry copy it wrote (due time, original broker ' +
        'id). Remove it from topics, or use a separate topic for retries.',
    );
  }
}

/** The default consumer name, or a ConfigError saying how to set one. */
function defaultName(source: string, value: string): string {
  try {
    return validateName('consumer', value);
  } catch {
    throw new ConfigError(
      `consumer defaults to the ${source} ("${value}"), which is not a valid consumer name ` +
        '([A-Za-z0-9._-]{1,100}); set consumer explicitly',
    );
  }
}
