/**
 * The ack-last rule, in one place. By the time the pipeline returns a disposition, every store
 * write it needed has been acknowledged and every outgoing message confirmed; what is left is the
 * broker side: a retry or dead-letter copy is confirmed by the broker **before** the original is
 * acked or committed. A crash in between leaves two copies, never none; the store answers the
 * second as a duplicate. Adapters implement the port; they never ack in any other order.
 */
import type { Disposition } from './spi.js';

export type RetryDisposition = Extract<Disposition, { action: 'retry' }>;
export type DeadLetterDisposition = Extract<Disposition, { action: 'dead-letter' }>;
/** A disposition that ends with the original settled (a `defer` keeps it). */
export type SettleDisposition = Exclude<Disposition, { action: 'defer' }>;

/** What a transport does to settle one delivery. */
export interface SettlementPort {
  /** Publishes the retry copy; resolves once the broker confirmed it, throws if it did not. */
  retryCopy(disposition: RetryDisposition): Promise<void>;
  /** Publishes the dead-letter copy with its reason; resolves once confirmed, throws if not. */
  deadLetterCopy(disposition: DeadLetterDisposition): Promise<void>;
  /** Acks (RabbitMQ) or resolves the offset for the next commit (Kafka) of the original. */
  ack(): void;
}

/**
 * Settles a delivery: the confirmed copy first, then the ack. Throws (and acks nothing) when the
 * copy was not confirmed; the caller keeps the delivery and tries again.
 */
export async function settle(disposition: SettleDisposition, port: SettlementPort): Promise<void> {
  if (disposition.action === 'retry') await port.retryCopy(disposition);
  else if (disposition.action === 'dead-letter') await port.deadLetterCopy(disposition);
  port.ack();
}
