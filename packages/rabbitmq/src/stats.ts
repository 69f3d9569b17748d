/** Counters a consumer keeps about how it settled deliveries; cheap enough to keep always. */
import type { BaseConsumerStats } from '@exactly-once/core/spi';

export type { BaseConsumerStats } from '@exactly-once/core/spi';
export { countOutcome } from '@exactly-once/core/spi';

/** The RabbitMQ consumer's counters: the shared ones plus its own. */
export interface ConsumerStats extends BaseConsumerStats {
  /** Retry or dead-letter copies that were not confirmed (nacked, unroutable) and were tried again. */
  settleFailures: number;
  /** Server-side consumer cancellations (queue deleted), each followed by a re-subscribe. */
  cancelled: number;
  /** Channels opened: 1, plus one per reconnect or channel loss. */
  channels: number;
}

export function emptyStats(): ConsumerStats {
  return {
    received: 0,
    acked: 0,
    retried: 0,
    deadLettered: 0,
    deferred: 0,
    abandoned: 0,
    inFlight: 0,
    byOutcome: {},
    republished: 0,
    settleFailures: 0,
    cancelled: 0,
    channels: 0,
  };
}
