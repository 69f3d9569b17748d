/**
 * The payload guard: the same payload under a new idempotency key within a window. A client that
 * makes a new key per retry (S6), or derives its key from a clock that crossed a boundary
 * (`hash(user, amount, minute)` at 2:00:59 → 2:01:00), defeats key-based deduplication: every
 * copy looks like a new message. The guard claims each message's payload fingerprint in the store
 * for `windowMs`; a second key arriving with a fingerprint another key claimed is flagged (metric,
 * span attribute, logger warning) or dead-lettered as a {@link DuplicatePayloadError}.
 *
 * The same key redelivered is never flagged: its claim is its own. Two genuinely distinct
 * messages with identical payloads (two identical orders placed on purpose within the window) are
 * a false positive: narrow what the fingerprint covers (the `fingerprint` option) or use `flag`.
 */
import type { Span } from '@opentelemetry/api';
import { ConfigError, DuplicatePayloadError } from './errors.js';
import { scopeKey } from './keys.js';
import type { Logger } from './logger.js';
import { type OptionNames, refuseUnknownOptions } from './option-names.js';
import { ATTR_EO_PAYLOAD_REUSE, ATTR_EO_PAYLOAD_REUSE_FIRST_KEY } from './semconv.js';
import type { ProcessedStore } from './store/types.js';
import { instrumentsFor } from './tracing.js';

export interface PayloadGuardOptions {
  /** How long (store time) a fingerprint stays claimed by the first key that carried it. */
  windowMs: number;
  /**
   * `flag`: process the message, and count it (`exactly_once.payload_reuse`), mark the span
   * (`exactly_once.payload_reuse`) and log a warning. `dead-letter`: dead-letter it with a
   * {@link DuplicatePayloadError} (non-retryable) without running the handler.
   */
  action: 'flag' | 'dead-letter';
}

export type ResolvedPayloadGuard = Readonly<PayloadGuardOptions>;

/** Validates `payloadGuard`; the store must implement `claimFingerprint`. */
export function resolvePayloadGuard(
  guard: PayloadGuardOptions | undefined,
  store: ProcessedStore,
): ResolvedPayloadGuard | undefined {
  if (guard === undefined) return undefined;
  if (typeof guard !== 'object' || guard === null) throw new ConfigError('payloadGuard must be an object');
  refuseUnknownOptions(
    guard,
    { windowMs: true, action: true } satisfies OptionNames<PayloadGuardOptions>,
    'payloadGuard',
  );
  const { windowMs, action } = guard;
  if (typeof windowMs !== 'number' || !Number.isInteger(windowMs) || windowMs <= 0) {
    throw new ConfigError(
      `payloadGuard.windowMs must be a positive integer of milliseconds (got ${windowMs})`,
    );
  }
  if (action !== 'flag' && action !== 'dead-letter') {
    throw new ConfigError(`payloadGuard.action must be 'flag' or 'dead-letter' (got ${String(action)})`);
  }
  if (typeof store.claimFingerprint !== 'function') {
    throw new ConfigError(
      'payloadGuard needs a store with claimFingerprint (memory, Redis and Mongo stores have it)',
    );
  }
  return Object.freeze({ windowMs, action });
}

/**
 * Claims the message's fingerprint for its key. Answers a {@link DuplicatePayloadError} when the
 * message must be dead-lettered, undefined when it goes on (flagged or not). Store failures throw.
 */
