/** A handler for tests of a stop() that aborts the runs still going (see Processor.abortRuns). */
import type { HandlerContext } from '@exactly-once/core';

/**
 * A handler that records its attempt, waits for `ctx.signal`, records its reason and then fails
 * with a permanent error: were the abort counted as the message's failure, it would be FAILED.
 */
export function endingOnAbort(seen: { attempts: number[]; reasons: unknown[] }) {
  return (_payload: unknown, ctx: HandlerContext): Promise<never> =>
    new Promise((_resolve, reject) => {
      seen.attempts.push(ctx.attempt);
      ctx.signal.addEventListener('abort', () => {
        seen.reasons.push(ctx.signal.reason);
        reject(Object.assign(new Error('aborted'), { retryable: false }));
      });
    });
}
