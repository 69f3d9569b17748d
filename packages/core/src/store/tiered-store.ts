/**
 * A tiered processed-store for long-tail retries: a fast `hot` store (e.g. Redis) holds leases,
 * steps and recent terminal records for `hotRetentionMs`; a durable `cold` store (e.g. MongoDB)
 * holds every COMPLETED and FAILED record for the full retention, so a retry that comes back after
 * the hot store forgot the key (its retention passed, or it was evicted) is still answered as a
 * duplicate and never runs the handler again.
 *
 * Protocol (both tiers are ordinary {@link ProcessedStore}s; nothing else is assumed of them):
 *
 * - `begin`: hot first. busy / duplicate / failed / mismatch from hot are answered at once (one
 *   round trip: a recent duplicate never touches cold), but for a mismatch with an IN_PROGRESS
 *   record, which cold's COMPLETED or FAILED record overrules. When hot acquires, cold is asked with the
 *   same request (`cold.begin`, lease `leaseMs`, the owner tagged with the hot fence): cold
 *   `acquired` -> acquired (the returned fence is the hot one); cold `duplicate` / `failed` /
 *   `mismatch` / `busy` -> that answer (the long tail), and the hot lease just taken is released
 *   and cleared so the hot tier does not shadow the cold record. Cold is waited for four fifths
 *   of the lease at most; then (or when it fails) the hot lease is given back unrun.
 * - `complete` and `fail`: **cold first, then hot.** The cold write is the commit point: it is
 *   fenced by cold's own lease (found by the hot-fence tag of the cold IN_PROGRESS record), so a
 *   stale worker whose cold lease was taken over commits nothing. Only after cold acknowledged is
 *   hot written (retention `min(hotRetentionMs, retention)`), and only after `complete` returns
 *   does the pipeline publish and ack. A crash between the two writes leaves cold COMPLETED and hot
 *   IN_PROGRESS: the next delivery acquires in hot, finds the COMPLETED record in cold and is
 *   answered as a duplicate, so nothing runs twice. The reverse order (hot first) would let a
 *   crash leave a COMPLETED record only in the tier that forgets it.
 * - `extend`, `saveStep`, `markStepStarted`: hot only (the heartbeat stays one fast round trip). The cold lease is
 *   not extended: it only matters to a worker that got past hot, i.e. after hot lost the record
 *   or its lease passed, and then taking the cold lease over is exactly what fencing needs.
 * - `release`: hot, then cold's lease (so the next attempt acquires in cold at once).
 * - `markPublished`: both tiers; cold's record is addressed by its own fence.
 * - `get`: hot; when hot has no terminal record, cold too (a terminal record wins).
 * - `clear`: hot, then cold.
 * - `listInProgress`, `claimFingerprint`, `releaseFingerprint`: hot's, when it has them.
 *
 * Fences: the fence handed to the pipeline is always the hot tier's, which starts at hot store
 * time for a new record, so it stays monotonic even after hot forgot a key. A duplicate answered
 * from cold carries cold's record (and fence), which `markPublished` accepts as well.
 *
 * Steps live in the hot tier only: an IN_PROGRESS record the hot store lost loses its steps.
 */

import { ConfigError, type ErrorInfo, StoreUnavailableError } from '../errors.js';
import { type OptionNames, refuseUnknownOptions } from '../option-names.js';
import { positiveMs } from '../options.js';
import { answeredWithin } from '../wait.js';
import type {
  BeginRequest,
  BeginResult,
  ClearResult,
  CompletedRecord,
  CompleteRequest,
  FailedRecord,
  FencedResult,
  InProgressRecord,
  ProcessedRecord,
  ProcessedStore,
} from './types.js';
import { RecordState } from './types.js';

export interface TieredStoreOptions {
  /** The fast tier: leases, steps, recent records (e.g. `createRedisStore`). */
  readonly hot: ProcessedStore;
  /** The durable tier: every COMPLETED and FAILED record for the full retention (e.g. `createMongoStore`). */
  readonly cold: ProcessedStore;
  /** How long the hot tier keeps a COMPLETED or FAILED record (capped by the record's retention). */
  readonly hotRetentionMs: number;
  /**
   * How long the cold tier keeps a COMPLETED or FAILED record. @defaultValue the retention the
   * pipeline asks for (the processor's `retentionMs`).
   */
  readonly coldRetentionMs?: number;
  /**
   * Lease of the cold tier's claim, taken when hot acquires a key. It is never extended (see the
   * module doc), so keep it no longer than the processor's `leaseMs`. @defaultValue 30000
   */
  readonly coldLeaseMs?: number;
}

