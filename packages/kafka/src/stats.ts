/** Counters a consumer keeps about how it settled records; cheap enough to keep always. */
import type { BaseConsumerStats } from '@exactly-once/core/spi';

export type { BaseConsumerStats } from '@exactly-once/core/spi';
export { countOutcome } from '@exactly-once/core/spi';

/** The Kafka consumer's counters: the shared ones plus two of its own. */
export interface ConsumerStats extends BaseConsumerStats {
  /** Times a partition was paused for a wait longer than `maxInPlaceWaitMs`. */
  paused: number;
  /**
   * Runs still going past `maxInPlaceWaitMs`: their partition was paused until they ended, and
   * their record fetched again (answered from the store: counted again, as a duplicate).
   */
  detached: number;
  /** Offset commits that succeeded. */
  commits: number;
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
    paused: 0,
    detached: 0,
    commits: 0,
  };
}
