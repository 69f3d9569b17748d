/**
 * The rule both blob stores follow for a put that died with its process (SIGKILL, power loss):
 * what it left is removed once untouched for `abandonedAfterMs`, by puts, at most once per that
 * period and in the background.
 */
import { ConfigError } from '../errors.js';

/** `abandonedAfterMs` as given, or its default (1 h); anything but a positive number is refused. */
export function abandonedAfterMsOf(value: number | undefined): number {
  const ms = value ?? 3_600_000;
  if (!(ms > 0 && Number.isFinite(ms))) {
    throw new ConfigError('abandonedAfterMs must be a positive number of milliseconds');
  }
  return ms;
}

/** A function for `put` to call: starts `remove` at most once per `periodMs`, never waited for. */
export function sweepFromPuts(periodMs: number, remove: () => Promise<unknown>): () => void {
  let nextAt = 0;
  return () => {
    if (Date.now() < nextAt) return;
    nextAt = Date.now() + periodMs;
    // A put never waits for, or fails with, the sweep.
    remove().catch(() => undefined);
  };
}
