/**
 * The slice of a KafkaJS-shaped client the adapter uses, typed structurally, and the one place
 * that knows the two clients it runs on: kafkajs 2.x, and the KafkaJS-compatible API of
 * `@confluentinc/kafka-javascript` (librdkafka). The consumer and producer code only ever see
 * the kafkajs contract below; {@link consumerClient} and {@link producerClient} bridge the
 * differences (config layout, commits, heartbeats, revocations, per-send options). Neither
 * client's types appear in this package's public declarations.
 */

import { createRequire } from 'node:module';

/** A header value as kafkajs hands it over (Buffers; null for a header written without a value) or accepts it (strings too). */
export type KafkaHeaderValue =
  | Uint8Array
  | string
  | null
  | readonly (Uint8Array | string | null)[]
  | undefined;
export type KafkaHeaders = Record<string, KafkaHeaderValue>;

/** A consumed record. Offsets are decimal strings (64-bit). */
export interface KafkaMessageLike {
  readonly key: Uint8Array | null;
  readonly value: Uint8Array | null;
  readonly offset: string;
  readonly timestamp: string;
  readonly headers?: KafkaHeaders;
}

export interface KafkaBatchLike {
  readonly topic: string;
  readonly partition: number;
  readonly messages: readonly KafkaMessageLike[];
  /**
   * The last offset the fetch covered, records a reader never gets included (a transaction's
   * commit or abort marker after the last record); kafkajs has it.
   */
  lastOffset?(): string;
}

/** An offset to commit as a partition's next, with the commit's metadata (see positions.ts). */
export interface PartitionOffset {
  partition: number;
  offset: string;
  metadata?: string;
}

export interface OffsetsByTopicPartitionLike {
  topics: { topic: string; partitions: PartitionOffset[] }[];
}

/** What `eachBatch` receives. */
export interface EachBatchPayloadLike {
  readonly batch: KafkaBatchLike;
  /** Marks `offset` as consumed: the next fetch of the partition starts after it. */
  resolveOffset(offset: string): void;
  heartbeat(): Promise<void>;
  /** Pauses the batch's partition; the returned function resumes it. */
  pause(): () => void;
  /** With explicit offsets: commits exactly those, now. */
  commitOffsetsIfNecessary(offsets?: OffsetsByTopicPartitionLike): Promise<void>;
  isRunning(): boolean;
  /** True when a seek made the rest of this batch obsolete. */
  isStale(): boolean;
}

export interface ConsumerRunConfigLike {
  autoCommit?: boolean;
  eachBatchAutoResolve?: boolean;
  partitionsConsumedConcurrently?: number;
  eachBatch: (payload: EachBatchPayloadLike) => Promise<void>;
}

export interface ConsumerLike {
  connect(): Promise<void>;
  disconnect(): Promise<void>;
  subscribe(subscription: { topics: (string | RegExp)[]; fromBeginning?: boolean }): Promise<void>;
  run(config: ConsumerRunConfigLike): Promise<void>;
  // biome-ignore lint/suspicious/noExplicitAny: kafkajs' listener signatures vary per event
  on?(event: any, listener: (event: any) => void): unknown;
  readonly events?: Readonly<Record<string, string>>;
}

export interface ProducerRecordMessageLike {
  key?: string | Buffer | null;
  value: string | Buffer | null;
  /** An array value is produced as the same header repeated, once per element, in order. */
  headers?: Record<string, string | Buffer | (string | Buffer)[]>;
}

export interface ProducerLike {
  connect(): Promise<void>;
  disconnect(): Promise<void>;
  sendBatch(batch: {
    topicMessages: { topic: string; messages: ProducerRecordMessageLike[] }[];
    acks?: number;
    timeout?: number;
  }): Promise<unknown>;
}

/** Consumer options the adapter sets; anything else can be passed through `consumerConfig`. */
export interface ConsumerConfigLike {
  groupId: string;
  sessionTimeout?: number;
  rebalanceTimeout?: number;
  heartbeatInterval?: number;
  allowAutoTopicCreation?: boolean;
  [option: string]: unknown;
}

