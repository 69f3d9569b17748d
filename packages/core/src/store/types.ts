/**
 * The processed-store contract. A store provides atomic primitives only; the exactly-once
 * algorithm lives in the pipeline. Each method is one atomic operation in the store, using the
 * store's own clock for every deadline, and returns expected outcomes as values. A method throws
 * only when the store itself failed, and then it throws {@link StoreUnavailableError}.
 *
 * Keys passed to a store are already scoped (`namespace:consumer:key`) and may contain any
 * character, NUL and `{`, `*`, `$`, `.` included: a store stores them verbatim and never
 * interprets them.
 */

import type { BlobPointer } from '../blob/types.js';
import type { ErrorInfo } from '../errors.js';

/** Record states, as stored. */
export const RecordState = {
  InProgress: 'IN_PROGRESS',
  Completed: 'COMPLETED',
  Failed: 'FAILED',
} as const;
export type RecordState = (typeof RecordState)[keyof typeof RecordState];

/** A handler result as the record keeps it: inline bytes, or a pointer to a blob. */
export type StoredResult =
  | { readonly kind: 'inline'; readonly data: Uint8Array }
  | {
      readonly kind: 'blob';
      readonly pointer: BlobPointer;
      /**
       * The handler returned a stream: the blob holds its bytes as they are. Absent: the blob is
       * the JSON of a result too large to keep inline.
       */
      readonly raw?: true;
    };

/** A message the handler published, kept in the COMPLETED record until the broker confirmed it. */
export interface OutgoingMessage {
  /** Stable id, unique within the record: the child idempotency key of the message. */
  readonly id: string;
  /** Queue, exchange or topic; the transport's publisher interprets it. */
  readonly destination: string;
  /** Routing key (RabbitMQ) or partition key (Kafka); undefined is the same as absent. */
  readonly routingKey?: string | undefined;
  readonly body: Uint8Array;
  /** Headers, the propagated `x-request-id`, `x-idempotency-key` and `traceparent` included. */
  readonly headers: Readonly<Record<string, string>>;
}

/** An outgoing message with its confirmation flag, as read back from a record. */
export interface OutgoingRecord extends OutgoingMessage {
  readonly published: boolean;
}

/**
 * A journaled step's state: `started` (an attempt was about to run its function and never said
 * how it ended: in doubt, see {@link ProcessedStore.markStepStarted}) or `done` (its result is
 * journaled).
 */
export type StepState = 'started' | 'done';

/** A journaled step under a record (see `ctx.step`). */
export interface StepRecord {
  readonly state: StepState;
  /**
   * `done`: the encoded result of the step's function (core writes JSON; empty bytes stand for
   * `undefined`, e.g. a step that gave up without a fallback). `started`: empty.
   */
  readonly result: Uint8Array;
  /** Store time (ms since epoch) when the step was recorded (started, or done). */
  readonly at: number;
}

interface RecordBase {
  readonly key: string;
  readonly fingerprint: string;
  /** Fencing token of the newest lease ever granted on this key. */
  readonly fence: number;
  /** Attempts started so far (1 on the first). */
  readonly attempt: number;
  /**
   * `<trace id>-<span id>` of the run that last held the lease or completed the record, so a
   * duplicate's span can link to it. Opaque to stores.
   */
  readonly traceId?: string;
}

export interface InProgressRecord extends RecordBase {
  readonly state: typeof RecordState.InProgress;
  readonly owner: string;
  /**
   * Store time (ms) when the lease ends; 0 after a `release`, 1 after one that keeps the key a
   * takeover (`ReleaseOptions.takenOver`).
   */
  readonly leaseUntil: number;
  /** The error of the last released attempt, if any. */
  readonly lastError?: ErrorInfo;
  readonly steps: Readonly<Record<string, StepRecord>>;
}

export interface CompletedRecord extends RecordBase {
  readonly state: typeof RecordState.Completed;
  readonly result?: StoredResult;
  readonly outgoing: readonly OutgoingRecord[];
  readonly completedAt: number;
  readonly expiresAt: number;
  /**
   * Answered by a long-term marker (a store's compaction): it still says "already processed", but
   * its result and outgoing messages are no longer kept.
   */
  readonly compacted?: boolean;
}

export interface FailedRecord extends RecordBase {
  readonly state: typeof RecordState.Failed;
  readonly error: ErrorInfo;
  readonly failedAt: number;
  readonly expiresAt: number;
}

export type ProcessedRecord = InProgressRecord | CompletedRecord | FailedRecord;

