/**
 * What the pipeline decides when a run does not complete: retry (release the lease), fail and
 * dead-letter, or defer without acking (lease lost, store down). Every store write a decision
 * needs happens here, before the adapter settles.
 */
import type { BlobPointer } from './blob/types.js';
import {
  AttemptsExhaustedError,
  type ErrorInfo,
  ExactlyOnceError,
  HandlerFailedError,
  isRetryable,
  LeaseLostError,
  toErrorInfo,
} from './errors.js';
import type { LeaseKeeper } from './lease-keeper.js';
import type { ResolvedProcessorOptions } from './options.js';
import { giveBack, notRun } from './ordered.js';
import { delayAfterFailure } from './retry.js';
import type { Shared, Turn } from './shared.js';
import type { Delivery, Disposition, Outcome } from './spi.js';
import type { BeginResult } from './store/types.js';
import { retryStoreWrite, settledWithin } from './wait.js';

export async function handleFailure<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  delivery: Delivery,
  storeKey: string,
  fence: number,
  attempt: number,
  outcome: Outcome,
  error: unknown,
  blobs: RunBlobs,
  keeper: Pick<LeaseKeeper, 'deadline' | 'writeUntilAnswered'>,
  stillRunning?: Promise<void>,
): Promise<Disposition> {
  // A LeaseLostError is either the store refusing a step's journal (another fence holds the key) or
  // the handler throwing its aborted signal's reason, the lease having run out by this worker's
  // clock (an event loop blocked past it, a store failing meanwhile) while the key may still be
  // this run's. The fenced release or fail below tells which (`lost` for the first), so a retry
  // need not wait out a lease that is still held.
  const retry = isRetryable(error) && attempt < o.retry.maxAttempts;
  if (!retry) {
    // What still runs (a handler given up at maxRunMs, steps a failed handler left running) may
    // journal a step: the key is marked FAILED once it has ended, or after a lease at most, when
    // the key could be taken over anyway (a stalled worker, as after a crash).
    if (stillRunning !== undefined) await settledWithin([stillRunning], o.leaseMs);
    await discardBlobs(o, blobs);
    const reason = !isRetryable(error)
      ? error instanceof ExactlyOnceError
        ? error
        : new HandlerFailedError(error)
      : // Handler errors end a key at retry.maxAttempts: any attempt past it was a takeover's.
        new AttemptsExhaustedError({
          attempts: attempt,
          cause: error,
          cutShort: Math.max(0, attempt - o.retry.maxAttempts),
        });
    return failAndDeadLetter(o, delivery, storeKey, fence, reason, attempt, (write) =>
      keeper.writeUntilAnswered(write),
    );
  }
  const info = toErrorInfo(error);
  // A LeaseLostError beside running steps: whether the key was taken over only the fenced release
  // tells (`lost`: no retry, no attempt), so it is awaited below, once they have ended or after a
  // lease at most, as for a final failure.
  const lostMaybe = error instanceof LeaseLostError;
  if (stillRunning !== undefined && lostMaybe) await settledWithin([stillRunning], o.leaseMs);
  if (stillRunning !== undefined && !lostMaybe) {
    // Nothing stops a JavaScript function: the key stays held, no longer heartbeated, until what
    // still runs has ended (its step results journaled, its blobs kept), so the retry starts after
    // it, not beside it. A handler that never returns lets its lease run out, as a crashed worker
    // would.
    void stillRunning
      .then(async () => {
        await discardBlobs(o, blobs);
        await o.store.release(storeKey, fence, info);
      })
      .catch(() => undefined);
  } else {
    await discardBlobs(o, blobs);
    try {
      // A store answers the repeat of a landed release `ok`, so it is tried again while the
      // lease lasts rather than leaving the retry to wait the lease out (past it, the retry is a
      // takeover anyway: no effect is at stake).
      const r = await retryStoreWrite(() => o.store.release(storeKey, fence, info), {
        deadline: keeper.deadline,
      });
      if (r !== 'ok') return leaseLost(storeKey, fence);
    } catch (storeError) {
      return storeDown(o, storeError, storeKey);
    }
  }
  return {
    action: 'retry',
    outcome,
    delayMs: delayAfterFailure(o.retry, attempt, error),
    nextAttempt: attempt + 1,
    error: info,
  };
}

/**
 * A run whose handler failed after the consumer's stop() aborted its signal (see
 * `Processor.abortRuns`): its key is given back uncounted, once the steps it left running have
 * ended (for a lease at most), and stays a takeover if it was one. Nothing is settled: the broker
 * delivers the message again, and the next consumer runs it at once instead of after the lease.
 * `handlerRunning`: the handler, given up at maxRunMs, still runs; the key goes back once it and
 * its steps have ended (not awaited: stop() does not wait for a handler that may never return),
 * and is left to its lease if that is later than the lease's end.
 */