export interface ProducerConfigLike {
  idempotent?: boolean;
  maxInFlightRequests?: number;
  allowAutoTopicCreation?: boolean;
  [option: string]: unknown;
}

/**
 * `@confluentinc/kafka-javascript`'s config layout: kafkajs' options in a `kafkaJS` block,
 * librdkafka properties beside it.
 */
export interface KafkaJSBlockConfigLike {
  kafkaJS?: object;
}

/**
 * A `Kafka` client instance: kafkajs' `new Kafka({ brokers })`, or
 * `@confluentinc/kafka-javascript`'s `new KafkaJS.Kafka({ kafkaJS: { brokers } })`. The config
 * each takes is its own type (kafkajs' `ConsumerConfig`, or librdkafka properties with a
 * `kafkaJS` block): no one TypeScript type fits both, so the parameter is left open; the adapter
 * builds a {@link ConsumerConfigLike} or {@link KafkaJSBlockConfigLike} for the client it found.
 */
export interface KafkaLike {
  // biome-ignore lint/suspicious/noExplicitAny: each client's own config type (see above)
  consumer(config: any): ConsumerLike;
  // biome-ignore lint/suspicious/noExplicitAny: each client's own config type (see above)
  producer(config?: any): ProducerLike;
  admin?(): AdminLike;
}

/** The admin calls the consumer makes (both clients have them). */
export interface AdminLike {
  connect(): Promise<void>;
  disconnect(): Promise<void>;
  fetchOffsets(request: {
    groupId: string;
    topics: string[];
  }): Promise<
    { topic: string; partitions: { partition: number; offset: string; metadata?: string | null }[] }[]
  >;
  fetchTopicOffsets(topic: string): Promise<{ partition: number; high: string; low: string }[]>;
}

export type AssignmentListener = (
  assignment: TopicPartitions[],
  control: PartitionControl,
) => Promise<void> | undefined;

/** An offset to commit on a topic's partition. */
export interface TopicPartitionOffset extends PartitionOffset {
  topic: string;
}

/** `offset` with `metadata` when there is one (a commit without it clears the partition's). */
export function withMetadata<O extends TopicPartitionOffset | PartitionOffset>(
  offset: O,
  metadata?: string,
): O {
  return metadata === undefined ? offset : { ...offset, metadata };
}

export interface TopicPartitions {
  readonly topic: string;
  readonly partitions: number[];
}

/** What an assignment's listener may do with its partitions before they are fetched. */
export interface PartitionControl {
  /** The partitions paused now. */
  paused(): TopicPartitions[];
  pause(partitions: TopicPartitions[]): void;
  resume(partitions: TopicPartitions[]): void;
  /** Moves the partition's fetch position (applied at its next fetch). */
  seek(at: { topic: string; partition: number; offset: string }): void;
  /** Commits these offsets as the partitions' next. */
  commit(offsets: TopicPartitionOffset[]): Promise<void>;
}

/** The kafkajs errors (`type`) and Kafka protocol error codes (`code`) of a lost membership. */
const REBALANCE_TYPES = new Set([
  'REBALANCE_IN_PROGRESS',
  'ILLEGAL_GENERATION',
  'UNKNOWN_MEMBER_ID',
  'NOT_COORDINATOR_FOR_GROUP',
  'FENCED_INSTANCE_ID',
]);
/** NOT_COORDINATOR 16, ILLEGAL_GENERATION 22, UNKNOWN_MEMBER_ID 25, REBALANCE_IN_PROGRESS 27, FENCED_INSTANCE_ID 82. */
const REBALANCE_CODES = new Set([16, 22, 25, 27, 82]);

/**
 * Errors after which this member no longer owns its assignment until it rejoins the group.
 * kafkajs tags broker errors with `type`; `@confluentinc/kafka-javascript` with the protocol
 * error `code` (its `type` is librdkafka's `ERR_...` name, ambiguous for code 16).
 */