export interface BeginRequest {
  readonly key: string;
  readonly fingerprint: string;
  /** Id of the worker asking; stored as the lease owner. */
  readonly owner: string;
  readonly leaseMs: number;
  readonly traceId?: string;
  /**
   * The caller gives up waiting for the answer this long (ms) after the call. A request can reach
   * the server later than that (queued by the client through an outage, resent on a reconnect),
   * and the lease it would take then is held by nobody: the key answers `busy` until the lease
   * runs out, and the next run counts as a takeover. A store that can tell takes no lease for such
   * a request and answers `busy` without a record (nothing was written). The pipeline sets it to
   * `storeTimeoutMs`; absent or `Infinity`: never abandoned.
   */
  readonly abandonAfterMs?: number;
}

/**
 * How a lease was acquired: `new` (no live record), `retry` (the previous attempt released it
 * after a retryable error) or `takeover` (the previous holder's lease ran out: it died or stalled).
 */
export type AcquireKind = 'new' | 'retry' | 'takeover';

export type BeginResult =
  | {
      readonly status: 'acquired';
      readonly kind: AcquireKind;
      readonly fence: number;
      readonly attempt: number;
      /** Store time (ms) when the new lease ends. */
      readonly leaseUntil: number;
      /** Steps journaled by earlier attempts of this record. */
      readonly steps: Readonly<Record<string, StepRecord>>;
    }
  | {
      readonly status: 'duplicate';
      readonly record: CompletedRecord;
      /**
       * How long before this answer the record completed, on the store's clock (the answer's
       * store time less `record.completedAt`). A copy that finds outgoing messages not yet
       * confirmed moments after the completion gives the worker that completed it time to publish
       * them. Absent: the store cannot tell, and such a copy publishes them at once.
       */
      readonly completedAgoMs?: number;
    }
  | {
      readonly status: 'busy';
      /** The holder's record; a batch answer (`beginMany`) may leave it out. */
      readonly record?: InProgressRecord;
      readonly retryAfterMs: number;
    }
  | { readonly status: 'mismatch'; readonly record: ProcessedRecord }
  | { readonly status: 'failed'; readonly record: FailedRecord };

export interface CompleteRequest {
  readonly key: string;
  readonly fence: number;
  readonly result?: StoredResult;
  /** Published after the record is durable; stored with `published: false`. */
  readonly outgoing: readonly OutgoingMessage[];
  /** How long the COMPLETED record answers duplicates. */
  readonly retentionMs: number;
  readonly traceId?: string;
}

/** `ok`, or `lost` when the fence is stale or the record is no longer this lease's. */
export type FencedResult = 'ok' | 'lost';

/**
 * `cleared`: the record is gone and the key's next message runs anew; `absent`: nothing was
 * stored; `busy`: a worker holds the key under a live lease, nothing was deleted; `changed`: with
 * {@link ClearOptions.failedFence}, the record is no longer that FAILED one, nothing was deleted.
 */
export type ClearResult = 'cleared' | 'absent' | 'busy' | 'changed';

/** What a `clear` must still find to delete anything (see {@link ProcessedStore.clear}). */
export interface ClearOptions {
  /**
   * Clear only the FAILED record of this fence, as the caller read it with `get`: any other
   * record (COMPLETED since, failed again under a newer fence, IN_PROGRESS) is kept and answered
   * `changed`. A check and a clear as two calls race: a second replay of the same letter could
   * clear the record the first one's copy has just COMPLETED, and run its handler again.
   */
  readonly failedFence?: number;
}

/** How a lease is given back (see {@link ProcessedStore.release}). */
export interface ReleaseOptions {
  /**
   * The handler never started under this lease, or was cut short by the consumer's stop (see
   * `Processor.abortRuns`): no attempt is counted, the last error stays.
   */
  readonly notRun?: boolean;
  /**
   * With `notRun`, for a lease acquired as a takeover: the key stays one, so its next `begin`
   * answers kind `takeover` again (its last run that started still died or stalled), not `retry`.
   */
  readonly takenOver?: boolean;
}

/**
 * The processed-store contract. Implementations: the in-memory store in core (tests only),
 * `@exactly-once/store-redis`, `@exactly-once/store-mongo`. Every implementation runs the
 * conformance kit (`@exactly-once/core/testing`) against its real server.
 */
