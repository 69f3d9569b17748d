/**
 * The transport-facing contract (`@exactly-once/core/spi`): what a broker adapter hands to the
 * pipeline and what it must do with the answer. Application code does not need this module.
 */
import type { ErrorInfo } from './errors.js';
import { Headers, type MessageHeaders } from './headers.js';
import type { OutgoingMessage, StoredResult } from './store/types.js';

export type { HeaderValue, MessageHeaders } from './headers.js';

/** One message as the broker delivered it. */
export interface Delivery {
  readonly body: Uint8Array;
  readonly headers: MessageHeaders;
  /** Queue or topic the message was consumed from. */
  readonly destination: string;
  /** `messaging.system`: `rabbitmq`, `kafka`, ... */
  readonly system: string;
  /**
   * A stable identity the broker gives this message, for the `broker-id` missing-key policy:
   * e.g. `kafka:<topic>:<partition>:<offset>` or a publisher-set AMQP message id. Must be the
   * same on every redelivery.
   */
  readonly brokerId?: string;
  /** Extra `messaging.*` span attributes (partition, offset, delivery tag...). */
  readonly attributes?: Readonly<Record<string, string | number | boolean>>;
}

/** What the pipeline did, for spans, metrics and the adapter's logs. */
export type Outcome =
  | 'acquired'
  | 'takeover'
  | 'duplicate'
  | 'busy'
  | 'mismatch'
  | 'failed'
  | 'invalid'
  | 'lease-lost'
  | 'store-unavailable'
  | 'publish-failed'
  /** Dead-lettered by `payloadGuard`: the same payload came under another key within the window. */
  | 'payload-reuse'
  /** Dead-lettered: the store holds something under the key that is not its record (CorruptRecordError). */
  | 'corrupt-record'
  /** An ordered delivery whose handler waits for an earlier one to be tried again. */
  | 'not-run';

/** Why a message goes to the dead-letter destination; becomes `x-eo-*` headers. */
export interface DeadLetterReason {
  readonly error: ErrorInfo;
  readonly attempts: number;
  readonly consumer: string;
  readonly originalDestination: string;
  /** ms since epoch. */
  readonly at: number;
}

/**
 * The settle decision. The pipeline has already done every store write the decision needs;
 * the adapter must carry it out exactly as described, and settle the delivery on the channel or
 * partition that delivered it.
 */
export type Disposition =
  /**
   * The record is COMPLETED (now or before) and outgoing messages are confirmed: ack/commit.
   * `compacted`: a duplicate answered by a compacted record, whose result is no longer kept.
   */
  | {
      readonly action: 'ack';
      readonly outcome: Outcome;
      readonly result?: StoredResult;
      readonly compacted?: true;
      /** A duplicate that published the record's unconfirmed outgoing messages: how many. */
      readonly republished?: number;
    }
  /**
   * A retryable failure; the lease was released. Schedule a copy of the message for `delayMs`
   * later durably (broker-confirmed), with header `x-eo-attempt` = `nextAttempt`, and only then
   * ack the original. An adapter may instead wait `delayMs` and process the same delivery again.
   */
  | {
      readonly action: 'retry';
      readonly outcome: Outcome;
      readonly delayMs: number;
      readonly nextAttempt: number;
      readonly error: ErrorInfo;
    }
  /**
   * Permanently failed (record FAILED where there is one): publish the message to the
   * dead-letter destination with {@link deadLetterHeaders}, confirmed, then ack the original.
   */
  | { readonly action: 'dead-letter'; readonly outcome: Outcome; readonly reason: DeadLetterReason }
  /**
   * Do NOT ack: another worker holds the key, this worker lost its lease, the store is down, or a
   * publish was not confirmed. Process the same message again after `delayMs` (Kafka: the
   * partition waits; RabbitMQ: requeue after a delay or keep it and retry in place).
   */
  | {
      readonly action: 'defer';
      readonly outcome: Outcome;
      readonly delayMs: number;
      readonly error?: ErrorInfo;
      /**
       * With outcome `not-run`: the delivery gave way to a record taken over, which runs alone
       * (its lease was given back). Records taken over from a worker that died run one at a time,
       * so begin the next ones in small groups (Kafka: one record, doubling).
       */
      readonly gaveWay?: true;
    };

