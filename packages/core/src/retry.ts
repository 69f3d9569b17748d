/** Retry policies: how many attempts, and how long to wait before each. */
import { ConfigError } from './errors.js';
import { type OptionNames, refuseUnknownOptions } from './option-names.js';

export interface RetryPolicyOptions {
  /**
   * Attempts in all, the first included. After the last one fails the message is dead-lettered.
   * @defaultValue 5
   */
  maxAttempts?: number;
  /** Delay before the second attempt. @defaultValue 1000 */
  initialDelayMs?: number;
  /** Upper bound of any delay. @defaultValue 300000 (5 minutes) */
  maxDelayMs?: number;
  /** Growth factor between attempts. @defaultValue 2 */
  multiplier?: number;
  /**
   * `full`: a uniform delay in [0, backoff] (spreads a thundering herd best);
   * `equal`: backoff/2 plus a uniform half; `none`: exactly the backoff.
   * @defaultValue 'equal'
   */
  jitter?: 'full' | 'equal' | 'none';
}

export type RetryPolicy = Readonly<Required<RetryPolicyOptions>>;

export const DEFAULT_RETRY_POLICY: RetryPolicy = Object.freeze({
  maxAttempts: 5,
  initialDelayMs: 1_000,
  maxDelayMs: 300_000,
  multiplier: 2,
  jitter: 'equal',
});

const RETRY_OPTIONS = {
  maxAttempts: true,
  initialDelayMs: true,
  maxDelayMs: true,
  multiplier: true,
  jitter: true,
} as const satisfies OptionNames<RetryPolicyOptions>;

export function resolveRetryPolicy(options: RetryPolicyOptions = {}, label = 'retry'): RetryPolicy {
  if (typeof options !== 'object' || options === null) throw new ConfigError(`${label} must be an object`);
  refuseUnknownOptions(options, RETRY_OPTIONS, label);
  const p = { ...DEFAULT_RETRY_POLICY, ...stripUndefined(options) };
  if (!Number.isInteger(p.maxAttempts) || p.maxAttempts < 1) {
    throw new ConfigError(`${label}.maxAttempts must be an integer >= 1 (got ${p.maxAttempts})`);
  }
  if (!(p.initialDelayMs >= 0)) throw new ConfigError(`${label}.initialDelayMs must be >= 0`);
  if (!(p.maxDelayMs >= p.initialDelayMs)) {
    throw new ConfigError(
      `${label}.maxDelayMs (${p.maxDelayMs}) must be >= initialDelayMs (${p.initialDelayMs})`,
    );
  }
  if (!(p.multiplier >= 1)) throw new ConfigError(`${label}.multiplier must be >= 1`);
  if (!['full', 'equal', 'none'].includes(p.jitter)) {
    throw new ConfigError(`${label}.jitter must be 'full', 'equal' or 'none'`);
  }
  return Object.freeze(p);
}

/** The un-jittered delay after `attempt` failed (attempt 1 = the first try). */
export function backoffMs(policy: RetryPolicy, attempt: number): number {
  const exp = policy.initialDelayMs * policy.multiplier ** Math.max(0, attempt - 1);
  return Math.min(policy.maxDelayMs, exp);
}

/** The delay to wait after `attempt` failed, jittered. */
export function retryDelayMs(
  policy: RetryPolicy,
  attempt: number,
  random: () => number = Math.random,
): number {
  const base = backoffMs(policy, attempt);
  switch (policy.jitter) {
    case 'none':
      return base;
    case 'full':
      return Math.round(random() * base);
    default:
      return Math.round(base / 2 + (random() * base) / 2);
  }
}

/**
 * The delay before the next attempt after `attempt` failed with `error`: the jittered backoff, or
 * the error's own `retryAfterMs` when that is longer (a provider's 429 or 503 says when to come
 * back), never past `maxDelayMs`, which bounds the whole retry span (see worstCaseRetrySpanMs).
 */
export function delayAfterFailure(policy: RetryPolicy, attempt: number, error: unknown): number {
  const backoff = retryDelayMs(policy, attempt);
  const asked = retryAfterOf(error);
  return asked === undefined || asked <= backoff ? backoff : Math.min(asked, policy.maxDelayMs);
}

/** A thrown value's own `retryAfterMs`: a finite number >= 0, else none. */
export function retryAfterOf(error: unknown): number | undefined {
  if (typeof error !== 'object' || error === null || !('retryAfterMs' in error)) return undefined;
  const asked = (error as { retryAfterMs: unknown }).retryAfterMs;
  return typeof asked === 'number' && Number.isFinite(asked) && asked >= 0 ? Math.ceil(asked) : undefined;
}

/** The longest a message can take from its first delivery to its last retry. */
export function worstCaseRetrySpanMs(policy: RetryPolicy): number {
  let total = 0;
  for (let a = 1; a < policy.maxAttempts; a++) total += backoffMs(policy, a);
  return total;
}

export function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