export interface TieredStore extends ProcessedStore {
  readonly hot: ProcessedStore;
  readonly cold: ProcessedStore;
  /** The cold tier's retention for a record completed with `requestedMs`. */
  effectiveRetentionMs(requestedMs: number): number;
}

const TAG = '\u0000hot-fence:';
const RELEASED: ErrorInfo = {
  name: 'TieredStore',
  code: 'COLD_TIER_ANSWERED',
  message: 'the cold tier answered for this key',
};

function tag(owner: string, fence: number): string {
  return `${owner}${TAG}${fence}`;
}

function untag<R extends ProcessedRecord | undefined>(record: R): R {
  if (!record || record.state !== RecordState.InProgress) return record;
  const at = record.owner.lastIndexOf(TAG);
  return (at < 0 ? record : { ...record, owner: record.owner.slice(0, at) }) as R;
}

function hotFenceOf(record: ProcessedRecord | undefined): number | undefined {
  if (!record || record.state !== RecordState.InProgress) return undefined;
  const at = record.owner.lastIndexOf(TAG);
  return at < 0 ? undefined : Number(record.owner.slice(at + TAG.length));
}

function terminal(record: ProcessedRecord | undefined): record is CompletedRecord | FailedRecord {
  return record !== undefined && record.state !== RecordState.InProgress;
}

/** The answer a begin of `fingerprint` gets from a COMPLETED or FAILED record, as a store's own. */
function answerOf(record: CompletedRecord | FailedRecord, fingerprint: string): BeginResult {
  if (record.fingerprint !== fingerprint) return { status: 'mismatch', record };
  return record.state === RecordState.Completed
    ? { status: 'duplicate', record }
    : { status: 'failed', record };
}

/** The share of a begin's lease the cold tier is waited for (see begin). */
const COLD_WAIT_SHARE = 0.8;

/**
 * Builds a {@link TieredStore}. Retention check: the processor checks its horizon against
 * {@link TieredStore.effectiveRetentionMs} (the cold tier's retention), not `hotRetentionMs`.
 */
