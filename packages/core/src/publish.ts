/**
 * The end of a completed run, and the duplicate path: publish the record's unconfirmed outgoing
 * messages with broker confirmation, flag them published, then say ack. An unconfirmed publish
 * defers the message, and escalates to a dead letter after `maxPublishDeferrals` in a row.
 */
import { type Context, SpanKind } from '@opentelemetry/api';
import { describeThrown, ExactlyOnceError, PublishError, toErrorInfo } from './errors.js';
import { deadLetter } from './failure.js';
import type { ResolvedProcessorOptions } from './options.js';
import { isRequest } from './prepare.js';
import { ATTR_MESSAGING_OPERATION_TYPE } from './semconv.js';
import {
  endPublishingRun,
  MAX_TRACKED_UNPUBLISHED,
  type PublishTurn,
  publishingRun,
  type Shared,
} from './shared.js';
import type { Delivery, Disposition, Outcome } from './spi.js';
import type { CompletedRecord, OutgoingMessage, OutgoingRecord, StoredResult } from './store/types.js';
import { inSpan, instrumentsFor } from './tracing.js';
import { doublingBackoff, pause, retryStoreWrite, settledWithin } from './wait.js';

/** How long a refused `markPublished` is tried again before the ack goes out without it. */
const MARK_PUBLISHED_TRIES_MS = 3_000;

/** Before a message whose outgoing publish failed comes back: 0.5 s, doubling to 30 s. */
const publishBackoff = doublingBackoff(500, 30_000);

export async function finishCompleted<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  ctx: Context,
  delivery: Delivery,
  storeKey: string,
  found: { readonly record: CompletedRecord; readonly completedAgoMs?: number },
  shared: Shared,
  order?: PublishTurn,
): Promise<Disposition> {
  const { record } = found;
  let pending = unconfirmed(record);
  // The messages of the delivery before it in its ordered group go out first. Waited for before
  // this copy waits for, or becomes, its key's publisher: a copy holding a key while it waits for
  // another delivery let two groups with copies of two keys in crossed order wait for each other.
  if (pending.length > 0 && order !== undefined && !(await order.publishedBefore())) {
    return leftForRedelivery(shared, storeKey);
  }
  // A run or another copy in this process publishing the same messages right now (copies that
  // came together after a crash, a Kafka refetch): wait for it rather than send them twice, then
  // publish only what it did not confirm. For a lease at most: a run waits for the delivery before
  // it in its own group, which may wait for this one's group; past that, this copy publishes them
  // itself (copies with the same ids, which receivers deduplicate).
  let waited = false;
  for (let underWay = shared.publishing.get(storeKey); pending.length > 0 && underWay; ) {
    waited = true;
    const ended = await settledWithin([underWay.wait()], o.leaseMs);
    const fresh = await o.store.get(storeKey).catch(() => undefined);
    if (fresh?.state === 'COMPLETED') pending = unconfirmed(fresh);
    underWay = ended ? shared.publishing.get(storeKey) : undefined;
  }
  // Copies that come after this one wait for it in turn.
  const marker = pending.length > 0 ? publishingRun(shared, storeKey) : undefined;
  try {
    // Completed moments ago by another worker (copies that reached two workers at once): that
    // worker is most likely publishing them now (see `publishWaitMs`). Not when this process's own
    // publish of them was refused: nobody else is at it.
    if (
      pending.length > 0 &&
      !waited &&
      found.completedAgoMs !== undefined &&
      !shared.leftUnpublished.has(storeKey)
    ) {
      const waitMs = o.publishWaitMs - Math.max(0, found.completedAgoMs);
      pending = await publishedMeanwhile(o, storeKey, record.fence, pending, waitMs);
    }
    const d = await publishThenAck(
      o,
      ctx,
      delivery,
      storeKey,
      record.fence,
      pending,
      'duplicate',
      record.result,
      shared,
    );
    return record.compacted === true && d.action === 'ack' ? { ...d, compacted: true } : d;
  } finally {
    if (marker) endPublishingRun(shared, storeKey, marker);
  }
}

/** A COMPLETED record's outgoing messages not yet confirmed. */
function unconfirmed(record: CompletedRecord): readonly OutgoingRecord[] {
  return record.outgoing.filter((m) => !m.published);
}

/**
 * Watches the record for up to `waitMs` (25 ms between reads, doubling to 400 ms) while the worker
 * that completed it publishes: what it has not confirmed by then, or as soon as the record is no
 * longer that completion (cleared, or the store does not answer).
 */
async function publishedMeanwhile<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  storeKey: string,
  fence: number,
  pending: readonly OutgoingRecord[],
  waitMs: number,
): Promise<readonly OutgoingRecord[]> {
  const until = performance.now() + waitMs;
  let left = pending;
  for (let step = 25; left.length > 0; step = Math.min(step * 2, 400)) {
    const remaining = until - performance.now();
    if (remaining <= 0) break;
    await pause(Math.min(step, remaining));
    const fresh = await o.store.get(storeKey).catch(() => undefined);
    if (fresh?.state !== 'COMPLETED' || fresh.fence !== fence) break;
    left = unconfirmed(fresh);
  }
  return left;
}

