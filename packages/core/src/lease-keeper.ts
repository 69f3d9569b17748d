/**
 * Keeps a lease alive while a handler runs. Extends every `intervalMs`; when the store answers
 * `lost` (a newer fence took over) or the lease runs out locally without a successful extend
 * (store unreachable), the signal aborts so the handler can stop early.
 */
import { LeaseLostError } from './errors.js';
import type { ProcessedStore } from './store/types.js';

export interface LeaseKeeper {
  readonly signal: AbortSignal;
  /** True once the store said another fence holds the key. */
  readonly lost: boolean;
  /**
   * Stops heartbeating and waits for an extend already on its way, so it cannot land after the
   * caller's release or complete and revive the lease.
   */
  stop(): Promise<void>;
  /** Gives the run up (e.g. past `maxRunMs`): aborts the signal with `reason` and stops heartbeating. */
  abort(reason: Error): void;
}

export function keepLease(opts: {
  store: ProcessedStore;
  key: string;
  fence: number;
  leaseMs: number;
  intervalMs: number;
  onError?: (error: unknown) => void;
}): LeaseKeeper {
  const controller = new AbortController();
  let lost = false;
  let stopped = false;
  // Local deadline, measured on the monotonic clock: the store's deadline may be a little later,
  // never earlier, because the store set it after we asked.
  let deadline = performance.now() + opts.leaseMs;
  let timer: NodeJS.Timeout | undefined;
  let inflight: Promise<void> | undefined;

  const abort = () => {
    if (!controller.signal.aborted) {
      controller.abort(new LeaseLostError({ key: opts.key, fence: opts.fence }));
    }
  };

  const tick = async () => {
    if (stopped) return;
    const askedAt = performance.now();
    try {
      const r = await opts.store.extend(opts.key, opts.fence, opts.leaseMs);
      if (stopped) return;
      if (r === 'lost') {
        lost = true;
        abort();
        return;
      }
      deadline = askedAt + opts.leaseMs;
    } catch (error) {
      opts.onError?.(error);
      if (performance.now() >= deadline) abort();
    }
    if (!stopped) schedule();
  };

  const schedule = () => {
    // Never wait past the local deadline: a failing store must be noticed before the lease ends.
    // The floor keeps an unreachable store from being hammered once the deadline has passed.
    const floor = Math.min(opts.intervalMs, 50);
    const wait = Math.max(floor, Math.min(opts.intervalMs, deadline - performance.now()));
    timer = setTimeout(() => {
      inflight = tick();
    }, wait);
    timer.unref?.();
  };
  schedule();

  return {
    signal: controller.signal,
    get lost() {
      return lost;
    },
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      await inflight;
    },
    abort(reason) {
      stopped = true;
      if (timer) clearTimeout(timer);
      if (!controller.signal.aborted) controller.abort(reason);
    },
  };
}
