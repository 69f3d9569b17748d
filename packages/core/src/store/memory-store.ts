/**
 * An in-memory {@link ProcessedStore} for unit and property tests. Not for production: records
 * live in one process and vanish with it, so it cannot deduplicate across workers or restarts.
 */
import type { ErrorInfo } from '../errors.js';
import type { Writable } from '../own.js';
import { oldestFirst } from './stuck.js';
import {
  type BeginRequest,
  type BeginResult,
  type ClearOptions,
  type ClearResult,
  type CompletedRecord,
  type CompleteRequest,
  type FailedRecord,
  type FencedResult,
  type FingerprintClaim,
  type InProgressEntry,
  type InProgressQuery,
  type InProgressRecord,
  type MarkPublishedRequest,
  type OutgoingRecord,
  type ProcessedRecord,
  type ProcessedStore,
  RecordState,
  type ReleaseOptions,
  type StepRecord,
  type StoredResult,
} from './types.js';

export interface MemoryStoreOptions {
  /** The store's clock (ms since epoch); inject one to step leases and retention by hand. */
  readonly now?: () => number;
}

/** A {@link ProcessedStore} kept in a `Map`. */
export interface MemoryStore extends ProcessedStore {
  /**
   * Records held, expired COMPLETED/FAILED records included: they are kept so that a key's
   * fences keep growing after its record expired (see {@link createMemoryStore}).
   */
  size(): number;
}

/**
 * Creates an in-memory processed-store for tests. **Not for production**: single-process, nothing
 * is persisted.
 *
 * Every operation runs synchronously against a `Map` before its promise resolves, so each one is
 * atomic by construction and concurrent callers interleave only between operations, as they would
 * against a real store. State lives in the store object, not in the workers using it: a test can
 * drop a worker mid-message ("crash" it) and start another against the same store.
 *
 * Choices the contract leaves open:
 * - A holder whose lease has passed but whom nobody has taken over yet may still `extend`,
 *   `saveStep`, `complete`, `release` or `fail`: the fence, not the clock, decides ownership.
 *   Until another `begin` bumps the fence nobody else can have started, so finishing is safe and
 *   saves a redo.
 * - Likewise after `release`, until the next `begin` takes the key: `release` is advice to the
 *   next `begin` (acquire at once, kind `retry`), and only a new fence revokes the old one.
 * - Expired COMPLETED/FAILED records read as absent but stay in the map, so the next `begin`
 *   continues the key's fence instead of restarting at 1.
 *
 * Byte arrays are copied on the way in and out: a caller mutating its buffers afterwards, or the
 * arrays it read back, never changes what the store holds.
 */
