/**
 * A payment client that retries. `send` publishes one attempt and says whether the client heard
 * back; a `timeout` makes the client try again. The clock is injected, so a test can put the
 * retry on the other side of a minute boundary.
 */
import { type ChargeRequest, minuteBucketKey, stableChargeKey } from './keys.js';

export type KeyScheme = 'minute-bucket' | 'stable';
export type Transport = (key: string, request: ChargeRequest) => Promise<'ok' | 'timeout'>;

export function createPaymentClient(options: {
  scheme: KeyScheme;
  send: Transport;
  now: () => number;
  maxAttempts?: number;
}) {
  const { scheme, send, now, maxAttempts = 3 } = options;
  return {
    /** Pays once; returns the key of every attempt sent. */
    async pay(request: ChargeRequest): Promise<string[]> {
      // The fix computes the key once per request; the bug derives it from the clock per attempt.
      const stable = scheme === 'stable' ? stableChargeKey(request) : undefined;
      const keys: string[] = [];
      for (let attempt = 1; attempt <= maxAttempts; attempt++) {
        const key = stable ?? minuteBucketKey(request, now());
        keys.push(key);
        if ((await send(key, request)) === 'ok') return keys;
      }
      return keys;
    },
  };
}

/** A clock that only moves when told to. */
export function manualClock(startMs: number) {
  let t = startMs;
  return {
    now: () => t,
    advance(ms: number) {
      t += ms;
    },
  };
}