export function isRebalanceError(error: unknown): boolean {
  const e = error as { type?: unknown; code?: unknown } | null;
  return (
    (typeof e?.type === 'string' && REBALANCE_TYPES.has(e.type)) ||
    (typeof e?.code === 'number' && REBALANCE_CODES.has(e.code))
  );
}

/**
 * The client's own tags on an error, for logs: kafkajs' `type` (e.g. `MESSAGE_TOO_LARGE`), or
 * librdkafka's `ERR_...` name and Kafka error `code`. A refusal by the producer's own
 * `message.max.bytes` and one by the topic's `max.message.bytes` both read "Message size too
 * large": these say which client spoke, undefined when the error has neither.
 */
export function kafkaErrorTags(error: unknown): { type?: string; code?: number } | undefined {
  // kafkajs wraps a send's last failure after its retries (`originalError`); wrappers use `cause`.
  for (let e = error as Tagged | null | undefined, depth = 0; e && depth < 3; depth++) {
    const type = typeof e.type === 'string' ? e.type : undefined;
    const code = typeof e.code === 'number' ? e.code : undefined;
    if (type !== undefined || code !== undefined) {
      return { ...(type === undefined ? {} : { type }), ...(code === undefined ? {} : { code }) };
    }
    e = (e.originalError ?? e.cause) as Tagged | null | undefined;
  }
  return undefined;
}

interface Tagged {
  type?: unknown;
  code?: unknown;
  originalError?: unknown;
  cause?: unknown;
}

/** The client a `Kafka` instance comes from. */
export type KafkaClientKind = 'kafkajs' | 'confluent';

/**
 * kafkajs' own option names. `@confluentinc/kafka-javascript` takes them only inside a `kafkaJS`
 * block (it throws on the client-specific ones at the top level, which is how it is told apart);
 * every other key is a librdkafka property (`'linger.ms'`, `rebalance_cb`...) and stays at the
 * top. kafkajs is no longer developed, so these lists are complete.
 */
const KAFKAJS_COMMON_KEYS = [
  'brokers',
  'clientId',
  'sasl',
  'ssl',
  'requestTimeout',
  'enforceRequestTimeout',
  'connectionTimeout',
  'authenticationTimeout',
  'retry',
  'socketFactory',
  'reauthenticationThreshold',
  'logLevel',
  'logger',
];
const KAFKAJS_CONSUMER_KEYS = new Set([
  ...KAFKAJS_COMMON_KEYS,
  'groupId',
  'partitionAssigners',
  'partitionAssignors',
  'sessionTimeout',
  'rebalanceTimeout',
  'heartbeatInterval',
  'metadataMaxAge',
  'allowAutoTopicCreation',
  'maxBytesPerPartition',
  'minBytes',
  'maxBytes',
  'maxWaitTimeInMs',
  'readUncommitted',
  'maxInFlightRequests',
  'rackId',
  'fromBeginning',
  'autoCommit',
  'autoCommitInterval',
  'autoCommitThreshold',
]);
const KAFKAJS_PRODUCER_KEYS = new Set([
  ...KAFKAJS_COMMON_KEYS,
  'createPartitioner',
  'metadataMaxAge',
  'allowAutoTopicCreation',
  'transactionTimeout',
  'idempotent',
  'maxInFlightRequests',
  'transactionalId',
  'compression',
  'acks',
  'timeout',
]);

/**
 * `@confluentinc/kafka-javascript`'s layout of the same options: kafkajs' keys (and a `kafkaJS`
 * block given as is) in `kafkaJS`, with `own` winning; librdkafka properties at the top.
 */
function confluentConfig(
  config: Record<string, unknown>,
  kafkajsKeys: ReadonlySet<string>,
  own: Record<string, unknown>,
): Record<string, unknown> {
  const { kafkaJS, ...rest } = config;
  const block: Record<string, unknown> = { ...(kafkaJS as Record<string, unknown> | undefined) };
  const top: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(rest)) {
    if (kafkajsKeys.has(key)) block[key] = value;
    else top[key] = value;
  }
  return { ...top, kafkaJS: { ...block, ...own } };
}