export function createMemoryStore(options: MemoryStoreOptions = {}): MemoryStore {
  const now = options.now ?? Date.now;
  const records = new Map<string, ProcessedRecord>();
  // Payload-guard claims: scope NUL fingerprint -> first key and store-time expiry.
  const claims = new Map<string, { key: string; until: number }>();
  // Store time each key's current attempt began, for listInProgress.
  const started = new Map<string, number>();

  const live = (key: string, at: number): ProcessedRecord | undefined => {
    const record = records.get(key);
    if (record === undefined || isExpired(record, at)) return undefined;
    return record;
  };

  const held = (key: string, fence: number): InProgressRecord | undefined => {
    const record = records.get(key);
    return record?.state === RecordState.InProgress && record.fence === fence ? record : undefined;
  };
  /** Whether `key` ended in `state` (and not expired) under `fence`: a repeated complete or fail. */
  const endedBy = (key: string, fence: number, state: RecordState): boolean => {
    const record = records.get(key);
    return record?.state === state && record.fence === fence && !isExpired(record, now());
  };

  // The operations themselves, synchronous: the single and the batch forms both call them (a
  // batch awaited nothing between its keys, so it is as atomic as before, and cheaper).
  const beginNow = (request: BeginRequest): BeginResult => {
    const at = now();
    const stored = records.get(request.key);
    const current = stored !== undefined && !isExpired(stored, at) ? stored : undefined;

    if (current !== undefined) {
      if (current.fingerprint !== request.fingerprint) {
        return { status: 'mismatch', record: copyRecord(current) };
      }
      if (current.state === RecordState.Completed) {
        return {
          status: 'duplicate',
          record: copyRecord(current),
          completedAgoMs: at - current.completedAt,
        };
      }
      if (current.state === RecordState.Failed) return { status: 'failed', record: copyRecord(current) };
      if (current.leaseUntil > at) {
        return { status: 'busy', record: copyRecord(current), retryAfterMs: current.leaseUntil - at };
      }
    }

    const kind = current === undefined ? 'new' : current.leaseUntil === 0 ? 'retry' : 'takeover';
    const previous = current?.state === RecordState.InProgress ? current : undefined;
    const next: Writable<InProgressRecord> = {
      key: request.key,
      fingerprint: request.fingerprint,
      state: RecordState.InProgress,
      // A new record starts its fence at store time, so fences never repeat even where the
      // old record was physically deleted (see ProcessedStore.begin).
      fence: kind === 'new' ? Math.max((stored?.fence ?? 0) + 1, Math.floor(at)) : (stored?.fence ?? 0) + 1,
      attempt: (previous?.attempt ?? 0) + 1,
      owner: request.owner,
      leaseUntil: at + request.leaseMs,
      steps: previous?.steps ?? {},
    };
    // Set rather than spread: a new key's begin is on every message's path in core's tests.
    if (request.traceId !== undefined) next.traceId = request.traceId;
    if (previous?.lastError !== undefined) next.lastError = previous.lastError;
    records.set(request.key, next);
    started.set(request.key, at);
    return {
      status: 'acquired',
      kind,
      fence: next.fence,
      attempt: next.attempt,
      leaseUntil: next.leaseUntil,
      steps: copySteps(next.steps),
    };
  };

  const completeNow = (request: CompleteRequest): FencedResult => {
    const record = held(request.key, request.fence);
    if (record === undefined)
      return endedBy(request.key, request.fence, RecordState.Completed) ? 'ok' : 'lost';
    const at = now();
    const traceId = request.traceId ?? record.traceId;
    const completed: Writable<CompletedRecord> = {
      key: record.key,
      fingerprint: record.fingerprint,
      state: RecordState.Completed,
      fence: record.fence,
      attempt: record.attempt,
      outgoing: request.outgoing.map((message) => copyOutgoing({ ...message, published: false })),
      completedAt: at,
      expiresAt: at + request.retentionMs,
    };
    if (traceId !== undefined) completed.traceId = traceId;
    if (request.result !== undefined) completed.result = copyResult(request.result);
    records.set(request.key, completed);
    return 'ok';
  };

  const store: MemoryStore = {
    async begin(request: BeginRequest): Promise<BeginResult> {
      return beginNow(request);
    },

    async listInProgress(query: InProgressQuery): Promise<InProgressEntry[]> {
      const cutoff = now() - query.olderThanMs;
      const found: InProgressEntry[] = [];
      for (const [key, record] of records) {
        if (record.state !== RecordState.InProgress) continue;
        if (query.prefix !== undefined && !key.startsWith(query.prefix)) continue;
        const startedAt = started.get(key) ?? 0;
        if (startedAt > cutoff) continue;
        const { owner, attempt, fence, leaseUntil } = record;
        found.push({ key, owner, attempt, fence, leaseUntil, startedAt });
      }
      return oldestFirst(found, query.limit);
    },

    async extend(key: string, fence: number, leaseMs: number): Promise<FencedResult> {
      const record = held(key, fence);
      // A released lease (its end 0 or 1) is not held: a late extension must not revive it.
      if (record === undefined || record.leaseUntil <= 1) return 'lost';
      records.set(key, { ...record, leaseUntil: now() + leaseMs });
      return 'ok';
    },

    async complete(request: CompleteRequest): Promise<FencedResult> {
      return completeNow(request);
    },

    async release(
      key: string,
      fence: number,
      error: ErrorInfo,
      options?: ReleaseOptions,
    ): Promise<FencedResult> {
      const record = held(key, fence);
      if (record === undefined) return 'lost';
      records.set(
        key,
        options?.notRun
          ? { ...record, leaseUntil: options.takenOver ? 1 : 0, attempt: Math.max(record.attempt - 1, 0) }
          : { ...record, leaseUntil: 0, lastError: copyError(error) },
      );
      return 'ok';
    },

    async fail(key: string, fence: number, error: ErrorInfo, retentionMs: number): Promise<FencedResult> {
      const record = held(key, fence);
      if (record === undefined) return endedBy(key, fence, RecordState.Failed) ? 'ok' : 'lost';
      const at = now();
      const failed: FailedRecord = {
        key: record.key,
        fingerprint: record.fingerprint,
        state: RecordState.Failed,
        fence: record.fence,
        attempt: record.attempt,
        ...(record.traceId === undefined ? {} : { traceId: record.traceId }),
        error: copyError(error),
        failedAt: at,
        expiresAt: at + retentionMs,
      };
      records.set(key, failed);
      return 'ok';
    },

    async markPublished(key: string, fence: number, ids: readonly string[]): Promise<void> {
      const record = live(key, now());
      if (record?.state !== RecordState.Completed || record.fence !== fence) return;
      const confirmed = new Set(ids);
      records.set(key, {
        ...record,
        outgoing: record.outgoing.map((m) => (confirmed.has(m.id) ? { ...m, published: true } : m)),
      });
    },

    async saveStep(key: string, fence: number, name: string, result: Uint8Array): Promise<FencedResult> {
      const record = held(key, fence);
      if (record === undefined) return 'lost';
      const step: StepRecord = { state: 'done', result: new Uint8Array(result), at: now() };
      records.set(key, { ...record, steps: { ...record.steps, [name]: step } });
      return 'ok';
    },

    async markStepStarted(key: string, fence: number, name: string): Promise<FencedResult> {
      const record = held(key, fence);
      if (record === undefined) return 'lost';
      const step: StepRecord = { state: 'started', result: new Uint8Array(0), at: now() };
      records.set(key, { ...record, steps: { ...record.steps, [name]: step } });
      return 'ok';
    },

    async get(key: string): Promise<ProcessedRecord | undefined> {
      const record = live(key, now());
      return record === undefined ? undefined : copyRecord(record);
    },

    async clear(key: string, options?: ClearOptions): Promise<ClearResult> {
      const record = live(key, now());
      if (options?.failedFence !== undefined && record !== undefined) {
        if (record.state !== RecordState.Failed || record.fence !== options.failedFence) return 'changed';
      }
      if (record?.state === RecordState.InProgress && record.leaseUntil > now()) return 'busy';
      // Kept (as an expired tombstone) so the key's fences keep growing; reads as absent.
      const stored = records.get(key);
      if (stored === undefined || record === undefined) return 'absent';
      records.set(key, tombstone(stored, now()));
      return 'cleared';
    },

    // Batch forms: the single operations in order, with nothing awaited between them.
    async beginMany(requests: readonly BeginRequest[]): Promise<BeginResult[]> {
      return requests.map(beginNow);
    },

    async completeMany(requests: readonly CompleteRequest[]): Promise<FencedResult[]> {
      return requests.map(completeNow);
    },

    async markPublishedMany(requests: readonly MarkPublishedRequest[]): Promise<void> {
      for (const r of requests) await store.markPublished(r.key, r.fence, r.ids);
    },

    async claimFingerprint(
      scope: string,
      fingerprint: string,
      key: string,
      windowMs: number,
    ): Promise<FingerprintClaim | undefined> {
      const at = now();
      const id = claimId(scope, fingerprint);
      const claim = claims.get(id);
      if (claim !== undefined && claim.until > at)
        return claim.key === key ? undefined : { firstKey: claim.key };
      claims.set(id, { key, until: at + windowMs });
      // Forget lapsed claims now and then, so a long test run does not grow without bound.
      if (claims.size % 1024 === 0) for (const [k, c] of claims) if (c.until <= at) claims.delete(k);
      return undefined;
    },

    async releaseFingerprint(scope: string, fingerprint: string, key: string): Promise<void> {
      const id = claimId(scope, fingerprint);
      if (claims.get(id)?.key === key) claims.delete(id);
    },

    size(): number {
      return records.size;
    },
  };
  return store;
}