export async function guardPayload(args: {
  guard: ResolvedPayloadGuard;
  store: ProcessedStore;
  namespace: string;
  consumer: string;
  key: string;
  /** The key as the store names it: its own record, if any, is looked up (see below). */
  storeKey: string;
  fingerprint: string;
  span: Span;
  logger: Logger;
  /** Whether the first key may become a span attribute (see `recordKeys`). */
  recordKeys?: boolean;
}): Promise<DuplicatePayloadError | undefined> {
  const { guard, store, key, fingerprint } = args;
  const claim = store.claimFingerprint as NonNullable<ProcessedStore['claimFingerprint']>;
  const scope = scopeOf(args);
  let held = await claim.call(store, scope, fingerprint, key, guard.windowMs);
  if (held === undefined) return undefined;
  // Another key holds the payload. A key the store knows is not a new key: it is this key's own
  // message again after its claim lapsed (a duplicate to answer with its result), or the key
  // reused for another payload (IDEMPOTENCY_KEY_REUSE): its begin tells which. Only a key with no
  // record is a new key for a payload already seen. Reads on this path only.
  if ((await store.get(args.storeKey)) !== undefined) return undefined;
  for (let round = 0; held !== undefined && round < MAX_VOID_CLAIMS; round++) {
    // A holder whose record carries another payload never ran this one: its claim was made by a
    // copy refused as a key reuse, which gives it back once its begin answers. A request sent
    // right behind that copy (the client's correction under a new key) must not be refused for
    // it: give the claim back on the holder's behalf (only if it still holds it) and claim again.
    if (!(await reusedFor(store, scopeKey(args.namespace, args.consumer, held.firstKey), fingerprint))) break;
    await store.releaseFingerprint?.(scope, fingerprint, held.firstKey);
    held = await claim.call(store, scope, fingerprint, key, guard.windowMs);
  }
  if (held === undefined) return undefined;
  instrumentsFor().payloadReuse.add(1, { consumer: args.consumer, action: guard.action });
  if (args.span.isRecording()) {
    args.span.setAttribute(ATTR_EO_PAYLOAD_REUSE, true);
    if (args.recordKeys) args.span.setAttribute(ATTR_EO_PAYLOAD_REUSE_FIRST_KEY, held.firstKey);
  }
  args.logger.warn('same payload under a new idempotency key within the payload guard window', {
    consumer: args.consumer,
    key,
    firstKey: held.firstKey,
    fingerprint,
    action: guard.action,
  });
  return guard.action === 'dead-letter'
    ? new DuplicatePayloadError({ key, firstKey: held.firstKey, fingerprint })
    : undefined;
}

/**
 * Gives a refused key-reuse copy's claim back (see {@link ProcessedStore.releaseFingerprint}): its
 * payload ran under no key, so a corrected request carrying it under a new key is not refused as
 * a duplicate of the refused copy. Deletes only a claim `key` holds. A store without the
 * operation, or one that fails, leaves the claim to lapse with its window (logged).
 */
export async function releasePayloadClaim(args: {
  store: ProcessedStore;
  namespace: string;
  consumer: string;
  key: string;
  fingerprint: string;
  logger: Logger;
}): Promise<void> {
  const release = args.store.releaseFingerprint;
  if (release === undefined) return;
  try {
    await release.call(args.store, scopeOf(args), args.fingerprint, args.key);
  } catch (error) {
    args.logger.warn(
      'could not release the payload guard claim of a refused key reuse; it lasts its window',
      {
        consumer: args.consumer,
        key: args.key,
        error: error instanceof Error ? error.message : String(error),
      },
    );
  }
}

/** Void claims given back for one message before it is refused after all (racing reuses). */
const MAX_VOID_CLAIMS = 3;

/**
 * Whether the key under `storeKey` is recorded with a payload other than `fingerprint` (so it
 * cannot have run this one). A compaction marker keeps only a hash: it cannot tell, so no.
 */
async function reusedFor(store: ProcessedStore, storeKey: string, fingerprint: string): Promise<boolean> {
  if (store.releaseFingerprint === undefined) return false;
  const record = await store.get(storeKey);
  if (record === undefined || ('compacted' in record && record.compacted === true)) return false;
  return record.fingerprint !== fingerprint;
}

/** Claims are per consumer: another consumer may see the same payload for its own reasons. */
function scopeOf(at: { namespace: string; consumer: string }): string {
  return `${at.namespace}:${at.consumer}`;
}
