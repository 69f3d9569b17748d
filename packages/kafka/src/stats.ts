/** Counters a consumer keeps about how it settled records; cheap enough to keep always. */
export interface ConsumerStats {
  /** Records acked (completed now or before) and resolved. */
  acked: number;
  /** Records produced to the dead-letter topic and resolved. */
  deadLettered: number;
  /** `retry` dispositions (in place, or copied to the retry topic). */
  retried: number;
  /** `defer` dispositions: busy key, lost lease, store down, publish not confirmed. */
  deferred: number;
  /** Times a partition was paused for a wait longer than `maxInPlaceWaitMs`. */
  paused: number;
  /** Runs given up on because the batch was revoked or the consumer stopped. */
  abandoned: number;
  /** Offset commits that succeeded. */
  commits: number;
}

export function emptyStats(): ConsumerStats {
  return { acked: 0, deadLettered: 0, retried: 0, deferred: 0, paused: 0, abandoned: 0, commits: 0 };
}
