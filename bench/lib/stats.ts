/** Medians, percentiles and per-message timing, kept allocation-free on the hot path. */

export function median(values: readonly number[]): number {
  const finite = values.filter((v) => Number.isFinite(v));
  if (finite.length === 0) return Number.NaN;
  const sorted = [...finite].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1
    ? (sorted[mid] as number)
    : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank] as number;
}

/**
 * Per-message durations (ms). A preallocated typed array: recording is one store, so the timing
 * itself does not show up in the throughput it sits next to.
 */
export class Durations {
  private values: Float64Array;
  private n = 0;
  constructor(capacity: number) {
    this.values = new Float64Array(Math.max(16, capacity));
  }
  add(ms: number): void {
    if (this.n === this.values.length) {
      const grown = new Float64Array(this.values.length * 2);
      grown.set(this.values);
      this.values = grown;
    }
    this.values[this.n++] = ms;
  }
  get count(): number {
    return this.n;
  }
  summary(): { p50: number; p99: number } {
    const sorted = this.values.slice(0, this.n).sort();
    return { p50: percentile(sorted, 50), p99: percentile(sorted, 99) };
  }
}

/**
 * Counts settled messages and keeps the wall-clock window from the first delivery seen to the
 * last settle: pre-loading, group joins and shutdown stay outside the measured time.
 */
export class Meter {
  first = 0;
  last = 0;
  settled = 0;
  readonly durations: Durations;
  /** Called once, when the first message arrives: starts what must cover exactly the window. */
  onFirst: (() => void) | undefined;
  private done!: () => void;
  private failed!: (error: Error) => void;
  /** Resolves when every expected message settled; rejects on {@link fail}. */
  readonly finished: Promise<void>;
  constructor(readonly expected: number) {
    this.durations = new Durations(expected);
    this.finished = new Promise<void>((resolve, reject) => {
      this.done = resolve;
      this.failed = reject;
    });
    this.finished.catch(() => {}); // whoever awaits it sees the error; nobody else must
  }
  /** Ends the run with `error` (a consumer that cannot make progress), instead of its timeout. */
  fail(error: Error): void {
    this.failed(error);
  }
  /** Call when a message arrives; returns its start time. */
  start(): number {
    if (this.first === 0) {
      this.onFirst?.();
      this.first = performance.now();
      return this.first;
    }
    return performance.now();
  }
  /** Call once per message when it is settled (acked, committed or resolved). */
  settle(startedAt: number): void {
    const now = performance.now();
    this.durations.add(now - startedAt);
    this.last = now;
    if (++this.settled === this.expected) this.done();
  }
  get seconds(): number {
    return (this.last - this.first) / 1000;
  }
  get rate(): number {
    return this.settled / this.seconds;
  }
}

/** Resolves when `promise` does, or rejects after `ms` with a message naming what was awaited. */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Rotates `items` by `round`, so every variant runs early in some rounds and late in others. */
export function rotate<T>(items: readonly T[], round: number): T[] {
  if (items.length === 0) return [];
  const k = round % items.length;
  return [...items.slice(k), ...items.slice(0, k)];
}