/** A client object only `@confluentinc/kafka-javascript` makes (`dependentAdmin` is its own API). */
function looksConfluent(client: unknown): boolean {
  return typeof (client as { dependentAdmin?: unknown } | null)?.dependentAdmin === 'function';
}

/**
 * Creates a consumer or producer with the layout its client wants: kafkajs' first, and when the
 * client refuses kafkajs' keys at the top level (`@confluentinc/kafka-javascript` throws "must be
 * moved to the kafkaJS block"), its own. Creating either does not connect anything.
 */
function create<T>(
  make: (config: Record<string, unknown>) => T,
  kafkajs: Record<string, unknown>,
  confluent: () => Record<string, unknown>,
): { client: T; kind: KafkaClientKind } {
  let client: T;
  try {
    client = make(kafkajs);
  } catch (error) {
    try {
      return { client: make(confluent()), kind: 'confluent' };
    } catch {
      throw error;
    }
  }
  // A client that took kafkajs' layout but is the librdkafka one would run misconfigured.
  if (looksConfluent(client)) return { client: make(confluent()), kind: 'confluent' };
  return { client, kind: 'kafkajs' };
}

/** The consumer as the batch code drives it, whichever client is underneath. */
export interface ConsumerClient {
  readonly kind: KafkaClientKind;
  /** The client's own consumer object. */
  readonly consumer: ConsumerLike;
  /**
   * Subscribes to `topics` with the consumer's `fromBeginning`, and to `retryTopic` from its
   * beginning where the client allows it per topic (kafkajs): the retry topic holds only this
   * consumer's copies, and one written before the group's first commit there must not be skipped.
   */
  subscribe(topics: string[], retryTopic?: string): Promise<void>;
  /** Runs `eachBatch` with offsets resolved and committed only by the caller. */
  run(
    partitionsConsumedConcurrently: number,
    eachBatch: (payload: EachBatchPayloadLike) => Promise<void>,
  ): Promise<void>;
  /**
   * Reports client crashes (kafkajs' CRASH event; librdkafka restarts by itself and has none),
   * with whether kafkajs restarts the consumer (its event says; undefined when it does not).
   */
  onCrash(listener: (error: unknown, restart: boolean | undefined) => void): void;
  /**
   * Reports a fetched batch that held only records a reader never gets (transaction markers, an
   * aborted transaction's records), with the offset after it. kafkajs hands eachBatch no such
   * batch: it moves its fetch position past it and says so only in its END_BATCH_PROCESS event.
   * Not called on librdkafka.
   */
  onSkipped(listener: (skipped: SkippedBatch) => void): void;
  /**
   * Calls `listener` with each assignment the member receives, before any of it is fetched.
   * kafkajs: from its GROUP_JOIN event, before its fetch loop goes on (the listener pauses what it
   * must hold). librdkafka: from the rebalance callback, before the assignment is applied, which
   * waits for the promise the listener returns (pausing and seeking do nothing there: the
   * partitions start from their commits once it resolves).
   */
  onAssigned(listener: AssignmentListener): void;
}

/** A batch of records a reader never gets (see {@link ConsumerClient.onSkipped}). */
export interface SkippedBatch {
  readonly topic: string;
  readonly partition: number;
  /** The offset after the batch: the partition's fetch position now. */
  readonly next: string;
  /** Commits `next` as the partition's position, with `metadata`. */
  commit(metadata?: string): Promise<void>;
}

/** The parts of `@confluentinc/kafka-javascript`'s consumer used beyond the kafkajs contract. */
interface CommittingConsumer extends ConsumerLike {
  commitOffsets(offsets: TopicPartitionOffset[]): Promise<void>;
}

