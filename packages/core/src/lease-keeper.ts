/**
 * Keeps the leases of a processor's running handlers alive, with one timer for all of them (not
 * one per message). Each lease is extended every `intervalMs`; when the store answers `lost` (a
 * newer fence took over) or the lease runs out locally without a successful extend (store
 * unreachable), the run's signal aborts so the handler can stop early. A run still going after
 * `maxRunMs` is given up the same way.
 */
import { LeaseLostError } from './errors.js';
import type { ProcessedStore } from './store/types.js';

export interface LeaseKeeper {
  /** Aborts when the lease is lost or the run is given up. Made on first read. */
  readonly signal: AbortSignal;
  /** True once the store said another fence holds the key. */
  readonly lost: boolean;
  /**
   * Stops heartbeating and waits for an extend already on its way, so it cannot land after the
   * caller's release or complete and revive the lease.
   */
  stop(): Promise<void>;
  /** Gives the run up: aborts the signal with `reason` and stops heartbeating. */
  abort(reason: Error): void;
}

export interface LeaseBoardOptions {
  readonly store: ProcessedStore;
  readonly leaseMs: number;
  /** Extend period of each lease. */
  readonly intervalMs: number;
  readonly onError?: (key: string, error: unknown) => void;
}

export interface HoldOptions {
  readonly key: string;
  readonly fence: number;
  /** Called once the run has been held this long; the run is given up (see {@link LeaseKeeper.abort}). */
  readonly maxRunMs: number;
  readonly onTimeout: () => void;
}

interface Held {
  readonly key: string;
  readonly fence: number;
  readonly startedAt: number;
  readonly maxRunMs: number;
  readonly onTimeout: () => void;
  /** Local deadline on the monotonic clock: the store's is a little later, never earlier. */
  deadline: number;
  nextAt: number;
  lost: boolean;
  done: boolean;
  abortReason: Error | undefined;
  controller: AbortController | undefined;
  inflight: Promise<void> | undefined;
}

export interface LeaseBoard {
  hold(options: HoldOptions): LeaseKeeper;
}

export function createLeaseBoard(opts: LeaseBoardOptions): LeaseBoard {
  const held = new Set<Held>();
  // Often enough to extend each lease on time and to notice a failing store before its deadline.
  const tickMs = Math.max(1, Math.min(opts.intervalMs, 1000) / 2);
  let timer: NodeJS.Timeout | undefined;

  const abort = (h: Held, reason: Error) => {
    h.abortReason ??= reason;
    h.controller?.abort(h.abortReason);
  };

  const extend = async (h: Held) => {
    const askedAt = performance.now();
    try {
      const r = await opts.store.extend(h.key, h.fence, opts.leaseMs);
      if (h.done) return;
      if (r === 'lost') {
        h.lost = true;
        h.done = true;
        abort(h, new LeaseLostError({ key: h.key, fence: h.fence }));
        return;
      }
      h.deadline = askedAt + opts.leaseMs;
      h.nextAt = askedAt + opts.intervalMs;
    } catch (error) {
      opts.onError?.(h.key, error);
      if (performance.now() >= h.deadline)
        abort(h, new LeaseLostError({ key: h.key, fence: h.fence, cause: error }));
      // Try again soon, never later than the deadline.
      h.nextAt = performance.now() + Math.min(opts.intervalMs, 50);
    }
  };

  const tick = () => {
    const now = performance.now();
    for (const h of held) {
      if (h.done) continue;
      if (now - h.startedAt >= h.maxRunMs) {
        h.onTimeout();
        continue;
      }
      if (h.inflight === undefined && now >= h.nextAt) {
        h.inflight = extend(h).finally(() => {
          h.inflight = undefined;
        });
      }
    }
  };

  const release = (h: Held) => {
    h.done = true;
    held.delete(h);
    if (held.size === 0 && timer !== undefined) {
      clearInterval(timer);
      timer = undefined;
    }
  };

  return {
    hold({ key, fence, maxRunMs, onTimeout }) {
      const now = performance.now();
      const h: Held = {
        key,
        fence,
        startedAt: now,
        maxRunMs,
        onTimeout,
        deadline: now + opts.leaseMs,
        nextAt: now + opts.intervalMs,
        lost: false,
        done: false,
        abortReason: undefined,
        controller: undefined,
        inflight: undefined,
      };
      held.add(h);
      if (timer === undefined) {
        timer = setInterval(tick, tickMs);
        timer.unref?.();
      }
      return {
        get signal() {
          // Most handlers never look at it: no AbortController per message unless asked for.
          if (h.controller === undefined) {
            h.controller = new AbortController();
            if (h.abortReason) h.controller.abort(h.abortReason);
          }
          return h.controller.signal;
        },
        get lost() {
          return h.lost;
        },
        async stop() {
          release(h);
          await h.inflight;
        },
        abort(reason) {
          release(h);
          abort(h, reason);
        },
      };
    },
  };
}