export async function giveBackCut<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  shared: Shared,
  storeKey: string,
  begun: Extract<BeginResult, { status: 'acquired' }>,
  run: RunBlobs & { stepsRunning(): Promise<void> | undefined },
  leaseDeadline: number,
  turn: Turn | undefined,
  handlerRunning?: Promise<void>,
): Promise<Disposition> {
  const giveBackNow = async () => {
    await discardBlobs(o, run);
    // Past the lease a release would answer `lost` or land after a takeover: left to the lease.
    // Not tried again either: a give-back's repeat would uncount the attempt twice. If it does not
    // land, the lease runs out and the next consumer takes the key over, as after a crash.
    if (performance.now() < leaseDeadline) await giveBack(o, shared, storeKey, begun);
    o.logger.info('a run cut short by stop() gave its key back; its next delivery or call runs it', {
      key: storeKey,
      attempt: begun.attempt,
    });
  };
  if (handlerRunning !== undefined) {
    void handlerRunning.then(giveBackNow).catch(() => undefined);
    return notRun(turn);
  }
  const stillRunning = run.stepsRunning();
  if (stillRunning !== undefined) await settledWithin([stillRunning], o.leaseMs);
  await giveBackNow();
  return notRun(turn);
}

export async function failAndDeadLetter<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  delivery: Delivery,
  storeKey: string,
  fence: number,
  error: unknown,
  attempts: number,
  tryWrite: <A>(write: () => Promise<A>) => Promise<A>,
): Promise<Disposition> {
  const info = toErrorInfo(error);
  try {
    // As a completion (see the processor): a failed write may have landed, a store answers the
    // repeat of a landed fail `ok`, so it is tried again (`tryWrite`) rather than left to a
    // takeover that would run the handler again before dead-lettering.
    const r = await tryWrite(() => o.store.fail(storeKey, fence, info, o.retentionMs));
    if (r !== 'ok') return leaseLost(storeKey, fence);
  } catch (storeError) {
    return storeDown(o, storeError, storeKey);
  }
  return deadLetter(o, delivery, 'failed', error, attempts);
}

export function deadLetter<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  delivery: Delivery,
  outcome: Outcome,
  error: unknown,
  attempts: number,
): Disposition {
  // Reasons are always library errors, so consumers of the dead-letter queue branch on one set.
  const info: ErrorInfo = toErrorInfo(
    error instanceof ExactlyOnceError ? error : new HandlerFailedError(error),
  );
  return {
    action: 'dead-letter',
    outcome,
    reason: {
      error: info,
      attempts,
      consumer: o.consumer,
      originalDestination: delivery.destination,
      at: Date.now(),
    },
  };
}

export async function release<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  key: string,
  fence: number,
  error: unknown,
) {
  try {
    await o.store.release(key, fence, toErrorInfo(error));
  } catch {
    // The lease runs out by itself.
  }
}

/** The blobs a run wrote, and which of them a journaled step may point at. */
export interface RunBlobs {
  readonly blobs: readonly BlobPointer[];
  isJournaled(pointer: BlobPointer): boolean;
}

/**
 * Deletes the blobs of a run that will not complete, except those a journaled step may name: a
 * step outlives its run (a retry or a takeover replays it), so its blob must outlive it too.
 */
export async function discardBlobs<T, R>(o: ResolvedProcessorOptions<T, R>, run: RunBlobs) {
  const blobs = o.blobs;
  if (!blobs) return;
  for (const pointer of run.blobs) {
    if (run.isJournaled(pointer)) continue;
    // An orphan blob wastes space but never corrupts a record: a delete that fails is left, and
    // one that hangs (a stalled blob store) is waited for at most storeTimeoutMs.
    await settledWithin([Promise.resolve().then(() => blobs.delete(pointer))], o.storeTimeoutMs);
  }
}

export function leaseLost(key: string, fence: number): Disposition {
  return {
    action: 'defer',
    outcome: 'lease-lost',
    delayMs: 100,
    error: toErrorInfo(new LeaseLostError({ key, fence })),
  };
}

export function storeDown<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  error: unknown,
  key?: string,
): Disposition {
  // The outage itself is logged where store calls are watched (store/health.ts), once for all the
  // messages it holds. With the key, the logger leaves it out (and out of the error text) unless
  // recordKeys is set.
  o.logger.debug('processed-store unavailable; message not acked', {
    ...(key === undefined ? {} : { key }),
    error: toErrorInfo(error),
  });
  return { action: 'defer', outcome: 'store-unavailable', delayMs: 1000, error: toErrorInfo(error) };
}
