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
  | 'publish-failed';

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
  /** The record is COMPLETED (now or before) and outgoing messages are confirmed: ack/commit. */
  | { readonly action: 'ack'; readonly outcome: Outcome; readonly result?: StoredResult }
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
    };

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
    [Headers.Attempts]: String(reason.attempts),
    [Headers.OriginalDestination]: reason.originalDestination,
    [Headers.Consumer]: reason.consumer,
    [Headers.FailedAt]: new Date(reason.at).toISOString(),
  };
}

export { decodeJson, encodeValue } from './codec.js';
export { sleep } from './context.js';
export type { Processor } from './processor.js';
export { createProcessor } from './processor.js';
export { extractContext, injectContext, inSpan, recordError, tracer } from './tracing.js';