/**
 * The counters every exactly-once consumer keeps, with the same names and meanings in
 * `@exactly-once/kafka` and `@exactly-once/rabbitmq` (each adds its own extras). Counts since
 * the consumer was created.
 *
 * A delivery (a RabbitMQ message, a Kafka record) that is settled counts once in exactly one of
 * `acked`, `retried` (retried through a copy) or `deadLettered`. One given up unsettled counts
 * in `abandoned`; the broker delivers it again and it is `received` again (so is a Kafka record
 * fetched again after its partition was paused).
 */
export interface BaseConsumerStats {
  /** Deliveries taken into the pipeline; a redelivery or re-fetch counts again. */
  received: number;
  /**
   * Deliveries settled after an `ack` disposition: processed now, or a duplicate of a completed
   * key (RabbitMQ: `basic.ack`; Kafka: offset resolved, committed in order).
   */
  acked: number;
  /**
   * `retry` dispositions carried out: the copy confirmed by the broker and the original settled
   * (RabbitMQ delay queue, Kafka `retryTopic`), or, for Kafka without a retry topic, the wait
   * before the same record is processed again.
   */
  retried: number;
  /** Deliveries whose dead-letter copy the broker confirmed, and which were then settled. */
  deadLettered: number;
  /**
   * `defer` dispositions: the delivery was kept and run again later (key busy elsewhere, lease
   * lost, store down, outgoing publish not confirmed).
   */
  deferred: number;
  /**
   * Deliveries given up without being settled (the channel closed, the partition was revoked,
   * or the consumer stopped); the broker delivers them again, to this or another consumer.
   */
  abandoned: number;
  /**
   * Deliveries being handled now: received, and neither settled nor given up yet, plus runs the
   * consumer gave up on that are still finishing (their store writes are fenced).
   */
  inFlight: number;
  /** Pipeline runs by outcome (`acquired`, `duplicate`, `busy`, `invalid`, ...). */
  byOutcome: Partial<Record<Outcome, number>>;
  /**
   * Outgoing messages that a duplicate delivery published, with confirmation, for the run that
   * completed its key: that run had not confirmed them (it died, was stopped, its publish was
   * refused, or its confirm took longer than `publishWaitMs`). Some may have reached the broker
   * before: at most this many copies on the wire, each with the same idempotency key.
   */
  republished: number;
}

/** Counts what a pipeline run answered: its outcome, and the messages a duplicate published. */
export function countOutcome(stats: BaseConsumerStats, d: Disposition): void {
  stats.byOutcome[d.outcome] = (stats.byOutcome[d.outcome] ?? 0) + 1;
  if (d.action === 'ack' && d.republished !== undefined) stats.republished += d.republished;
}

/** Publishes outgoing messages and resolves only when the broker confirmed every one of them. */
export interface OutgoingPublisher {
  publish(messages: readonly OutgoingMessage[]): Promise<void>;
}

/** Reason headers of a dead-lettered message. */
export function deadLetterHeaders(reason: DeadLetterReason): Record<string, string> {
  return {
    [Headers.ErrorClass]: reason.error.name,
    [Headers.ErrorCode]: reason.error.code,
    // Header values end up in broker UIs and logs; keep them bounded.
    [Headers.ErrorMessage]: reason.error.message.slice(0, 1024),
    ...(reason.error.originalCode ? { [Headers.OriginalErrorCode]: reason.error.originalCode } : {}),
    [Headers.Attempts]: String(reason.attempts),
    [Headers.OriginalDestination]: reason.originalDestination,
    [Headers.Consumer]: reason.consumer,
    [Headers.FailedAt]: new Date(reason.at).toISOString(),
  };
}

export { abandonedAfterMsOf, sweepFromPuts } from './blob/abandoned.js';
export { deleteCollectedBlob } from './blob/collected.js';
export { decodeJson, encodeValue } from './codec.js';
export { extraHeaders } from './headers.js';
export { sendIdentity } from './keys.js';
export { type OptionNames, refuseUnknownOptions } from './option-names.js';
export { PROCESSOR_OPTIONS } from './options.js';
export { setOwn } from './own.js';
export type { OrderedRun, Processor } from './processor.js';
export { createProcessor, GIVE_BACK_WAIT_MS, keysGivenBack } from './processor.js';
export type {
  DeadLetterDisposition,
  RetryDisposition,
  SettleDisposition,
  SettlementPort,
} from './settle.js';
export { settle } from './settle.js';
export { oldestFirst } from './store/stuck.js';
export { extractContext, injectContext, inSpan, recordError, tracer } from './tracing.js';
export {
  collectingFailures,
  doublingBackoff,
  MAX_TIMER_MS,
  pause,
  type Repeating,
  repeatEvery,
  settledWithin,
  sleep,
  timerMs,
} from './wait.js';
