/**
 * Waiting: timers that end early on a signal or give up at a deadline, and the exponential
 * backoffs without jitter that reconnects and re-sends use. Every adapter waits through these.
 */
import { StoreUnavailableError } from './errors.js';
import { backoffMs, resolveRetryPolicy } from './retry.js';

/** setTimeout fires at once for a delay over 2^31 - 1 ms: a longer wait must be clamped to it. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** `ms` as a setTimeout delay: negative is 0, past the timer limit the limit (~24.8 days). */
export function timerMs(ms: number): number {
  return ms >= 0 ? Math.min(ms, MAX_TIMER_MS) : 0;
}

/**
 * `signal` with a deadline: aborts when `signal` does (with its reason) or after `ms` (a
 * `TimeoutError`), e.g. `fetch(url, { signal: withTimeout(ctx.signal, 2_000) })`. Not
 * `AbortSignal.any([signal, AbortSignal.timeout(ms)])`: on Node 20 the timeout signal can be
 * garbage-collected before it fires, and the combined signal then never aborts. Here the timer
 * holds its controller until it fires (unref'd: it keeps no process alive).
 */
export function withTimeout(signal: AbortSignal | undefined, ms: number): AbortSignal {
  const controller = new AbortController();
  const timer = setTimeout(
    () => controller.abort(new DOMException(`timed out after ${ms} ms`, 'TimeoutError')),
    timerMs(ms),
  );
  timer.unref?.();
  // No listener on `signal` to clear the timer: a run making many calls would pile them up on
  // its one signal; a timer left to fire on a signal nobody reads costs nothing.
  return signal === undefined ? controller.signal : AbortSignal.any([signal, controller.signal]);
}

/** Waits `ms`; rejects with the signal's reason if it aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(signal.reason);
  return pause(ms, signal).then((slept) => {
    if (!slept) throw signal?.reason;
  });
}

/** Waits `ms`; resolves true, or false (never rejects) as soon as `signal` aborts. */
export function pause(ms: number, signal?: AbortSignal): Promise<boolean> {
  if (signal?.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve(true);
    }, timerMs(ms));
    const onAbort = () => {
      clearTimeout(t);
      resolve(false);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * `promise`, or a rejection with the signal's reason as soon as it aborts (the work itself goes
 * on: the caller stops waiting for it).
 */
export function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}

/**
 * `answer`, or a rejection with `timedOut()` once `ms` passed without it. The work itself goes on
 * (nothing here can cancel it): `onLate` gets what it answered after that, value or error, since
 * its caller is gone (a lease it took is nobody's).
 */
export function answeredWithin<T>(
  answer: Promise<T>,
  ms: number,
  timedOut: () => Error,
  onLate?: (late: { value: T } | { error: unknown }) => void,
): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  let abandoned = false;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      abandoned = true;
      reject(timedOut());
    }, timerMs(ms));
  });
  // A late rejection of the abandoned work is nobody's to handle, but for onLate.
  answer.then(
    (value) => {
      if (abandoned) onLate?.({ value });
    },
    (error: unknown) => {
      if (abandoned) onLate?.({ error });
    },
  );
  return Promise.race([answer, late]).finally(() => clearTimeout(timer));
}

/**
 * Waits until every promise has settled or `ms` passed, whichever comes first; never rejects.
 * True when they all settled in time. With `keepAlive: false` the deadline's timer does not keep
 * the process alive (a bound nobody must outlive the process for).
 */
export async function settledWithin(
  promises: Iterable<Promise<unknown>>,
  ms: number,
  { keepAlive = true }: { keepAlive?: boolean } = {},
): Promise<boolean> {
  const all = [...promises];
  if (all.length === 0) return true;
  let timer: NodeJS.Timeout | undefined;
  const settled = await Promise.race([
    Promise.allSettled(all).then(() => true),
    new Promise<boolean>((resolve) => {
      timer = setTimeout(resolve, timerMs(ms), false);
      if (!keepAlive) timer.unref();
    }),
  ]);
  clearTimeout(timer);
  return settled;
}