export function createTieredStore(options: TieredStoreOptions): TieredStore {
  refuseUnknownOptions(options, {
    hot: true,
    cold: true,
    hotRetentionMs: true,
    coldRetentionMs: true,
    coldLeaseMs: true,
  } satisfies OptionNames<TieredStoreOptions>);
  const { hot, cold, hotRetentionMs } = options;
  if (!hot || !cold) throw new ConfigError('createTieredStore: hot and cold stores are required');
  // One store as both tiers would claim each key twice in it: every new key would answer busy.
  if (hot === cold) throw new ConfigError('createTieredStore: hot and cold must be two stores, not one');
  // NaN would never expire a cold claim: every other attempt would read it as busy for ever.
  positiveMs('hotRetentionMs', hotRetentionMs);
  if (options.coldLeaseMs !== undefined) positiveMs('coldLeaseMs', options.coldLeaseMs);
  if (options.coldRetentionMs !== undefined) positiveMs('coldRetentionMs', options.coldRetentionMs);
  const coldLeaseMs = options.coldLeaseMs ?? 30_000;
  const coldRetention = (requested: number) => options.coldRetentionMs ?? requested;
  const hotRetention = (requested: number) => Math.min(hotRetentionMs, coldRetention(requested));

  /**
   * `clear` of the FAILED record the caller read with `get`, whose fence is hot's when hot held
   * that record (get reads hot first) and cold's otherwise. Each tier's clear checks its own
   * record in the same step as it deletes it, cold's against the fence read from cold.
   */
  async function clearFailed(key: string, fence: number): Promise<ClearResult> {
    const inHot = await hot.get(key);
    if (!terminal(inHot)) {
      // The caller read cold's record; a hot lease beside it is left to the key's next begin.
      return cold.clear(key, { failedFence: fence });
    }
    if (inHot.state !== RecordState.Failed || inHot.fence !== fence) return 'changed';
    const inCold = await cold.get(key);
    const first = await hot.clear(key, { failedFence: fence });
    if (first !== 'cleared') return first;
    if (inCold?.state !== RecordState.Failed) return 'cleared';
    // Cold failed the key first (its write is the commit point), under its own fence.
    const second = await cold.clear(key, { failedFence: inCold.fence });
    return second === 'absent' ? 'cleared' : second;
  }

  /** Give up a hot lease taken only to consult cold, so hot does not shadow cold's answer. */
  async function dropHot(key: string, fence: number): Promise<void> {
    if ((await hot.release(key, fence, RELEASED)) === 'ok') await hot.clear(key);
  }

  /**
   * Give a hot lease back unrun when cold cannot be asked yet (busy, or unreachable) rather than
   * clear it: its record holds the key's journaled steps and attempt count, which the attempt that
   * goes on next must find, and a try that never ran counts no attempt.
   */
  function giveBackHot(key: string, begun: { fence: number; kind: string }): Promise<FencedResult> {
    // A takeover stays one (its last run that started still died or stalled): see ReleaseOptions.
    return hot.release(key, begun.fence, RELEASED, {
      notRun: true,
      ...(begun.kind === 'takeover' ? { takenOver: true } : {}),
    });
  }

  /** Cold's IN_PROGRESS record claimed under hot fence `fence`, if it is still that claim. */
  async function coldClaim(key: string, fence: number): Promise<InProgressRecord | undefined> {
    const record = await cold.get(key);
    if (record?.state !== RecordState.InProgress) return undefined;
    const tagged = hotFenceOf(record);
    if (tagged === fence) return record;
    // A claim tagged with an older hot fence: a begin that got past hot before this holder took
    // the hot lease over, and reached cold only after this holder's claim had lapsed (it is never
    // extended) and took it over (a process paused between the tiers, a cold request delayed).
    // Hot, where leases are kept, still names this holder: the commit is this holder's, not lost.
    if (tagged !== undefined && tagged < fence) {
      const held = await hot.get(key);
      if (held?.state === RecordState.InProgress && held.fence === fence) return record;
    }
    return undefined;
  }

  /**
   * A complete or fail without its cold claim: the repeat of one whose answer was lost, or a stale
   * one. Hot ended in `state` under the fence: it landed whole. Hot still IN_PROGRESS under it and
   * cold ended in `state`: it landed in cold only, and that cold record is this holder's (anyone
   * else gets to cold only by taking the hot lease over, which changes hot's fence); hot is written
   * now.
   */
  async function endAgain(
    key: string,
    fence: number,
    state: typeof RecordState.Completed | typeof RecordState.Failed,
    writeHot: () => Promise<FencedResult>,
  ): Promise<FencedResult> {
    const held = await hot.get(key);
    if (held?.fence !== fence) return 'lost';
    if (held.state === state) return 'ok';
    if (held.state !== RecordState.InProgress) return 'lost';
    if ((await cold.get(key))?.state !== state) return 'lost';
    await writeHot();
    return 'ok';
  }

  return {
    hot,
    cold,
    effectiveRetentionMs: coldRetention,

    async begin(request: BeginRequest): Promise<BeginResult> {
      const first = await hot.begin(request);
      if (first.status === 'mismatch' && first.record.state === RecordState.InProgress) {
        // Hot's record is an unfinished claim of another payload: one whose cold begin failed or
        // is under way (hot acquired, cold not asked yet or unreachable). While cold holds the
        // key's outcome, that claim does not own the key: an answer from hot alone refused the
        // key's own payload, retried after hot forgot it, for as long as the claim was kept.
        const durable = await cold.get(request.key);
        if (terminal(durable)) return answerOf(durable, request.fingerprint);
        return first;
      }
      if (first.status !== 'acquired') return first;
      // Cold is given up on before the hot lease ends, so a copy arriving meanwhile is answered
      // busy and the outage counts no attempt; past the lease, each copy took the key over.
      const giveUpMs = Math.max(1, Math.floor(request.leaseMs * COLD_WAIT_SHARE));
      let second: BeginResult;
      try {
        second = await answeredWithin(
          cold.begin({
            ...request,
            owner: tag(request.owner, first.fence),
            leaseMs: Math.min(request.leaseMs, coldLeaseMs),
            // A cold store that can refuses it past this (see BeginRequest.abandonAfterMs).
            abandonAfterMs: Math.min(request.abandonAfterMs ?? Number.POSITIVE_INFINITY, giveUpMs),
          }),
          giveUpMs,
          () =>
            new StoreUnavailableError({
              operation: 'begin',
              message: `the cold tier did not answer a begin within ${giveUpMs} ms (four fifths of leaseMs): the hot lease is given back unrun`,
            }),
          (late) => {
            // Its claim is nobody's: given back, so the next try is not answered busy until it lapses.
            if ('value' in late && late.value.status === 'acquired') {
              cold.release(request.key, late.value.fence, RELEASED, { notRun: true }).catch(() => undefined);
            }
          },
        );
      } catch (error) {
        // Cold cannot be reached: an outage must count no attempt (each try would otherwise take
        // the lease over and count one, until innocent messages were ATTEMPTS_EXHAUSTED). A cold
        // claim that landed all the same answers the next try busy until it lapses.
        await giveBackHot(request.key, first).catch(() => undefined);
        throw error;
      }
      if (second.status === 'acquired') return first;
      if (second.status === 'busy') {
        // Another attempt's cold claim is still live (a clear of hot made the next attempt start
        // over and repeat its steps).
        await giveBackHot(request.key, first);
        return { ...second, record: untag(second.record) };
      }
      await dropHot(request.key, first.fence);
      if (second.status === 'mismatch') return { ...second, record: untag(second.record) };
      return second;
    },

    extend: (key, fence, leaseMs) => hot.extend(key, fence, leaseMs),
    saveStep: (key, fence, name, result) => hot.saveStep(key, fence, name, result),

    async complete(request: CompleteRequest): Promise<FencedResult> {
      const claim = await coldClaim(request.key, request.fence);
      if (!claim) {
        return endAgain(request.key, request.fence, RecordState.Completed, () =>
          hot.complete({ ...request, retentionMs: hotRetention(request.retentionMs) }),
        );
      }
      // The commit point: durable in cold before anything else sees the record as COMPLETED.
      const committed = await cold.complete({
        ...request,
        fence: claim.fence,
        retentionMs: coldRetention(request.retentionMs),
      });
      if (committed !== 'ok') return committed;
      // Hot may answer 'lost' (taken over meanwhile); the outcome is committed all the same, and
      // the taker is answered as a duplicate from cold.
      await hot.complete({ ...request, retentionMs: hotRetention(request.retentionMs) });
      return 'ok';
    },

    async fail(key, fence, error, retentionMs): Promise<FencedResult> {
      const claim = await coldClaim(key, fence);
      if (!claim) {
        return endAgain(key, fence, RecordState.Failed, () =>
          hot.fail(key, fence, error, hotRetention(retentionMs)),
        );
      }
      const committed = await cold.fail(key, claim.fence, error, coldRetention(retentionMs));
      if (committed !== 'ok') return committed;
      await hot.fail(key, fence, error, hotRetention(retentionMs));
      return 'ok';
    },

    async release(key, fence, error, options): Promise<FencedResult> {
      const released = await hot.release(key, fence, error, options);
      if (released !== 'ok') return released;
      const claim = await coldClaim(key, fence);
      if (claim) await cold.release(key, claim.fence, error, options);
      return 'ok';
    },

    async markPublished(key, fence, ids): Promise<void> {
      const [, record] = await Promise.all([hot.markPublished(key, fence, ids), cold.get(key)]);
      if (record?.state !== RecordState.Completed) return;
      if (record.fence === fence) {
        await cold.markPublished(key, fence, ids);
        return;
      }
      // A fence of the hot record: cold holds the same completion under its own fence.
      const mirror = await hot.get(key);
      if (mirror?.state === RecordState.Completed && mirror.fence === fence) {
        await cold.markPublished(key, record.fence, ids);
      }
    },

    async get(key): Promise<ProcessedRecord | undefined> {
      const record = await hot.get(key);
      if (terminal(record)) return record;
      const durable = await cold.get(key);
      if (terminal(durable)) return durable;
      return record ?? untag(durable);
    },

    async clear(key, options): Promise<ClearResult> {
      if (options?.failedFence !== undefined) return clearFailed(key, options.failedFence);
      const first = await hot.clear(key);
      if (first === 'busy') return 'busy';
      const second = await cold.clear(key);
      if (second === 'busy') return 'busy';
      return first === 'cleared' || second === 'cleared' ? 'cleared' : 'absent';
    },

    // IN_PROGRESS records and their steps live in the hot tier (cold only holds claims); the
    // payload guard's short-lived claims too.
    ...(hot.listInProgress ? { listInProgress: hot.listInProgress.bind(hot) } : {}),
    ...(hot.markStepStarted ? { markStepStarted: hot.markStepStarted.bind(hot) } : {}),
    ...(hot.claimFingerprint ? { claimFingerprint: hot.claimFingerprint.bind(hot) } : {}),
    ...(hot.releaseFingerprint ? { releaseFingerprint: hot.releaseFingerprint.bind(hot) } : {}),

    async close(): Promise<void> {
      await Promise.all([hot.close?.(), cold.close?.()]);
    },
  };
}