/** A fingerprint claim's map key; length-prefixed so no (scope, fingerprint) spells another's. */
function claimId(scope: string, fingerprint: string): string {
  return `${scope.length}:${scope}\u0000${fingerprint}`;
}

/** A record that reads as absent but keeps the key's fence (see createMemoryStore). */
function tombstone(record: ProcessedRecord, at: number): FailedRecord {
  return {
    key: record.key,
    fingerprint: record.fingerprint,
    state: RecordState.Failed,
    fence: record.fence,
    attempt: record.attempt,
    error: { name: 'Cleared', code: 'CLEARED', message: 'cleared' },
    failedAt: at,
    expiresAt: at,
  };
}

function isExpired(record: ProcessedRecord, at: number): boolean {
  return record.state !== RecordState.InProgress && record.expiresAt <= at;
}

function copyError(error: ErrorInfo): ErrorInfo {
  return { name: error.name, code: error.code, message: error.message };
}

function copyResult(result: StoredResult): StoredResult {
  if (result.kind === 'inline') return { kind: 'inline', data: new Uint8Array(result.data) };
  const { uri, size, sha256 } = result.pointer;
  return { kind: 'blob', pointer: { uri, size, sha256 }, ...(result.raw ? { raw: true } : {}) };
}

function copyOutgoing(message: OutgoingRecord): OutgoingRecord {
  return {
    id: message.id,
    destination: message.destination,
    ...(message.routingKey === undefined ? {} : { routingKey: message.routingKey }),
    body: new Uint8Array(message.body),
    headers: { ...message.headers },
    published: message.published,
  };
}

function copySteps(steps: Readonly<Record<string, StepRecord>>): Record<string, StepRecord> {
  // fromEntries defines own properties, so a step named `__proto__` stays an ordinary entry.
  return Object.fromEntries(
    Object.entries(steps).map(([name, step]) => [
      name,
      { state: step.state, result: new Uint8Array(step.result), at: step.at },
    ]),
  );
}

function copyRecord<R extends ProcessedRecord>(record: R): R {
  return copyAny(record) as R;
}

function copyAny(record: ProcessedRecord): ProcessedRecord {
  switch (record.state) {
    case RecordState.InProgress:
      return {
        ...record,
        steps: copySteps(record.steps),
        ...(record.lastError === undefined ? {} : { lastError: copyError(record.lastError) }),
      };
    case RecordState.Completed:
      return {
        ...record,
        ...(record.result === undefined ? {} : { result: copyResult(record.result) }),
        outgoing: record.outgoing.map(copyOutgoing),
      };
    case RecordState.Failed:
      return { ...record, error: copyError(record.error) };
  }
}
