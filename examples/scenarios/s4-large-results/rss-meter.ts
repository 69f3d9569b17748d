/**
 * Peak RSS growth of this process, measured as test/large-result does: a baseline after a full GC
 * (run node with `--expose-gc`), then `process.memoryUsage.rss()` sampled every 5 ms and at every
 * `sample()` call, keeping the highest value.
 */
export interface RssFigures {
  readonly baseline: number;
  readonly peak: number;
  readonly growth: number;
}

export function startRssMeter(): { sample(): void; stop(): RssFigures } {
  const rss = () => process.memoryUsage.rss();
  (globalThis as { gc?: () => void }).gc?.();
  const baseline = rss();
  let peak = baseline;
  const sample = () => {
    const now = rss();
    if (now > peak) peak = now;
  };
  const timer = setInterval(sample, 5);
  return {
    sample,
    stop() {
      clearInterval(timer);
      sample();
      return { baseline, peak, growth: peak - baseline };
    },
  };
}