export interface ProcessedStore {
  /**
   * Atomically claim `key`. Absent or expired record: create IN_PROGRESS with attempt 1 and
   * fence = max(previous fence + 1, store time in ms): starting from the clock means a fence never
   * repeats even after the old record was physically deleted, so a worker stalled past retention
   * cannot write over a newer record. IN_PROGRESS whose lease has passed (or was released): take
   * it over with fence + 1 and attempt + 1. Fingerprint differs from the stored one: `mismatch`,
   * whatever the state.
   */
  begin(request: BeginRequest): Promise<BeginResult>;
  /**
   * Extend the lease to store-now + `leaseMs` if `fence` still holds it: `lost` once the lease
   * was released (an extension given up at its deadline may land after the run's release, and
   * must not make the lease live again). A lease that passed unreleased and was not taken over
   * is still held, and is extended.
   */
  extend(key: string, fence: number, leaseMs: number): Promise<FencedResult>;
  /**
   * IN_PROGRESS(fence) -> COMPLETED with result and outgoing messages, in one write. A record
   * already COMPLETED under `fence` answers `ok` and is left as it is: the repeat of a complete
   * whose answer was lost (only the holder of `fence` completes with it).
   */
  complete(request: CompleteRequest): Promise<FencedResult>;
  /**
   * Give the lease up after a retryable error: the next `begin` acquires at once (kind `retry`)
   * as the next attempt, and the record keeps `error` as its `lastError`. A record already
   * released under `fence` answers `ok` again (the repeat of a release whose answer was lost).
   * With `notRun` (the handler never started under this lease: an ordered delivery given back
   * before its turn) the attempt does not count and the last error stays as it was; `error` is
   * not stored; with `takenOver` as well, the next `begin` answers kind `takeover` (a lease
   * end in the past, not 0). A give-back is not repeated: its repeat would uncount the attempt twice.
   */
  release(key: string, fence: number, error: ErrorInfo, options?: ReleaseOptions): Promise<FencedResult>;
  /**
   * IN_PROGRESS(fence) -> FAILED, kept for `retentionMs`. A record already FAILED by the holder of
   * `fence` answers `ok` and is left as it is: the repeat of a fail whose answer was lost (not a
   * record an operator's `clear` ended).
   */
  fail(key: string, fence: number, error: ErrorInfo, retentionMs: number): Promise<FencedResult>;
  /**
   * Flag outgoing messages of the COMPLETED record completed under `fence` as confirmed. Unknown
   * ids are ignored, and so is the call when the record's fence differs: a straggler from an
   * earlier incarnation of the key must not flag the newer record's messages.
   */
  markPublished(key: string, fence: number, ids: readonly string[]): Promise<void>;
  /**
   * Journal a step's result under the IN_PROGRESS record held by `fence`: the step reads as
   * `done`, replacing a `started` marker of the same name.
   */
  saveStep(key: string, fence: number, name: string, result: Uint8Array): Promise<FencedResult>;
  /**
   * Journal that a step is about to run (`ctx.step` with `reconcile`), fenced like `saveStep`:
   * the step reads as `started` (empty result) until a `saveStep` of the same name replaces it,
   * so a later attempt knows the step's effect is in doubt. Called only for a step not `done`.
   * Optional: without it `ctx.step(..., { reconcile })` throws a ConfigError (a wrapper that
   * does not forward it disables reconciling, loudly).
   */
  markStepStarted?(key: string, fence: number, name: string): Promise<FencedResult>;
  /** Read a record; an expired record reads as absent. */
  get(key: string): Promise<ProcessedRecord | undefined>;
  /**
   * Forget a key (an operator's action, never the pipeline's): delete its COMPLETED, FAILED or
   * lapsed IN_PROGRESS record, so the next message with the key runs the handler again, e.g.
   * before replaying a dead letter whose record is FAILED. A record under a live lease is kept
   * (`busy`). A later record's fence starts at store time, above every fence of the deleted one.
   * With `options.failedFence`, only that FAILED record is deleted, in the same atomic step as
   * the check (`changed` otherwise).
   */
  clear(key: string, options?: ClearOptions): Promise<ClearResult>;
  /** Release connections the store opened itself. */
  close?(): Promise<void>;

  /**
   * Optional hint: how long a record completed (or failed) with `retentionMs` keeps answering
   * duplicates in this store. Without it, exactly `retentionMs`. A tiered store answers with its
   * cold tier's retention; the processor's retention-horizon check uses this value.
   */
  effectiveRetentionMs?(retentionMs: number): number;

