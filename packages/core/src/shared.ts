/** What the runs of one processor share: in-process state, never needed for correctness across workers. */
import type { TakeoverGate } from './alone.js';
import type { LeaseBoard } from './lease-keeper.js';
import type { BeginResult } from './store/types.js';
import { settledWithin } from './wait.js';

/**
 * A lease acquired for a delivery of an ordered group whose handler did not run because an
 * earlier delivery of the group will be tried again (see `processInOrder`). The same processor
 * reuses it when the delivery comes back, instead of finding its own lease busy.
 */
export interface HeldLease {
  readonly key: string;
  readonly begun: Extract<BeginResult, { status: 'acquired' }>;
  readonly fingerprint: string;
  /** Local deadline (monotonic clock) of the lease as last acquired or extended. */
  readonly deadline: number;
}

/** What a delivery's publish asks of its ordered group: whether the ones before it are out. */
export interface PublishTurn {
  /**
   * Resolves once every delivery before it has settled its outgoing messages: true when they are
   * out (or they had none, or left the partition's order: dead letter, retry copy), false when one
   * was deferred and its messages may still be to publish. Made when asked (only a delivery with
   * messages to publish asks).
   */
  publishedBefore(): Promise<boolean>;
}

/**
 * One delivery's place in an ordered group: it may run its handler once `previous` says the
 * delivery before it went well, and it says the same of itself through `go` (the first word
 * counts; a release of the group says false for every delivery at once).
 */
export interface Turn extends PublishTurn {
  readonly previous: Promise<boolean>;
  go(proceed: boolean): void;
  readonly group: OrderedGroup;
  /** Position in the group. */
  readonly index: number;
  /** Called as its handler starts: from then on the run, not the group, settles its lease. */
  running(): void;
  /**
   * Says whether its own messages are out, once its disposition is known (exactly once); the
   * next delivery's `publishedBefore` also waits for this one's.
   */
  published(inOrder: boolean): void;
}

/** A delivery's {@link Turn} in its group: methods, not a closure each, made for every record. */
export class GroupTurn implements Turn {
  private counted = false;

  constructor(
    readonly previous: Promise<boolean>,
    readonly go: (proceed: boolean) => void,
    readonly group: OrderedGroup,
    readonly index: number,
    private readonly order: PublishOrder,
  ) {}

  running(): void {
    if (this.counted) return;
    this.counted = true;
    if (--this.group.notRunning === 0) this.group.allRunning?.();
  }

  publishedBefore(): Promise<boolean> {
    return this.order.before(this.index);
  }

  // Cumulative: a delivery that publishes nothing (no messages, a dead letter) says true, so the
  // one behind it still waits for the ones before it.
  published(inOrder: boolean): void {
    this.order.said(this.index, inOrder);
  }
}

/**
 * The words of an ordered group's deliveries on their outgoing messages (see
 * {@link Turn.published}), kept as numbers: a promise is made only for a delivery that asks
 * whether the ones before it are out, which few do (most have no messages).
 */
export class PublishOrder {
  /** Deliveries 0 .. settled - 1 have all said their word. */
  private settled = 0;
  /** The first of those that said false (deferred), or Infinity. */
  private firstDeferred = Number.POSITIVE_INFINITY;
  private readonly words: (boolean | undefined)[] = [];
  private waiters: { readonly index: number; readonly resolve: (inOrder: boolean) => void }[] = [];

  said(index: number, inOrder: boolean): void {
    this.words[index] = inOrder;
    while (this.words[this.settled] !== undefined) {
      if (this.words[this.settled] === false && this.firstDeferred > this.settled)
        this.firstDeferred = this.settled;
      this.settled++;
    }
    if (this.waiters.length === 0) return;
    const waiting = this.waiters;
    this.waiters = [];
    for (const w of waiting) {
      if (w.index <= this.settled) w.resolve(this.firstDeferred >= w.index);
      else this.waiters.push(w);
    }
  }

  /** Whether every delivery before `index` has its messages out, once they all said so. */
  before(index: number): Promise<boolean> {
    if (index <= this.settled) return Promise.resolve(this.firstDeferred >= index);
    return new Promise((resolve) => this.waiters.push({ index, resolve }));
  }
}

/** The deliveries of one `processInOrder` call. */
export interface OrderedGroup {
  /** The leases kept for deliveries not run, to give back with the group's `release`. */
  readonly kept: HeldLease[];
  /** Set by `release`: no handler of the group starts any more. */
  released: boolean;
  /**
   * Resolves (false) when the group is released, as every delivery's `previous` then does:
   * deliveries waiting for their turn stop waiting.
   */
  readonly whenReleased: Promise<false>;
  readonly markReleased: () => void;
  /**
   * Set when a run of the group could not finish its store writes (store down, lease lost): no
   * later handler starts until the group is run again, so an outage stops the handlers too.
   */
  stopped: boolean;
  /**
   * Set when a delivery of the group was dead-lettered for takeovers past `maxTakeoverAttempts`:
   * the deliveries begun behind it were taken over each time it killed its worker, most of them
   * without ever starting, so their own takeover counts say nothing and they run regardless.
   */
  behindExhausted: boolean;
  /** Set when a takeover running alone gave the group up (see alone.ts). */
  gaveWay: boolean;
  /** Per delivery, resolved when its run has ended (its completion written or given up). */
  readonly ended: Promise<void>[];
  /** The delivery of the group that acquired each key, by store key. */
  readonly acquired: Map<string, number>;
  /**
   * Deliveries whose handler has not started and that have not ended: a released group may still
   * give their leases back (a begin in flight when it was released).
   */
  notRunning: number;
  /** Set by `release` while some are not running: called when the last of them runs or ends. */
  allRunning: (() => void) | undefined;
}