/**
 * An exponential backoff without jitter (a reconnect, a re-sent copy: one waiter, no herd to
 * spread): the n-th wait in a row (n >= 1) is `initialMs` doubled n - 1 times, at most `maxMs`.
 */
export function doublingBackoff(initialMs: number, maxMs: number): (n: number) => number {
  const policy = resolveRetryPolicy(
    { initialDelayMs: initialMs, multiplier: 2, maxDelayMs: maxMs, jitter: 'none' },
    'backoff',
  );
  return (n) => backoffMs(policy, n);
}

/**
 * A store write that is safe to repeat (a completion, a fail, a release, a step's journal): tried
 * again after each `StoreUnavailableError`, 100 ms doubling to 2 s apart, until `until.signal`
 * aborts or the next try would start at or after `until.deadline` (monotonic clock, ms); then the
 * last failure. Any other error is thrown at once. `until.signal` is asked for only after a failed
 * try, so a write that lands at once makes none.
 */
export function retryStoreWrite<T>(
  write: () => Promise<T>,
  until: { readonly signal?: () => AbortSignal; readonly deadline?: number },
): Promise<T> {
  // The first try outside the loop's async frame: every message's completion comes through here,
  // and nearly every write lands at once, with no loop to run.
  return tryWrite(write).then(undefined, (error: unknown) => retryStoreWriteAfter(write, until, error));
}

/** `write()`, with a synchronous throw as a rejection (as an `await` inside a `try` would have it). */
export function tryWrite<T>(write: () => Promise<T>): Promise<T> {
  try {
    return write();
  } catch (error) {
    return Promise.reject(error);
  }
}

/** The tries of {@link retryStoreWrite} after the first one failed with `error`. */
export async function retryStoreWriteAfter<T>(
  write: () => Promise<T>,
  until: { readonly signal?: () => AbortSignal; readonly deadline?: number },
  error: unknown,
): Promise<T> {
  for (let failures = 1; ; failures++) {
    if (!(error instanceof StoreUnavailableError)) throw error;
    const ms = storeWriteBackoff(failures);
    if (until.deadline !== undefined && performance.now() + ms >= until.deadline) throw error;
    if (!(await pause(ms, until.signal?.()))) throw error;
    try {
      return await write();
    } catch (next) {
      error = next;
    }
  }
}

const storeWriteBackoff = doublingBackoff(100, 2_000);

/**
 * For a pass of several parts that must each run even when another failed: `attempt(part)`
 * answers the part's result, or `undefined` after keeping its error in `failures`, which the
 * caller reports once the pass is done.
 */
export function collectingFailures(): {
  attempt<A>(part: () => Promise<A>): Promise<A | undefined>;
  readonly failures: unknown[];
} {
  const failures: unknown[] = [];
  return {
    failures,
    async attempt(part) {
      try {
        return await part();
      } catch (error) {
        failures.push(error);
        return undefined;
      }
    },
  };
}

/** A background task started by {@link repeatEvery}. */
export interface Repeating {
  /** No run starts after this; one under way finishes (see `settled`). */
  stop(): void;
  /** Resolves once no run is under way (at once between runs). */
  settled(): Promise<void>;
}

/**
 * Runs `task` every `intervalMs`, the first time `intervalMs` from now (at once with
 * `immediately`) and each next one `intervalMs` after the last ended, so runs never overlap
 * however long one takes. A run that throws is reported to `onError` and the next one runs as
 * planned. The timer does not keep the process alive: a maintenance loop must not hold up a
 * worker's exit.
 */
export function repeatEvery(
  intervalMs: number,
  task: () => Promise<unknown>,
  onError: (error: unknown) => void,
  { immediately = false }: { readonly immediately?: boolean } = {},
): Repeating {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> = Promise.resolve();
  const schedule = () => {
    if (!stopped) timer = setTimeout(tick, timerMs(intervalMs)).unref();
  };
  const tick = () => {
    running = (async () => {
      try {
        await task();
      } catch (error) {
        try {
          onError(error);
        } catch {
          // A throwing error hook must not end the loop.
        }
      }
      schedule();
    })();
  };
  if (immediately) tick();
  else schedule();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
    settled: () => running,
  };
}
