/**
 * Keeps the leases of a processor's running handlers alive, with one timer for all of them (not
 * one per message). Each lease is extended every `intervalMs`; when the store answers `lost` (a
 * newer fence took over) or the lease runs out locally without a successful extend (store
 * unreachable), the run's signal aborts so the handler can stop early. A run still going after
 * `maxRunMs` is given up the same way.
 */
import { LeaseLostError } from './errors.js';
import type { ProcessedStore } from './store/types.js';
import { retryStoreWriteAfter, tryWrite } from './wait.js';

export interface LeaseKeeper {
  /** Aborts when the lease is lost or the run is given up. Made on first read. */
  readonly signal: AbortSignal;
  /**
   * A fenced write made after an effect (a step's journal, the run's completion, its FAILED
   * record): tried again after each `StoreUnavailableError` until the store answers, also past
   * the lease's local end and after {@link stop}, since it lands if nobody took the key over and
   * is refused if somebody did. Ended, with the last failure, by the store saying another fence
   * holds the key, by the consumer stopping ({@link LeaseBoard.cutAll} reaches it after `stop`
   * too), or after `maxRunMs` of tries.
   */
  writeUntilAnswered<T>(write: () => Promise<T>): Promise<T>;
  /** True once the store said another fence holds the key. */
  readonly lost: boolean;
  /** True once {@link LeaseBoard.cutAll} aborted the signal (the consumer is stopping). */
  readonly cut: boolean;
  /** When the lease ends as last set or extended (monotonic clock, ms): the store's end is later. */
  readonly deadline: number;
  /**
   * Stops heartbeating. Answers the extend already on its way, if any: the caller waits for it,
   * so that it cannot land after the caller's release or complete and revive the lease.
   */
  stop(): Promise<void> | undefined;
  /** Gives the run up: aborts the signal with `reason` and stops heartbeating. */
  abort(reason: Error): void;
  /**
   * Resolves while the lease is this run's by the local clock; past its local deadline (a
   * heartbeat late or failing, a process frozen past its lease) it extends the lease first.
   * Rejects with `LeaseLostError` when the store answers `lost` or the extension fails.
   */
  confirm(): Promise<void>;
}

export interface LeaseBoardOptions {
  readonly store: ProcessedStore;
  readonly leaseMs: number;
  /** Extend period of each lease. */
  readonly intervalMs: number;
  readonly onError?: (key: string, error: unknown) => void;
  /**
   * The event loop was blocked for `blockedMs` (a handler computing without awaiting, a long
   * synchronous call) and the leases of `keys` ran out meanwhile, unextended: another worker may
   * have taken them over. Reported once per stall.
   */
  readonly onStall?: (blockedMs: number, keys: readonly string[]) => void;
}

export interface HoldOptions {
  readonly key: string;
  /**
   * When (monotonic clock) the lease was set in the store, or a little earlier: a lease begun
   * before the handler starts (an ordered delivery waits its turn) has less than `leaseMs` left.
   */
  readonly leaseSince: number;
  readonly fence: number;
  /** Called once the run has been held this long; the run is given up (see {@link LeaseKeeper.abort}). */
  readonly maxRunMs: number;
  readonly onTimeout: () => void;
}

/** One held lease; it is also the run's {@link LeaseKeeper} (one object per run, not three). */
class Held implements LeaseKeeper {
  readonly startedAt: number;
  /** Local deadline on the monotonic clock: the store's is a little later, never earlier. */
  deadline: number;
  nextAt: number;
  lost = false;
  cut = false;
  done = false;
  abortReason: Error | undefined = undefined;
  controller: AbortController | undefined = undefined;
  writeController: AbortController | undefined = undefined;
  inflight: Promise<void> | undefined = undefined;

  constructor(
    readonly board: Board,
    readonly key: string,
    readonly fence: number,
    leaseSince: number,
    readonly maxRunMs: number,
    readonly onTimeout: () => void,
  ) {
    this.startedAt = performance.now();
    this.deadline = leaseSince + board.opts.leaseMs;
    this.nextAt = leaseSince + board.opts.intervalMs;
  }