/**
 * How many handlers of an ordered group may run ahead of their completion writes: enough for the
 * writes to share round trips, few enough that a store outage stops the handlers at once.
 */
export const ORDERED_WINDOW = 32;

/**
 * Marks a run under way; others may wait for its end. The promise is made only for a waiter, as
 * almost no run has one.
 */
export class RunUnderWay {
  private ended = false;
  private promise: Promise<void> | undefined;
  private resolve: (() => void) | undefined;
  private outliving: Promise<void> | undefined;

  /** Resolves once the run has ended (at once if it has). */
  wait(): Promise<void> {
    if (this.ended) return Promise.resolve();
    this.promise ??= new Promise<void>((resolve) => {
      this.resolve = resolve;
    });
    return this.promise;
  }

  /**
   * The run is returning, but what it started goes on (a handler given up at maxRunMs, steps a
   * failed handler left running): it is under way until `what` settles, `atMostMs` at most. The
   * bound's timer does not keep the process alive.
   */
  outlivedBy(what: Promise<void>, atMostMs: number): void {
    this.outliving = settledWithin([what], atMostMs, { keepAlive: false }).then(() => undefined);
  }

  /** Ends the run, now or once what outlives it has settled; `then` runs first. */
  end(then: () => void): void {
    const finish = () => {
      then();
      this.ended = true;
      this.resolve?.();
    };
    if (this.outliving === undefined) finish();
    else void this.outliving.then(finish);
  }
}

/** Registers a run of `storeKey` that may publish its messages: copies of the key wait for it. */
export function publishingRun(shared: Shared, storeKey: string): RunUnderWay {
  const marker = new RunUnderWay();
  shared.publishing.set(storeKey, marker);
  return marker;
}

/**
 * Ends a run from {@link publishingRun} (once what outlives it has settled); `then` runs with it.
 */
export function endPublishingRun(
  shared: Shared,
  storeKey: string,
  marker: RunUnderWay,
  then?: () => void,
): void {
  marker.end(() => {
    if (shared.publishing.get(storeKey) === marker) shared.publishing.delete(storeKey);
    then?.();
  });
}

/** What the runs of one processor share. */
export interface Shared {
  /**
   * A delivery whose key this processor is running waits for that run (then is a duplicate); off
   * for the idempotent executor, whose concurrent request is answered "in progress" at once.
   */
  readonly waitForOwnRuns: boolean;
  /** Runs that may publish, by store key (see finishCompleted). */
  readonly publishing: Map<string, RunUnderWay>;
  /**
   * Keys whose outgoing messages this process left unpublished, with the unconfirmed publishes in
   * a row (0: held back behind an earlier record; see publishThenAck). Their copies publish at once.
   */
  readonly leftUnpublished: Map<string, number>;
  /** The heartbeat of every running handler's lease. */
  readonly leases: LeaseBoard;
  /** Leases of ordered deliveries that were not run yet, by store key. */
  readonly held: Map<string, HeldLease>;
  /**
   * Give-backs under way (see `Processor.givenBack`): releases of leases given back unrun, and
   * the end of deliveries of released groups whose begin was still on its way.
   */
  readonly givingBack: Set<Promise<unknown>>;
  /** Releases of leases given back unrun, under way. */
  readonly leasesGoingBack: Set<Promise<unknown>>;
  /** Takeovers of ordered deliveries run alone (see alone.ts). */
  readonly gate: TakeoverGate;
}

/**
 * Gives back a lease whose handler never started: the attempt is not counted, and the release is
 * tracked until it settles so a stopping adapter can wait for it before the store is closed.
 */
export function giveBackUnrun(shared: Shared, release: () => Promise<unknown>): Promise<void> {
  const pending = release().then(
    () => undefined,
    () => undefined,
  );
  shared.leasesGoingBack.add(pending);
  void pending.then(() => shared.leasesGoingBack.delete(pending));
  return trackGiveBack(shared, pending);
}

/**
 * Settles once the leases given back unrun so far have been released, or failed to be. Deliveries
 * that hold no lease are not waited for: one may itself wait for the caller (a duplicate
 * publishing after the delivery before it).
 */
export function leasesGivenBack(shared: Shared): Promise<void> {
  return settleAll(shared.leasesGoingBack);
}

/**
 * Settles once `pending` (promises that never reject, each removing itself when settled) is empty;
 * a turn first, so that acquired deliveries of a group released just now (waiting for their turn)
 * add theirs.
 */
export async function settleAll(pending: ReadonlySet<Promise<unknown>>): Promise<void> {
  await new Promise((resolve) => setImmediate(resolve));
  while (pending.size > 0) await Promise.all(pending);
}

/** Counts `pending` (which never rejects) among the give-backs under way until it settles. */
export function trackGiveBack(shared: Shared, pending: Promise<void>): Promise<void> {
  shared.givingBack.add(pending);
  void pending.then(() => shared.givingBack.delete(pending));
  return pending;
}

/** Keys left unpublished that are remembered at once; the oldest is forgotten first. */
export const MAX_TRACKED_UNPUBLISHED = 10_000;