/** kafkajs' consumer calls behind {@link PartitionControl}. */
interface KafkajsConsumer extends CommittingConsumer {
  paused(): TopicPartitions[];
  pause(partitions: TopicPartitions[]): void;
  resume(partitions: TopicPartitions[]): void;
  seek(at: { topic: string; partition: number; offset: string }): void;
}

interface GroupJoinEvent {
  payload?: { memberAssignment?: Record<string, number[]> };
}

interface BatchEndEvent {
  payload?: {
    topic: string;
    partition: number;
    batchSize: number;
    firstOffset: string | null;
    lastOffset: string;
  };
}

interface RebalanceEvent {
  code?: unknown;
}
type RebalanceCallback = (
  error: RebalanceEvent,
  assignment: { topic: string; partition: number }[],
  ...rest: unknown[]
) => unknown;

/** librdkafka's rebalance event code for a revocation (ERR__REVOKE_PARTITIONS). */
const REVOKE_PARTITIONS = -174;
/** librdkafka's rebalance event code for an assignment (ERR__ASSIGN_PARTITIONS). */
const ASSIGN_PARTITIONS = -175;

/**
 * Creates the group member. On `@confluentinc/kafka-javascript`:
 * - `fromBeginning` and `autoCommit: false` are consumer options (kafkajs: subscribe and run);
 * - `heartbeat()` is a no-op: librdkafka heartbeats from its own thread (its KafkaJS layer marks
 *   a batch stale once twice `rebalanceTimeout` passed without a fetch);
 * - a commit with explicit offsets goes through `consumer.commitOffsets` (the payload's commits
 *   every stored offset, ignoring its argument);
 * - a revocation reaches the batches of the revoked partitions as `isStale()` (from the
 *   `rebalance_cb`, chained to yours), so they stop taking records as on kafkajs;
 * - a rebalance error thrown by a batch is not rethrown: librdkafka rejoins by itself, and the
 *   client logs every error a batch throws.
 */