  get signal(): AbortSignal {
    // Most handlers never look at it: no AbortController per message unless asked for.
    if (this.controller === undefined) {
      this.controller = new AbortController();
      if (this.abortReason) this.controller.abort(this.abortReason);
    }
    return this.controller.signal;
  }

  /** Made on the first failed write: most runs' writes land at once. */
  get writeSignal(): AbortSignal {
    if (this.writeController === undefined) {
      this.writeController = new AbortController();
      // Writing is pointless once the key is lost or the consumer is stopping (see `end`); a
      // write begun after the stop (a completion, once its heartbeat was answered) ends too.
      if (this.lost || this.cut) this.writeController.abort(this.abortReason);
      else if (this.board.stopping !== undefined) this.writeController.abort(this.board.stopping);
    }
    return this.writeController.signal;
  }

  writeUntilAnswered<T>(write: () => Promise<T>): Promise<T> {
    // The first try bare (no async frame, no retry state): nearly every write lands at once.
    const since = performance.now();
    this.board.writing.add(this);
    return tryWrite(write).then(
      (value) => {
        this.board.writing.delete(this);
        return value;
      },
      (error: unknown) => this.retryWrite(write, error, since + this.maxRunMs),
    );
  }

  private async retryWrite<T>(write: () => Promise<T>, error: unknown, deadline: number): Promise<T> {
    try {
      return await retryStoreWriteAfter(write, { signal: () => this.writeSignal, deadline }, error);
    } finally {
      this.board.writing.delete(this);
    }
  }

  stop(): Promise<void> | undefined {
    this.board.release(this);
    // Nothing to wait for, most of the time: every run stops its keeper, and almost none has an
    // extend on its way (a run that would await it anyway costs nothing more).
    return this.inflight;
  }

  abort(reason: Error): void {
    this.board.release(this);
    this.fire(reason);
  }

  fire(reason: Error): void {
    this.abortReason ??= reason;
    this.controller?.abort(this.abortReason);
  }

  /** The key is lost or the consumer is stopping (set first): the run's signal and its writes end. */
  end(reason: Error): void {
    this.fire(reason);
    this.writeController?.abort(this.abortReason);
  }

  async confirm(): Promise<void> {
    if (!this.lost && !this.done && performance.now() < this.deadline) return;
    // The heartbeat's own extension first, if one is on its way; then one now if still needed.
    await this.inflight;
    if (!this.lost && !this.done && performance.now() >= this.deadline) await this.board.extendNow(this);
    if (this.lost || performance.now() >= this.deadline) {
      throw new LeaseLostError({ key: this.key, fence: this.fence });
    }
  }
}

export interface LeaseBoard {
  hold(options: HoldOptions): LeaseKeeper;
  /**
   * Aborts the signal of every run held now with `reason`, and keeps heartbeating their leases
   * until each run ends: the consumer is stopping and asks its handlers to end. Answers how many.
   */
  cutAll(reason: Error): number;
  /** Set by the first {@link cutAll}: the consumer is stopping, and no handler starts any more. */
  readonly stopping: Error | undefined;
}

/** A gap of this many ticks between two ticks is the event loop blocked, not timer jitter. */
const STALL_TICKS = 4;

/** Every lease of one processor, extended from one timer. */
class Board implements LeaseBoard {
  private readonly held = new Set<Held>();
  /** Runs with a write being tried (see `writeUntilAnswered`), held or not. */
  readonly writing = new Set<Held>();
  // Often enough to extend each lease on time and to notice a failing store before its deadline.
  private readonly tickMs: number;
  private timer: NodeJS.Timeout | undefined;
  private lastTickAt = 0;
  stopping: Error | undefined = undefined;

  constructor(readonly opts: LeaseBoardOptions) {
    this.tickMs = Math.max(1, Math.min(opts.intervalMs, 1000) / 2);
  }

  hold({ key, fence, leaseSince, maxRunMs, onTimeout }: HoldOptions): LeaseKeeper {
    const h = new Held(this, key, fence, leaseSince, maxRunMs, onTimeout);
    this.held.add(h);
    if (this.timer === undefined) {
      this.lastTickAt = performance.now();
      this.timer = setInterval(() => this.tick(), this.tickMs);
      this.timer.unref?.();
    }
    return h;
  }