export function publishThenAck<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  ctx: Context,
  delivery: Delivery,
  storeKey: string,
  fence: number,
  outgoing: readonly OutgoingMessage[],
  outcome: Outcome,
  result: StoredResult | undefined,
  shared: Shared,
  order?: PublishTurn,
): Promise<Disposition> | Disposition {
  // Nothing to publish (most runs): the ack at once, without an async frame.
  if (outgoing.length === 0) return ackOf(outcome, result);
  return (async (): Promise<Disposition> => {
    // In an ordered group (a Kafka partition) the record before may complete later than this one
    // (another Cluster node, another round trip): its messages go out first. If it was deferred,
    // this record's messages wait for their redelivery too, which answers them as a duplicate.
    if (order !== undefined && !(await order.publishedBefore())) return leftForRedelivery(shared, storeKey);
    try {
      const publisher = o.publisher;
      if (!publisher) {
        throw new PublishError('record has unconfirmed outgoing messages but the consumer has no publisher');
      }
      const destinations = [...new Set(outgoing.map((m) => m.destination))].join(',');
      await inSpan(
        `send ${destinations}`,
        ctx,
        { [ATTR_MESSAGING_OPERATION_TYPE]: 'send', 'messaging.batch.message_count': outgoing.length },
        () => publisher.publish(outgoing),
        SpanKind.CLIENT,
      );
    } catch (error) {
      return publishFailed(o, delivery, storeKey, error, shared);
    }
    shared.leftUnpublished.delete(storeKey);
    const ids = outgoing.map((m) => m.id);
    try {
      // A store that refuses a call for a moment (a lock error, a failover) must not leave the
      // record naming confirmed messages as unsent: every later duplicate would send them again.
      await retryStoreWrite(() => o.store.markPublished(storeKey, fence, ids), {
        deadline: performance.now() + MARK_PUBLISHED_TRIES_MS,
      });
    } catch (error) {
      // Published and confirmed: a later duplicate re-sends them, and receivers dedup by child key.
      o.logger.warn('markPublished failed after a confirmed publish', {
        key: storeKey,
        error: toErrorInfo(error),
      });
    }
    const ack = ackOf(outcome, result);
    if (outcome !== 'duplicate') return ack;
    // Messages another run completed but never confirmed: worth seeing, as copies on the wire.
    instrumentsFor().republished.add(outgoing.length, { consumer: o.consumer });
    o.logger.info(
      "published a completed record's unconfirmed outgoing messages for the run that completed it",
      {
        key: storeKey,
        messages: outgoing.length,
      },
    );
    return { ...ack, republished: outgoing.length };
  })();
}

function ackOf(outcome: Outcome, result: StoredResult | undefined): Extract<Disposition, { action: 'ack' }> {
  return result ? { action: 'ack', outcome, result } : { action: 'ack', outcome };
}

/**
 * A completed delivery whose messages wait for those of the delivery before it, which was deferred:
 * left to its redelivery, which then knows that nobody else is publishing them.
 */
function leftForRedelivery(shared: Shared, storeKey: string): Disposition {
  rememberUnpublished(shared, storeKey, shared.leftUnpublished.get(storeKey) ?? 0);
  return awaitingEarlier;
}

/** A completed delivery whose messages wait for an earlier delivery's (see publishThenAck). */
const awaitingEarlier: Disposition = Object.freeze({
  action: 'defer',
  outcome: 'publish-failed',
  delayMs: 0,
  error: toErrorInfo(
    new PublishError(
      'not published yet: an earlier message of the partition has outgoing messages to publish first',
    ),
  ),
});

/**
 * An unconfirmed publish defers the message (COMPLETED is durable; the redelivery publishes what
 * is still unconfirmed), with a growing delay. After `maxPublishDeferrals` in a row it escalates:
 * a destination that does not exist would otherwise hold a Kafka partition or a prefetch slot for
 * ever. The message is dead-lettered with the reason; replaying it publishes the outgoing
 * messages (the record answers it as a duplicate).
 */
function publishFailed<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  delivery: Delivery,
  storeKey: string,
  error: unknown,
  shared: Shared,
): Disposition {
  const failures = (shared.leftUnpublished.get(storeKey) ?? 0) + 1;
  if (failures > o.maxPublishDeferrals) {
    shared.leftUnpublished.delete(storeKey);
    // A request is answered retryable instead (see executor.ts): its next call publishes them.
    const outcome = isRequest(delivery) ? 'answering the request as retryable' : 'dead-lettering the message';
    o.logger.error(`outgoing messages never confirmed; ${outcome}`, {
      key: storeKey,
      unconfirmedInARow: failures,
      error: toErrorInfo(error),
    });
    instrumentsFor().publishEscalations.add(1, { consumer: o.consumer });
    const reason = new PublishError(
      `outgoing messages not confirmed after ${failures} attempts: ${describeThrown(error)}`,
      { cause: error },
    );
    return deadLetter(o, delivery, 'publish-failed', reason, failures);
  }
  rememberUnpublished(shared, storeKey, failures);
  o.logger.warn('outgoing publish not confirmed; kept for the next delivery or call of the key', {
    key: storeKey,
    unconfirmedInARow: failures,
    // What the broker said, and where to: a missing queue shows here, not only at escalation.
    error: toErrorInfo(error),
  });
  const delayMs = publishBackoff(failures);
  const info = toErrorInfo(
    error instanceof ExactlyOnceError ? error : new PublishError(describeThrown(error), { cause: error }),
  );
  return { action: 'defer', outcome: 'publish-failed', delayMs, error: info };
}

/**
 * Remembers that this process left `storeKey`'s messages unpublished after `failures` refused
 * publishes in a row (0: held back behind an earlier record): its next copy publishes them at once.
 * The map forgets the oldest first.
 */
function rememberUnpublished(shared: Shared, storeKey: string, failures: number): void {
  shared.leftUnpublished.delete(storeKey);
  shared.leftUnpublished.set(storeKey, failures);
  if (shared.leftUnpublished.size > MAX_TRACKED_UNPUBLISHED) {
    const oldest = shared.leftUnpublished.keys().next().value;
    if (oldest !== undefined) shared.leftUnpublished.delete(oldest);
  }
}
