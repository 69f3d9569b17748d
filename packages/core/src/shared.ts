/** What the runs of one processor share: in-process state, never needed for correctness across workers. */
import type { LeaseBoard } from './lease-keeper.js';
import type { BeginResult } from './store/types.js';

/**
 * A lease acquired for a delivery of an ordered group whose handler did not run because an
 * earlier delivery of the group will be tried again (see `processInOrder`). The same processor
 * reuses it when the delivery comes back, instead of finding its own lease busy.
 */
export interface HeldLease {
  readonly begun: Extract<BeginResult, { status: 'acquired' }>;
  readonly fingerprint: string;
  /** Local deadline (monotonic clock) of the lease as last acquired or extended. */
  readonly deadline: number;
}

/**
 * One delivery's place in an ordered group: it may run its handler once `previous` says the
 * delivery before it went well, and it says the same of itself through `go` (exactly once).
 */
export interface Turn {
  readonly previous: Promise<boolean>;
  go(proceed: boolean): void;
}

/** What the runs of one processor share. */
export interface Shared {
  /** Publishes under way, by store key (see finishCompleted). */
  readonly publishing: Map<string, Promise<unknown>>;
  /** Consecutive unconfirmed publishes, by store key (see publishThenAck). */
  readonly publishFailures: Map<string, number>;
  /** The heartbeat of every running handler's lease. */
  readonly leases: LeaseBoard;
  /** Leases of ordered deliveries that were not run yet, by store key. */
  readonly held: Map<string, HeldLease>;
}

/** Keys whose publish failures are remembered at once; the oldest is forgotten first. */
export const MAX_TRACKED_PUBLISH_FAILURES = 10_000;