  cutAll(reason: Error): number {
    this.stopping ??= reason;
    let cut = 0;
    for (const h of this.held) {
      if (h.done) continue;
      // A run whose signal aborted already (its lease ran out locally: a failing or hung
      // heartbeat, a stall) is not asked again, but its writes end too: the consumer is stopping.
      const asked = h.abortReason === undefined;
      h.cut = true;
      h.end(reason);
      if (asked) cut++;
    }
    // Writes of runs whose heartbeat stopped (a completion, the journal of steps a given-up
    // handler left running) end too; their handlers are over, so they are not counted.
    for (const h of this.writing) {
      if (!h.done || h.cut) continue;
      h.cut = true;
      h.end(reason);
    }
    return cut;
  }

  release(h: Held): void {
    h.done = true;
    this.held.delete(h);
  }

  private tick(): void {
    // Stopped here, not when the last run ends: runs of an ordered group follow one another, and
    // a timer set and cleared for each was a cost of every message.
    if (this.held.size === 0) {
      clearInterval(this.timer);
      this.timer = undefined;
      return;
    }
    const now = performance.now();
    const since = this.lastTickAt;
    this.lastTickAt = now;
    if (now - since > STALL_TICKS * this.tickMs) this.reportStall(since, now);
    for (const h of this.held) {
      if (h.done) continue;
      if (now - h.startedAt >= h.maxRunMs) {
        h.onTimeout();
        continue;
      }
      // The lease ran out locally with its extension still unanswered (a store that hangs, for
      // up to storeTimeoutMs): another worker may take the key now, so the signal aborts, as
      // for an extension that failed. The extension's answer still says whether the key is lost.
      if (now >= h.deadline && h.abortReason === undefined) {
        const late = new Error('the lease ran out before its extension was answered');
        h.fire(new LeaseLostError({ key: h.key, fence: h.fence, cause: late }));
      }
      if (h.inflight === undefined && now >= h.nextAt) void this.extendNow(h);
    }
  }

  /**
   * The timer fired late, the event loop blocked from `since` to `now`: the leases whose local end
   * fell in between ran out with no chance to be extended. Their runs' signals abort now, as for a
   * lease that ran out under a failing store: the handlers' own timers and I/O come due in this
   * same turn, after this earlier timer, so a handler resuming from the stall finds its signal
   * aborted. The extend that follows tells whether another worker took the key.
   */
  private reportStall(since: number, now: number): void {
    const keys: string[] = [];
    for (const h of this.held) {
      if (h.done || h.deadline <= since || h.deadline > now) continue;
      keys.push(h.key);
      const stalled = new Error(
        `the event loop was blocked for ${Math.round(now - since)} ms, past the lease`,
      );
      h.fire(new LeaseLostError({ key: h.key, fence: h.fence, cause: stalled }));
    }
    if (keys.length > 0) this.opts.onStall?.(Math.round(now - since), keys);
  }

  /** Extends `h` now, as its heartbeat would (the two never overlap). */
  extendNow(h: Held): Promise<void> {
    h.inflight ??= this.extend(h).finally(() => {
      h.inflight = undefined;
    });
    return h.inflight;
  }

  private async extend(h: Held): Promise<void> {
    const { store, leaseMs, intervalMs, onError } = this.opts;
    const askedAt = performance.now();
    try {
      const r = await store.extend(h.key, h.fence, leaseMs);
      if (r === 'lost') {
        // Also for a run stopped meanwhile: its caller waits for this answer (see stop) and
        // reads `lost`.
        h.lost = true;
        h.done = true;
        h.end(new LeaseLostError({ key: h.key, fence: h.fence }));
        return;
      }
      if (h.done) return;
      h.deadline = askedAt + leaseMs;
      h.nextAt = askedAt + intervalMs;
    } catch (error) {
      onError?.(h.key, error);
      if (performance.now() >= h.deadline)
        h.fire(new LeaseLostError({ key: h.key, fence: h.fence, cause: error }));
      // Try again soon, never later than the deadline.
      h.nextAt = performance.now() + Math.min(intervalMs, 50);
    }
  }
}

export function createLeaseBoard(opts: LeaseBoardOptions): LeaseBoard {
  return new Board(opts);
}
