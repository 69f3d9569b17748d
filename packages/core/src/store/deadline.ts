/**
 * A deadline on every store call. A call whose answer never comes (a server that stalls with the
 * connection open, a reply lost on a connection nothing times out) would otherwise hold its
 * message for ever: on Kafka the whole partition behind it, and the lease keeper would go on
 * extending the lease of a run that can never finish. Past the deadline the call rejects with a
 * `StoreUnavailableError` like any outage, and the pipeline does what it does for one: the
 * message is not acked and is tried again later.
 *
 * The call itself is not cancelled (the clients have no way to), so a write may still land after
 * its deadline. That is the outcome any store outage leaves unknown, and the protocol already
 * answers it: fences refuse a late write of a superseded attempt, and a complete that landed
 * answers the message's next delivery as a duplicate. A begin that lands late would take a lease
 * nobody holds: the pipeline's begins say when they are abandoned (`abandonAfterMs`), for the
 * stores that can refuse them, and a lease a late answer reports taken is given back (`onLate`).
 */
import { StoreUnavailableError } from '../errors.js';
import { answeredWithin } from '../wait.js';
import { wrapServerCalls } from './delegate.js';
import type { ProcessedStore } from './types.js';

/**
 * Called with what a call abandoned at its deadline answered after all (its value, or the error it
 * rejected with): its caller is gone, so what it took (a begin's lease) is nobody's.
 */
export type LateAnswer = (
  name: string,
  args: readonly unknown[],
  answer: { value: unknown } | { error: unknown },
) => void;

/** `store` with every server call bounded by `timeoutMs`; the store itself when it is Infinity. */
export function withDeadline(store: ProcessedStore, timeoutMs: number, onLate?: LateAnswer): ProcessedStore {
  if (timeoutMs === Number.POSITIVE_INFINITY) return store;
  return wrapServerCalls(
    store,
    (name, call) =>
      (...args) =>
        // Through a promise: a store that throws instead of rejecting is answered like one that rejects.
        answeredWithin(
          Promise.resolve().then(() => call(...args)),
          timeoutMs,
          () =>
            new StoreUnavailableError({
              operation: name,
              message: `processed-store ${name} did not answer within ${timeoutMs} ms (storeTimeoutMs)`,
            }),
          onLate && ((answer) => onLate(name, args, answer)),
        ),
  );
}
