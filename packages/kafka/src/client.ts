/**
 * The slice of a KafkaJS-shaped client the adapter uses, typed structurally. kafkajs 2.x fits it
 * as is; keeping the contract this small is what lets another client with the KafkaJS API shape
 * (e.g. `@confluentinc/kafka-javascript`'s KafkaJS layer) be plugged in later without touching
 * the pipeline code, and keeps kafkajs out of this package's public type declarations.
 */

/** A header value as kafkajs hands it over (Buffers) or accepts it (strings too). */
export type KafkaHeaderValue = Uint8Array | string | readonly (Uint8Array | string)[] | undefined;
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
}

export interface OffsetsByTopicPartitionLike {
  topics: { topic: string; partitions: { partition: number; offset: string }[] }[];
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

/** A `Kafka` client instance (`new Kafka({ brokers })`). */
export interface KafkaLike {
  consumer(config: ConsumerConfigLike): ConsumerLike;
  producer(config?: ProducerConfigLike): ProducerLike;
}

/**
 * Errors after which this member no longer owns its assignment until it rejoins the group.
 * kafkajs tags broker errors with `type`.
 */
export function isRebalanceError(error: unknown): boolean {
  const type = (error as { type?: unknown } | null)?.type;
  return (
    type === 'REBALANCE_IN_PROGRESS' ||
    type === 'ILLEGAL_GENERATION' ||
    type === 'UNKNOWN_MEMBER_ID' ||
    type === 'NOT_COORDINATOR_FOR_GROUP' ||
    type === 'FENCED_INSTANCE_ID'
  );
}