  /**
   * Optional operator query (alerts, CLI): IN_PROGRESS records whose current attempt started
   * more than `olderThanMs` ago (store time), the `limit` oldest of them (oldest first),
   * optionally only keys starting with `prefix` (e.g. `namespace:consumer:`). Not part of the
   * pipeline; it may scan. Records written before a store supported it may be left out.
   */
  listInProgress?(query: InProgressQuery): Promise<InProgressEntry[]>;

  /**
   * Optional, for inspection (the CLI's `inspect --history`): the states the key's record went
   * through, oldest first, as far as the store keeps them (the MongoDB store keeps every attempt
   * until the record is swept; a store that keeps the current state only leaves it out). Empty
   * when the key has no record. Not part of the pipeline.
   */
  history?(key: string): Promise<HistoryEntry[]>;

  /**
   * Optional (needed by the processor's `payloadGuard`): claim `fingerprint` within `scope` for
   * `key` during `windowMs` of store time, in one atomic operation. The first key to claim a
   * fingerprint wins; its claim is never extended or moved by later calls while it is live.
   * Answers `undefined` when `key` holds the claim (just made, or made earlier by the same key: a
   * redelivery), and `{ firstKey }` when another key holds a live claim. An expired claim is
   * replaced by the caller's. `scope`, `fingerprint` and `key` may contain any character.
   */
  claimFingerprint?(
    scope: string,
    fingerprint: string,
    key: string,
    windowMs: number,
  ): Promise<FingerprintClaim | undefined>;

  /**
   * Optional (the payload guard uses it when present): delete the claim of `fingerprint` within
   * `scope` if `key` holds it, live or lapsed, in one atomic operation; leave any other key's claim
   * alone. The guard calls it when the claiming message is refused as a key reuse (its key
   * completed with another payload), so that payload stays free for a new key. Without it, that
   * claim lasts its window.
   */
  releaseFingerprint?(scope: string, fingerprint: string, key: string): Promise<void>;

  /**
   * Batch forms, optional: one round trip for many keys. Each answers one result per request,
   * in order, exactly as if the single operation had been called for each request one after
   * another (so the same key twice in one batch: the second `begin` sees the first's lease).
   * A batch need not be atomic as a whole: a crash may apply a prefix of it, and each key's own
   * transition stays atomic. Without them, core calls the single operations concurrently.
   * A batch that some requests' servers answered and others did not should reject with a
   * `PartialBatchError` holding the answers it has: core then fails only the others.
   *
   * A wrapper that overrides a single operation (to count, delay or fail it) must override or
   * drop its batch form too: core prefers the batch form when there is one.
   */
  beginMany?(requests: readonly BeginRequest[]): Promise<BeginResult[]>;
  completeMany?(requests: readonly CompleteRequest[]): Promise<FencedResult[]>;
  markPublishedMany?(requests: readonly MarkPublishedRequest[]): Promise<void>;
}

/** The answer of {@link ProcessedStore.claimFingerprint} when another key got there first. */
export interface FingerprintClaim {
  readonly firstKey: string;
}

/** One record's confirmed outgoing messages, for {@link ProcessedStore.markPublishedMany}. */
export interface MarkPublishedRequest {
  readonly key: string;
  readonly fence: number;
  readonly ids: readonly string[];
}

/** A query for {@link ProcessedStore.listInProgress}. */
export interface InProgressQuery {
  /** Only scoped keys starting with this (verbatim, never a pattern). */
  readonly prefix?: string;
  /** Only records whose current attempt started at least this long ago. */
  readonly olderThanMs: number;
  /** At most this many entries. */
  readonly limit: number;
}

/** One state of a key, as {@link ProcessedStore.history} reports it. */
export interface HistoryEntry {
  /**
   * The record in that state: as it was left when the next state followed it (an attempt's lease
   * as last extended or released, its steps and error), or as it is, for the last entry.
   */
  readonly record: ProcessedRecord;
  /** Store time (ms) when an IN_PROGRESS entry's attempt began, where the store kept it. */
  readonly startedAt?: number;
}

/** One IN_PROGRESS record, as {@link ProcessedStore.listInProgress} reports it. */
export interface InProgressEntry {
  /** The scoped key (`namespace:consumer:key`). */
  readonly key: string;
  readonly owner: string;
  readonly attempt: number;
  readonly fence: number;
  /** Store time (ms) when the lease ends; 0 after a `release`. */
  readonly leaseUntil: number;
  /** Store time (ms) when the current attempt began. */
  readonly startedAt: number;
}