export function consumerClient(
  kafka: KafkaLike,
  config: ConsumerConfigLike,
  options: { fromBeginning: boolean },
): ConsumerClient {
  // Batches running now, by partition, each with the flag its isStale() reads.
  const running = new Map<string, Set<{ revoked: boolean }>>();
  const tp = (topic: string, partition: number) => `${partition}:${topic}`;
  const userRebalance = config.rebalance_cb;
  let onAssign: ((assignment: TopicPartitions[]) => Promise<void> | undefined) | undefined;
  const rebalance: RebalanceCallback = (event, assignment, ...rest) => {
    if (event?.code === REVOKE_PARTITIONS) {
      for (const { topic, partition } of assignment) {
        for (const batch of running.get(tp(topic, partition)) ?? []) batch.revoked = true;
      }
    }
    const user = () =>
      typeof userRebalance === 'function' ? userRebalance(event, assignment, ...rest) : undefined;
    if (event?.code !== ASSIGN_PARTITIONS || onAssign === undefined) return user();
    // The client applies the assignment once this callback's promise resolves.
    const byTopic = new Map<string, number[]>();
    for (const { topic, partition } of assignment)
      byTopic.set(topic, [...(byTopic.get(topic) ?? []), partition]);
    const held = onAssign([...byTopic].map(([topic, partitions]) => ({ topic, partitions })));
    return held ? held.then(user) : user();
  };
  const { client: consumer, kind } = create(
    (c) => kafka.consumer(c),
    // A paused partition is fetched again only when the current long poll returns; a shorter
    // poll than kafkajs' 5 s default keeps resumed partitions (retry waits) responsive.
    { maxWaitTimeInMs: 1000, ...config },
    () =>
      confluentConfig({ ...config, rebalance_cb: rebalance }, KAFKAJS_CONSUMER_KEYS, {
        groupId: config.groupId,
        fromBeginning: options.fromBeginning,
        autoCommit: false,
      }),
  );

  if (kind === 'kafkajs') {
    const kafkajs = consumer as KafkajsConsumer;
    return {
      kind,
      consumer,
      async subscribe(topics, retryTopic) {
        await consumer.subscribe({ topics, fromBeginning: options.fromBeginning });
        if (retryTopic !== undefined) await consumer.subscribe({ topics: [retryTopic], fromBeginning: true });
      },
      run: (partitionsConsumedConcurrently, eachBatch) =>
        consumer.run({
          autoCommit: false,
          eachBatchAutoResolve: false,
          partitionsConsumedConcurrently,
          eachBatch,
        }),
      onCrash(listener) {
        consumer.on?.(
          consumer.events?.CRASH ?? 'consumer.crash',
          (event: { payload?: { error?: unknown; restart?: unknown } }) =>
            listener(
              event?.payload?.error,
              typeof event?.payload?.restart === 'boolean' ? event.payload.restart : undefined,
            ),
        );
      },
      onSkipped(listener) {
        consumer.on?.(
          consumer.events?.END_BATCH_PROCESS ?? 'consumer.end_batch_process',
          (event: BatchEndEvent) => {
            const batch = event?.payload;
            // No first offset: nothing at or after the fetched one came back (kafkajs then moves on
            // by itself); only records it read and filtered out are skipped here.
            if (batch?.batchSize !== 0 || batch.firstOffset === null) return;
            const { topic, partition } = batch;
            const next = (BigInt(batch.lastOffset) + 1n).toString();
            listener({
              topic,
              partition,
              next,
              commit: (metadata) =>
                kafkajs.commitOffsets([withMetadata({ topic, partition, offset: next }, metadata)]),
            });
          },
        );
      },
      onAssigned(listener) {
        const control: PartitionControl = {
          paused: () => kafkajs.paused(),
          pause: (partitions) => kafkajs.pause(partitions),
          resume: (partitions) => kafkajs.resume(partitions),
          seek: (at) => kafkajs.seek(at),
          commit: (offsets) => kafkajs.commitOffsets(offsets),
        };
        consumer.on?.(consumer.events?.GROUP_JOIN ?? 'consumer.group_join', (event: GroupJoinEvent) => {
          const assigned = event?.payload?.memberAssignment ?? {};
          // Not awaited: kafkajs goes on at once; the listener holds what it must by pausing.
          void listener(
            Object.entries(assigned).map(([topic, partitions]) => ({ topic, partitions })),
            control,
          );
        });
      },
    };
  }

  const confluent = consumer as CommittingConsumer;
  return {
    kind,
    consumer,
    // librdkafka's reset is consumer-wide (`fromBeginning` in its config): the retry topic shares it.
    subscribe: (topics, retryTopic) =>
      consumer.subscribe({ topics: retryTopic === undefined ? topics : [...topics, retryTopic] }),
    run: (partitionsConsumedConcurrently, eachBatch) =>
      consumer.run({
        eachBatchAutoResolve: false,
        partitionsConsumedConcurrently,
        async eachBatch(payload) {
          const key = tp(payload.batch.topic, payload.batch.partition);
          const state = { revoked: false };
          const batches = running.get(key) ?? new Set();
          running.set(key, batches.add(state));
          try {
            await eachBatch({
              batch: payload.batch,
              resolveOffset: (offset) => payload.resolveOffset(offset),
              heartbeat: async () => {},
              pause() {
                const resume = payload.pause() as (() => void) | undefined;
                return () => {
                  // Throws once the consumer is disconnected; nothing is left to resume then.
                  try {
                    resume?.();
                  } catch {}
                };
              },
              commitOffsetsIfNecessary: (offsets) =>
                offsets
                  ? confluent.commitOffsets(
                      offsets.topics.flatMap(({ topic, partitions }) =>
                        partitions.map((p) => ({ topic, ...p })),
                      ),
                    )
                  : payload.commitOffsetsIfNecessary(),
              isRunning: () => payload.isRunning(),
              isStale: () => state.revoked || payload.isStale(),
            });
          } catch (error) {
            if (!isRebalanceError(error)) throw error;
          } finally {
            batches.delete(state);
            if (batches.size === 0) running.delete(key);
          }
        },
      }),
    onCrash() {},
    onSkipped() {},
    onAssigned(listener) {
      const control: PartitionControl = {
        paused: () => [],
        pause() {},
        resume() {},
        seek() {},
        commit: (offsets) => confluent.commitOffsets(offsets),
      };
      onAssign = (assignment) => listener(assignment, control);
    },
  };
}

