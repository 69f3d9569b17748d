/**
 * Two ways a client makes the idempotency key of a charge.
 *
 * `minuteBucketKey` is the bug of S6: `hash(user, amount, minute)` is the same on a retry only
 * while the minute lasts. A retry at 2:01:00 of a request first sent at 2:00:59 gets a new key,
 * and every key-based deduplication downstream sees two payments.
 *
 * `stableChargeKey` uses core's `stableKey` over immutable request data: the checkout the user
 * confirmed (an id made once, when they pressed Pay) and the amount. It refuses dates, so a clock
 * bucket cannot slip back in.
 */
import { createHash } from 'node:crypto';
import { stableKey } from '@exactly-once/core';

export interface ChargeRequest {
  userId: string;
  amountCents: number;
  currency: string;
  /** Made once when the user confirms the payment; the same on every retry. */
  checkoutId?: string;
}

/** BUGGY: the key changes at every minute boundary. */
export function minuteBucketKey(request: ChargeRequest, nowMs: number): string {
  const minute = Math.floor(nowMs / 60_000);
  return createHash('sha256').update(`${request.userId}|${request.amountCents}|${minute}`).digest('hex');
}

/** FIXED: the same request always has the same key. */
export function stableChargeKey(request: ChargeRequest): string {
  if (request.checkoutId === undefined) throw new Error('a stable key needs the checkout id');
  return stableKey('charge', {
    userId: request.userId,
    checkoutId: request.checkoutId,
    amountCents: request.amountCents,
  });
}