/** The producer as the adapter drives it, whichever client is underneath. */
export interface ProducerClient {
  readonly kind: KafkaClientKind;
  /** The client's own producer object. */
  readonly producer: ProducerLike;
  /** Produces, acks -1; resolves when every record is acknowledged. */
  send(topicMessages: { topic: string; messages: ProducerRecordMessageLike[] }[]): Promise<unknown>;
  /**
   * True when the client batches concurrent sends into shared requests by itself (librdkafka,
   * `linger.ms`); kafkajs sends one request per call.
   */
  readonly batchesSends: boolean;
}

/**
 * Creates an idempotent producer, acks -1. kafkajs: `maxInFlightRequests: 1` keeps the
 * partition order across retries, `acks` and `timeout` go with each send.
 * `@confluentinc/kafka-javascript`: `acks` and `timeout` are producer options (it refuses them
 * per send); librdkafka's idempotent producer keeps the order with up to 5 requests in flight,
 * so its default stays; each send gets copies of the records, since the client rewrites the
 * records it is given (headers, partition) and a retried send must find them as they were.
 */
export function producerClient(
  kafka: KafkaLike,
  config: ProducerConfigLike,
  timeoutMs: number,
): ProducerClient {
  const { client: producer, kind } = create(
    (c) => kafka.producer(c),
    {
      ...config,
      idempotent: true,
      maxInFlightRequests: 1,
      createPartitioner: stablePartitioner(config.createPartitioner as PartitionerFactory | undefined),
    },
    () => confluentConfig(config, KAFKAJS_PRODUCER_KEYS, { idempotent: true, acks: -1, timeout: timeoutMs }),
  );
  if (kind === 'kafkajs') {
    return {
      kind,
      producer,
      batchesSends: false,
      send: (topicMessages) => producer.sendBatch({ topicMessages, acks: -1, timeout: timeoutMs }),
    };
  }
  return {
    kind,
    producer,
    batchesSends: true,
    send: (topicMessages) =>
      producer.sendBatch({
        topicMessages: topicMessages.map(({ topic, messages }) => ({
          topic,
          messages: messages.map((m) => ({ ...m })),
        })),
      }),
  };
}

/** kafkajs' partitioner contract (`createPartitioner`). */
type PartitionerFactory = () => (args: {
  topic: string;
  partitionMetadata: readonly { partitionId: number; leader: number }[];
  message: object;
}) => number;

/**
 * kafkajs asks the partitioner again on every retry of a request, and its default sends a record
 * without a key to the next partition in turn. A retry could then send a partition whose batch the
 * broker had appended other records in a batch of the same count, which the broker takes for a
 * retry of the appended one and drops, and records appended in one partition to another, which
 * writes them a second time. Here each record keeps the partition first chosen for it (kafkajs
 * passes the same record objects to every retry). Without a partitioner of the caller's, kafkajs'
 * default (loaded only when kafkajs creates the producer).
 */
function stablePartitioner(create: PartitionerFactory | undefined): PartitionerFactory {
  return () => {
    const pick = (
      create ??
      (
        createRequire(import.meta.url)('kafkajs') as {
          Partitioners: { DefaultPartitioner: PartitionerFactory };
        }
      ).Partitioners.DefaultPartitioner
    )();
    const chosen = new WeakMap<object, number>();
    return (args) => {
      const known = chosen.get(args.message);
      if (known !== undefined && known < args.partitionMetadata.length) return known;
      const partition = pick(args);
      chosen.set(args.message, partition);
      return partition;
    };
  };
}
