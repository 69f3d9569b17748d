/**
 * The MongoDB processed-store. Every decision is a unique-`_id` insert and every other write
 * addresses one document by `_id` alone, so it is safe on servers that do not apply filtered
 * updates atomically (FerretDB 1.x) as well as on MongoDB. The protocol is described in the
 * package README ("How it works").
 */
import { isDeepStrictEqual } from 'node:util';
import {
  type AcquireKind,
  type BeginRequest,
  type BeginResult,
  type BlobStore,
  batchAnswers,
  type ClearOptions,
  type ClearResult,
  type CompleteRequest,
  ConfigError,
  collectOrphanBlobs,
  type ErrorInfo,
  type FencedResult,
  type FingerprintClaim,
  type HistoryEntry,
  type InProgressEntry,
  type InProgressQuery,
  type InProgressRecord,
  type MarkPublishedRequest,
  type OrphanBlobOptions,
  type OrphanBlobStats,
  type ProcessedRecord,
  type ProcessedStore,
  type ReleaseOptions,
  StoreUnavailableError,
} from '@exactly-once/core';
import {
  collectingFailures,
  doublingBackoff,
  type OptionNames,
  pause,
  type Repeating,
  refuseUnknownOptions,
  repeatEvery,
} from '@exactly-once/core/spi';
import type { Collection, Db, Document, Filter, UpdateFilter, WriteConcernSettings } from 'mongodb';
import {
  type Chain,
  chainOf,
  hasSuccessor,
  headNames,
  newChainId,
  placeOfRecord,
  readChain,
  readChains,
  readHistory,
} from './chain.js';
import { clientClock, type StoreClock, serverClock } from './clock.js';
import {
  decodeRecord,
  decodeSteps,
  elementId,
  elementPlace,
  encodeError,
  encodeOutgoing,
  encodeResult,
  type HeadDoc,
  isExpired,
  isTombstone,
  packFingerprint,
  packTraceId,
  type RecordDoc,
  State,
  type StepDoc,
  toBinary,
} from './codec.js';
import {
  asStoreError,
  commandParts,
  duplicateIndexes,
  guarded as guardedCall,
  isDuplicateKey,
  isUnsupported,
  reopenAfterFailedConnect,
} from './driver.js';
import { dismantle, type SweepResult, sweepExpired } from './sweep.js';
import { updateGate } from './update-gate.js';

export interface MongoStoreOptions {
  /** Database holding the records collection (ignored for records when `collection` is given). */
  readonly db?: Db;
  /** The records collection itself; with it, `db` is only used for the server clock. */
  readonly collection?: Collection<Document>;
  /** Collection name under `db`. Default `eo_records`. */
  readonly collectionName?: string;
  /**
   * Write concern of every write. Default `{ w: 'majority' }`: on a replica set a record then
   * survives a primary failover. On a standalone server (and FerretDB) it is acknowledged after the
   * local write, whatever is asked for.
   */
  readonly writeConcern?: WriteConcernSettings;
  /**
   * `server` (default): deadlines on the server's clock, estimated from `hello.localTime` (see
   * clock.ts). `client`: this host's clock; every worker's host must then be synchronised.
   */
  readonly clock?: 'server' | 'client';
  /** How often the server clock is measured again. Default 60 s. */
  readonly clockRefreshMs?: number;
  /** Blob store holding large results: the sweeper deletes the blobs of records it removes. */
  readonly blobs?: BlobStore;
  /**
   * How long a chain sealed by a sweeper stays untouched before another sweeper (or a `begin` of
   * its key) finishes deleting it, should the first have died. Default 30 s.
   */
  readonly sealTimeoutMs?: number;
  /** Expired records the sweeper reads per round. Default 500. */
  readonly sweepBatchSize?: number;
  /**
   * Update statements this store has on the server at once, at most (a step's journal, a lease
   * extension, `markPublished`, the sweeper's cuts); the others wait their turn. Inserts and reads
   * are not held back. FerretDB 1.x (SQLite) deadlocks a database for good once 100 update
   * statements of all its clients are in flight (README, "FerretDB 1.x"): keep this times the
   * number of processes on one database under 100. Default 24.
   */
  readonly maxConcurrentUpdates?: number;
  /**
   * How long past its expiry the sweeper leaves a record (it already reads as absent) and the blob
   * it names: a duplicate answered just before the expiry may still be reading that blob. Default
   * 60 s.
   */
  readonly expiredGraceMs?: number;
  /**
   * How long past its lease end (a released record: past the start of its attempt) an IN_PROGRESS
   * record whose key never came again is dropped by the sweeper. Default 7 days, as the Redis
   * store's. Keep it well above the longest retry delay plus `leaseMs`: a record dropped before its
   * key comes back takes its attempts and journaled steps with it (the key then runs anew).
   */
  readonly inProgressTtlMs?: number;
  /**
   * How long after its attempt began the sweeper keeps whole the lease element of an attempt
   * that ended with a result (COMPLETED or FAILED), for `history` (its owner, when it began);
   * then it cuts it to its `_id` (a tombstone: about 30 bytes of BSON instead of about 260, while
   * the record's result is kept for its retention). Default 1 hour.
   */
  readonly finishedLeaseMs?: number;
  /** Receives errors of the background sweeper (the next round runs anyway). Default: ignored. */
  readonly onSweepError?: (error: unknown) => void;
  /**
   * Collection of the payload guard's fingerprint claims (`claimFingerprint`). Default
   * `<records collection name>_fingerprints` in the records collection's database.
   */
  readonly fingerprintCollection?: Collection<Document>;
}

export interface MongoProcessedStore extends ProcessedStore {
  /** The payload guard's claim (see {@link ProcessedStore.claimFingerprint}). */
  claimFingerprint(
    scope: string,
    fingerprint: string,
    key: string,
    windowMs: number,
  ): Promise<FingerprintClaim | undefined>;
  /** Gives a refused key reuse's claim back (see {@link ProcessedStore.releaseFingerprint}). */
  releaseFingerprint(scope: string, fingerprint: string, key: string): Promise<void>;
  /** Every state of the key's chain, oldest first (see {@link ProcessedStore.history}). */
  history(key: string): Promise<HistoryEntry[]>;
  readonly collection: Collection<RecordDoc>;
  /**
   * {@link ProcessedStore.get} of many keys (in the order given), in a few queries per 1,000 keys
   * instead of a few per key: for inspection and audits of many records. Each answer is what
   * `get` would have said at some moment during the call.
   */
  getMany(keys: readonly string[]): Promise<(ProcessedRecord | undefined)[]>;
  /** Creates the sweeper's and the stuck-work query's indexes. Idempotent; call once at startup. */
  ensureIndexes(): Promise<void>;
  /**
   * Deletes records past their retention, and IN_PROGRESS records abandoned past `inProgressTtlMs`
   * (with `blobs`, their blobs too). Always needed: no TTL index.
   */
  sweepExpired(): Promise<SweepResult>;
  /**
   * Runs {@link sweepExpired} every `intervalMs` until the returned function or `close` is called;
   * with `orphanBlobs` (and the store's `blobs`), also the blob passes of {@link SweeperOptions}.
   */
  startSweeper(intervalMs: number, options?: SweeperOptions): () => void;
  /** Stops sweepers and waits for a running sweep. The client belongs to the caller and stays open. */
  close(): Promise<void>;
}

export type { SweepResult } from './sweep.js';

export interface SweeperOptions {
  /**
   * Also collect the blobs no record will ever delete, at most once every `everyMs` (default 1 h)
   * after a sweep: core's `collectOrphanBlobs` on this store and its `blobs` (the blobs of runs
   * killed before `complete`; with `whenRecordGone: 'delete'` also the `ctx.storeBlob` blobs named
   * inside results whose records the sweeper removed; then the blob store's `removeAbandoned()`,
   * for GridFS the chunks of uploads killed midway). Needs the store's `blobs`.
   */
  readonly orphanBlobs?: Pick<OrphanBlobOptions, 'olderThanMs' | 'whenRecordGone'> & {
    readonly everyMs?: number;
  };
  /** What each round did (for metrics and logs); a part that failed is absent (see `onSweepError`). */
  readonly onPass?: (pass: SweeperPass) => void;
}

/** One round of the sweeper. */
export interface SweeperPass {
  /** When the round started (ms since epoch, this process's clock) and how long it took. */
  readonly startedAt: number;
  readonly durationMs: number;
  readonly sweep?: SweepResult;
  /** Rounds that ran the orphan pass (at most once every `orphanBlobs.everyMs`): its figures. */
  readonly orphanBlobs?: OrphanBlobStats;
}

export const DEFAULT_COLLECTION = 'eo_records';
/** Four processes on one FerretDB 1.x database stay under its 100 (see update-gate.ts). */
const DEFAULT_MAX_CONCURRENT_UPDATES = 24;
/** The error a cleared record's tombstone carries (it reads as absent). */
const CLEARED = { name: 'Cleared', code: 'CLEARED', message: 'cleared by an operator' };
/** Rounds of begin's insert/read loop; only writers racing on the same key ever need a second one. */
const MAX_ROUNDS = 8;
/** Keys per round of `getMany`'s queries. */
const GET_MANY_CHUNK = 1_000;
/** Leases this process holds, remembered so holder writes need not read the chain first. */
const HELD_CAPACITY = 100_000;

/** Where a lease (or the terminal element after it) lives, and what a terminal copies from it. */
interface Place {
  readonly chain: string;
  readonly position: number;
  readonly fingerprint: RecordDoc['f'];
  readonly attempt: number;
  readonly traceId?: RecordDoc['t'];
  /**
   * The end of the lease its `begin` took, in store time (0: released or unknown). Never moved
   * by an extension: see stillLive.
   */
  readonly leaseUntil: number;
}

const MONGO_STORE_OPTIONS = {
  db: true,
  collection: true,
  collectionName: true,
  writeConcern: true,
  clock: true,
  clockRefreshMs: true,
  blobs: true,
  sealTimeoutMs: true,
  sweepBatchSize: true,
  expiredGraceMs: true,
  inProgressTtlMs: true,
  finishedLeaseMs: true,
  onSweepError: true,
  fingerprintCollection: true,
  maxConcurrentUpdates: true,
} as const satisfies OptionNames<MongoStoreOptions>;

/**
 * Creates a processed-store on a MongoDB collection (MongoDB, or a wire-compatible server such as
 * FerretDB or mongo-java-server, which reports MongoDB 4.2; see the README for drivers).
 *
 * A key's head (`_id` = key) names a chain of elements, each one state of the key. Element i + 1
 * is inserted only by a worker that read element i as the last one, and `_id` uniqueness lets
 * exactly one such insert win: that is every race (two begins, a takeover against a stale
 * holder's complete, a clear against a begin). The lease holder alone updates its element
 * (lease end, steps), then checks that no successor exists before answering `ok`.
 */
export function createMongoStore(options: MongoStoreOptions): MongoProcessedStore {
  if (typeof options !== 'object' || options === null)
    throw new ConfigError('createMongoStore needs options');
  refuseUnknownOptions(options, MONGO_STORE_OPTIONS);
  if (options.db === undefined && options.collection === undefined) {
    throw new ConfigError('createMongoStore needs `db` or `collection`');
  }
  const collection = (options.collection ??
    options.db?.collection(options.collectionName ?? DEFAULT_COLLECTION)) as Collection<RecordDoc>;
  const heads = collection as unknown as Collection<HeadDoc>;
  // Collection#db is public from driver 6.9; older drivers need `db` passed alongside.
  const db = options.db ?? (collection as { db?: Db }).db;
  const reader = { collection, heads };
  const writeConcern = options.writeConcern ?? { w: 'majority' };
  const write = { writeConcern };
  const clock = makeClock(options, db);
  // A NaN seal timeout would let every begin take every seal over at once.
  const sealTimeoutMs = duration('sealTimeoutMs', options.sealTimeoutMs, 30_000, 1);
  const expiredGraceMs = duration('expiredGraceMs', options.expiredGraceMs, 60_000, 0);
  const sweepBatchSize = duration('sweepBatchSize', options.sweepBatchSize, 500, 1);
  const inProgressTtlMs = duration('inProgressTtlMs', options.inProgressTtlMs, 7 * 24 * 3_600_000, 1);
  const finishedLeaseMs = duration('finishedLeaseMs', options.finishedLeaseMs, 3_600_000, 0);
  const updating = updateGate(
    duration('maxConcurrentUpdates', options.maxConcurrentUpdates, DEFAULT_MAX_CONCURRENT_UPDATES, 1),
  );
  let claimsCollection: Collection<ClaimDoc> | undefined;
  const claims = (): Collection<ClaimDoc> => {
    if (claimsCollection) return claimsCollection;
    const named =
      options.fingerprintCollection ?? db?.collection(`${collection.collectionName}_fingerprints`);
    if (named === undefined) throw new ConfigError('claimFingerprint needs `db` or `fingerprintCollection`');
    claimsCollection = named as unknown as Collection<ClaimDoc>;
    return claimsCollection;
  };
  /** The claims' collection; none without a database to put it in (claimFingerprint says so). */
  const claimsIfAny = (): Collection<ClaimDoc> | undefined => {
    try {
      return claims();
    } catch (error) {
      if (error instanceof ConfigError) return undefined;
      throw error;
    }
  };
  const blobs = options.blobs;
  // The client of a first connection that failed is opened again (see reopenAfterFailedConnect),
  // until the store is closed.
  const client = db?.client;
  let closed = false;
  const reopen = (error: unknown) => {
    if (!closed) reopenAfterFailedConnect(client, error);
  };
  const guarded = <T>(operation: string, fn: () => Promise<T>): Promise<T> =>
    guardedCall(operation, fn, reopen);
  /** Every sweeper started: close stops them and waits for a pass under way, stopped or not. */
  const sweepers = new Set<Repeating>();
  let sweeping: Promise<unknown> = Promise.resolve();

  // ---- leases this process holds, and one writer at a time per element
  const held = new Map<string, Place>();
  const heldKey = (key: string, fence: number) => `${fence}\u0000${key}`;
  const remember = (map: Map<string, Place>, key: string, fence: number, place: Place) => {
    if (map.size >= HELD_CAPACITY) map.delete(map.keys().next().value as string);
    map.set(heldKey(key, fence), place);
  };
  /** Terminal elements with outgoing messages this process wrote, for `markPublished`. */
  const completed = new Map<string, Place>();
  // A server that applies an update as read, modify, write back (FerretDB 1.x) could lose one of
  // two concurrent updates of one document (an extension racing a step): queue them.
  const queues = new Map<string, Promise<unknown>>();
  const serially = <T>(id: string, fn: () => Promise<T>): Promise<T> => {
    const previous = queues.get(id) ?? Promise.resolve();
    const run = previous.then(fn, fn);
    const settled = run.catch(() => undefined);
    queues.set(id, settled);
    void settled.then(() => {
      if (queues.get(id) === settled) queues.delete(id);
    });
    return run;
  };

  /** The lease `fence` holds on `key`, if it is the chain's last element (read when not held here). */
  const placeOf = async (key: string, fence: number): Promise<Place | undefined> => {
    const known = held.get(heldKey(key, fence));
    if (known !== undefined) return known;
    const chain = await readChain(reader, key);
    if (chain === undefined || chain === 'gone' || chain.last === undefined) return undefined;
    const last = chain.last;
    if (last.s !== State.InProgress || last.n !== fence) return undefined;
    return placeFor(chain.chain, chain.position, last);
  };
  const placeFor = (chain: string, position: number, doc: RecordDoc): Place => ({
    chain,
    position,
    fingerprint: doc.f,
    attempt: doc.a,
    ...(doc.t === undefined ? {} : { traceId: doc.t }),
    leaseUntil: doc.l ?? 0,
  });

  /**
   * A holder's update of its own lease element, then the check that it still decides: `lost` if
   * the element is gone (swept) or has a successor (taken over, completed, failed, cleared).
   */
  const holderWrite = async (
    operation: string,
    key: string,
    fence: number,
    update: UpdateFilter<RecordDoc>,
    condition: Filter<RecordDoc> = {},
  ): Promise<FencedResult> =>
    guarded(operation, async () => {
      const place = await placeOf(key, fence);
      if (place === undefined) return 'lost';
      const id = elementId(place.chain, place.position);
      // Only the holder's process writes its element, one write at a time (serially): a condition
      // on the element's own fields is not raced by another writer, even without atomic filters.
      const { matchedCount } = await serially(id, () =>
        updating(1, () => collection.updateOne({ ...condition, _id: id }, update, write)),
      );
      if (matchedCount !== 1) return 'lost';
      return (await hasSuccessor(reader, place.chain, place.position)) ? 'lost' : 'ok';
    });

  /** The COMPLETED or FAILED element after the holder's lease at `place`. */
  const terminalDoc = (key: string, fence: number, place: Place, fields: Partial<RecordDoc>): RecordDoc => {
    const position = place.position + 1;
    return {
      _id: elementId(place.chain, position),
      k: key,
      s: State.Completed,
      f: place.fingerprint,
      n: fence,
      a: place.attempt,
      ...(place.traceId === undefined ? {} : { t: place.traceId }),
      ...fields,
    };
  };
  const completedFields = (request: CompleteRequest, now: number): Partial<RecordDoc> => ({
    s: State.Completed,
    ...encodeResult(request.result),
    ...(request.outgoing.length === 0 ? {} : { ob: encodeOutgoing(request.outgoing) }),
    // Without a new trace id the record keeps the one of the run that held the lease.
    ...(request.traceId === undefined ? {} : { t: packTraceId(request.traceId) }),
    d: now,
    e: new Date(now + request.retentionMs),
  });

  /**
   * Appends the element after the holder's lease: COMPLETED or FAILED. The insert is the fence
   * check: it fails when a takeover, a clear or an earlier terminal took that position.
   */
  const terminate = async (
    operation: string,
    key: string,
    fence: number,
    fields: (now: number) => Partial<RecordDoc>,
  ): Promise<{ result: FencedResult; place?: Place }> =>
    guarded(operation, async () => {
      const place = await placeOf(key, fence);
      if (place === undefined) {
        // The state and error code decide; the fields' times (here 0) are not compared.
        return { result: (await endedBy(key, fence, fields(0))) ? 'ok' : 'lost' };
      }
      const doc = terminalDoc(key, fence, place, fields(await clock.now()));
      try {
        await collection.insertOne(doc, write);
      } catch (error) {
        if (!isDuplicateKey(error)) throw error;
        // Our own insert, applied by an earlier call whose answer was lost (a batch retried one
        // by one after a network error): it stands.
        if (!(await isOwnTerminal(doc))) return { result: 'lost' };
      }
      if (!(await stillLive([{ key, place, id: doc._id }]))[0]) return { result: 'lost' };
      held.delete(heldKey(key, fence));
      return { result: 'ok', place: { ...place, position: place.position + 1 } };
    });

  /**
   * Whether the key's record is the terminal `fields` describe (COMPLETED, or FAILED with their
   * error code) under `fence`: a repeated complete or fail whose first one landed (its answer
   * lost), which answers `ok` again. Read only when this process no longer knows the lease, so
   * rarely.
   */
  const endedBy = async (key: string, fence: number, fields: Partial<RecordDoc>): Promise<boolean> => {
    const chain = await readChain(reader, key);
    if (chain === undefined || chain === 'gone' || chain.last === undefined) return false;
    const last = chain.last;
    return (
      sameTerminal(last, { ...fields, n: fence }) &&
      (last.e === undefined || last.e.getTime() > (await clock.now()))
    );
  };

  /** Whether the element at `doc`'s position is `doc`'s terminal (see {@link sameTerminal}). */
  const isOwnTerminal = async (doc: RecordDoc): Promise<boolean> => {
    const there = await collection.findOne({ _id: doc._id }, { projection: { s: 1, n: 1, x: 1 } });
    return there !== null && sameTerminal(there, doc);
  };

  /**
   * After terminal inserts: whether each went into a chain that is still its key's. Within the
   * lease its `begin` took nobody can have ended the chain (a takeover, a `clear` and the sweeper
   * all wait for a lease to pass), so an insert that went in counts without a read: the common
   * path stays one insert (on FerretDB 1.x every read by `_id` scans the collection). Past it the
   * chain may have been ended and deleted (a stalled holder), and an insert into a deleted chain
   * lands at a free position and must not count: the heads are read (once for all of a batch)
   * and such inserts taken back. An extension does not move that bound: one answered `ok` may
   * have landed between another writer's read of the chain and its insert after it (a sweeper's
   * seal, a clear), and the chain then went all the same.
   */
  const stillLive = async (
    inserted: readonly { readonly key: string; readonly place: Place; readonly id: string }[],
  ): Promise<boolean[]> => {
    const now = inserted.length === 0 ? 0 : await clock.now();
    const live = inserted.map((e) => now < e.place.leaseUntil);
    const stale = inserted.filter((_, i) => !live[i]);
    if (stale.length === 0) return live;
    const keys = [...new Set(stale.map((e) => e.key))];
    const found = (await heads.find({ _id: { $in: keys } }).toArray()) as HeadDoc[];
    const named = new Map<string, string | undefined>();
    for (const head of found) {
      try {
        named.set(head._id, chainOf(head));
      } catch {
        named.set(head._id, undefined); // a damaged head names no chain: the key's begin refuses it
      }
    }
    const gone: string[] = [];
    inserted.forEach((e, i) => {
      if (live[i]) return;
      live[i] = named.get(e.key) === e.place.chain;
      if (!live[i]) gone.push(e.id);
    });
    if (gone.length > 0) await collection.deleteMany({ _id: { $in: gone } }, write);
    return live;
  };

  const lease = (
    request: BeginRequest,
    chain: string,
    position: number,
    now: number,
    fence: number,
  ): RecordDoc => ({
    _id: elementId(chain, position),
    k: request.key,
    s: State.InProgress,
    f: packFingerprint(request.fingerprint),
    n: fence,
    a: 1,
    ...(request.traceId === undefined ? {} : { t: packTraceId(request.traceId) }),
    o: request.owner,
    l: now + request.leaseMs,
    sa: now,
  });
  const acquired = (request: BeginRequest, doc: RecordDoc, kind: AcquireKind): BeginResult => {
    const { chain, position } = elementPlace(doc._id);
    remember(held, request.key, doc.n, placeFor(chain, position, doc));
    return {
      status: 'acquired',
      kind,
      fence: doc.n,
      attempt: doc.a,
      leaseUntil: doc.l ?? 0,
      steps: decodeSteps(doc.st),
    };
  };

  /**
   * Inserts the element after `chain.position`. `false`: another worker took the position first.
   * On success, the head must still name the chain: if the sweeper deleted it between our read and
   * our insert, the insert landed in a chain nobody reads any more; it is undone and not used.
   */
  const append = async (chain: Chain, doc: RecordDoc): Promise<boolean> => {
    try {
      await collection.insertOne(doc, write);
    } catch (error) {
      if (isDuplicateKey(error)) return false;
      throw error;
    }
    if (!(await headNames(reader, chain.key, chain.chain))) {
      await collection.deleteOne({ _id: doc._id }, write);
      return false;
    }
    // Readers start at the hint; a lost or stale hint only costs them a longer walk.
    const hint = { $set: { h: elementPlace(doc._id).position } };
    await updating(1, () => heads.updateOne({ _id: chain.key }, hint, write));
    return true;
  };

  /** A key's next state after a read chain; `undefined`: read again. */
  const decide = async (
    request: BeginRequest,
    chain: Chain,
    now: number,
  ): Promise<BeginResult | undefined> => {
    const last = chain.last;
    const next = chain.position + 1;
    if (last === undefined) {
      // The head's writer has not inserted its first lease (or died first): race it for it.
      const doc = lease(request, chain.chain, 1, now, now);
      return (await append(chain, doc)) ? acquired(request, doc, 'new') : undefined;
    }
    if (last.s === State.Sealed) {
      const age = now - (last.d ?? 0);
      if (age < sealTimeoutMs) return { status: 'busy', retryAfterMs: Math.min(1000, sealTimeoutMs - age) };
      // The sweeper that sealed the chain died before deleting it: finish its work.
      await dismantleAfter(chain);
      return undefined;
    }
    if (isExpired(last, now)) {
      const doc = lease(request, chain.chain, next, now, Math.max(last.n + 1, now));
      return (await append(chain, doc)) ? acquired(request, doc, 'new') : undefined;
    }
    const record = decodeRecord(last);
    if (record.fingerprint !== request.fingerprint) return { status: 'mismatch', record };
    if (record.state === 'COMPLETED') {
      return { status: 'duplicate', record, completedAgoMs: now - record.completedAt };
    }
    if (record.state === 'FAILED') return { status: 'failed', record };
    if (record.leaseUntil > now) return { status: 'busy', record, retryAfterMs: record.leaseUntil - now };
    const steps = await stepsOf(chain, last);
    const doc: RecordDoc = {
      ...lease(request, chain.chain, next, now, last.n + 1),
      a: last.a + 1,
      ...(steps.length === 0 ? {} : { st: steps }),
      cp: [last.st?.length ?? 0, steps.length],
      ...(last.x === undefined ? {} : { x: last.x }),
    };
    if (!(await append(chain, doc))) return undefined;
    const fresh = await catchUp(last, doc);
    if (fresh !== null && (fresh.l ?? 0) > Math.max(last.l ?? 0, 1)) {
      // The passed lease was extended between our read and our insert, and the extension may have
      // been answered `ok`: its holder runs on, and nobody may start beside it. This element keeps
      // the key for it until that lease ends (the holder's next write is `lost`: this element
      // follows its own), then the key is taken over as usual.
      return {
        status: 'busy',
        record: decodeRecord(doc) as InProgressRecord,
        retryAfterMs: Math.max(1, (fresh.l ?? 0) - now),
      };
    }
    // A release answered `ok` between our read and our insert makes this begin a retry.
    return acquired(request, doc, ((fresh ?? last).l ?? 0) === 0 ? 'retry' : 'takeover');
  };

  /**
   * After inserting the element that continues `last`'s attempts: the previous holder may have
   * journaled a step (or released) between our read of `last` and our insert. Its write checked
   * for a successor, found none yet and was answered `ok`, so the new element must carry it: read
   * `last` again and copy what changed. A write that lands after our insert sees the successor and
   * is answered `lost`. (Holder: write, then read the successor; here: insert the successor, then
   * read again. One of the two reads sees the other's write.)
   */
  const catchUp = async (last: RecordDoc, doc: RecordDoc): Promise<RecordDoc | null> => {
    const fresh = await collection.findOne(
      { _id: last._id },
      { projection: { st: 1, x: 1, a: 1, l: 1, o: 1 } },
    );
    if (fresh === null) return null;
    const read = last.st?.length ?? 0;
    const steps = fresh.st?.length ?? 0;
    // A lease end moved up (0 and 1 are releases' marks): an extension.
    const extended = (fresh.l ?? 0) > Math.max(last.l ?? 0, 1);
    if (!extended && steps === read && isDeepStrictEqual(fresh.x, last.x) && fresh.a === last.a) {
      return fresh;
    }
    // Extended: the holder's attempt goes on; this element stands for it until its lease ends.
    const update: Partial<RecordDoc> = { a: extended ? fresh.a : fresh.a + 1 };
    if (extended) {
      update.l = fresh.l;
      if (fresh.o !== undefined) update.o = fresh.o;
    }
    if (steps > read) {
      // The holder only appends: what it journaled since our read follows what we copied.
      const st = [...(doc.st ?? []), ...(fresh.st ?? []).slice(read)];
      update.st = st;
      update.cp = [steps, st.length];
    }
    if (fresh.x !== undefined) update.x = fresh.x;
    await updating(1, () => collection.updateOne({ _id: doc._id }, { $set: update }, write));
    Object.assign(doc, update);
    return fresh;
  };

  /**
   * The steps a retry or takeover of `last` starts with: `last`'s, and, when `last` itself
   * continued an earlier lease (`cp`), the steps that lease's holder journaled between the read
   * and the insert of `last` (answered `ok`): a begin that failed before its catch-up finished
   * (a connection reset) left them out of `last`.
   */
  const stepsOf = async (chain: Chain, last: RecordDoc): Promise<StepDoc[]> => {
    const own = last.st ?? [];
    if (last.cp === undefined || chain.position < 1) return own;
    const [accounted, copied] = last.cp;
    // The previous lease: element position - 1, or a previous-layout record (its own head).
    const previousId = chain.position === 1 ? chain.key : elementId(chain.chain, chain.position - 1);
    const previous = await collection.findOne({ _id: previousId }, { projection: { st: 1 } });
    const late = previous?.st?.slice(accounted) ?? [];
    if (late.length === 0) return own;
    return [...own.slice(0, copied), ...late, ...own.slice(copied)];
  };

  const begin = async (request: BeginRequest): Promise<BeginResult> => {
    for (let round = 0; round < MAX_ROUNDS; round++) {
      const now = await clock.now();
      // A new key: its head and first lease in one ordered insert (the head's unique `_id`
      // decides; on E11000 the lease is never inserted).
      const chainId = newChainId();
      const doc = lease(request, chainId, 1, now, now);
      try {
        await collection.insertMany([{ _id: request.key, c: chainId, h: 1 } as unknown as RecordDoc, doc], {
          ordered: true,
          ...write,
        });
        return acquired(request, doc, 'new');
      } catch (error) {
        if (!isDuplicateKey(error)) throw error;
      }
      const chain = await readChain(reader, request.key);
      if (chain === undefined || chain === 'gone') continue;
      const decided = await decide(request, chain, now);
      if (decided !== undefined) return decided;
    }
    throw new StoreUnavailableError({
      operation: 'begin',
      message: `processed-store begin gave up after ${MAX_ROUNDS} contended rounds`,
    });
  };

  /** Seals the chain after its last element (a sealed or expired one) and deletes it. */
  const dismantleAfter = (chain: Chain) =>
    dismantle(
      { collection, heads, write, clock, ...(blobs === undefined ? {} : { blobs }) },
      chain,
      sealTimeoutMs,
    );

  /**
   * Runs `requests` one key after another within a key, keys concurrently. A request that fails
   * fails the key's later ones (their order matters) and not the other keys': then the call
   * rejects with a `PartialBatchError` carrying the answers it has (or with the error alone when
   * nothing was answered), so one record too large or one failed call does not fail the batch.
   */
  const perKey = async <Q extends { readonly key: string }, A>(
    operation: string,
    requests: readonly Q[],
    indexes: readonly number[],
    answers: A[],
    run: (request: Q) => Promise<A>,
  ): Promise<void> => {
    const byKey = new Map<string, number[]>();
    for (const i of indexes) {
      const key = (requests[i] as Q).key;
      byKey.set(key, [...(byKey.get(key) ?? []), i]);
    }
    const errors = new Map<number, unknown>();
    await Promise.all(
      [...byKey.values()].map(async (list) => {
        for (const [n, i] of list.entries()) {
          try {
            answers[i] = await run(requests[i] as Q);
          } catch (error) {
            reopen(error);
            for (const j of list.slice(n)) errors.set(j, asStoreError(operation, error));
            return;
          }
        }
      }),
    );
    batchAnswers(operation, answers, errors);
  };

  /**
   * New keys of a batch: all heads in one insert, then the won heads' first leases in another.
   * A key whose head exists, a key repeated in the batch, and a key whose first lease a reader
   * claimed in between go through `begin` one by one, in request order per key.
   */
  const beginMany = async (requests: readonly BeginRequest[]): Promise<BeginResult[]> => {
    const answers: BeginResult[] = new Array(requests.length);
    const firsts: number[] = [];
    const seen = new Set<string>();
    requests.forEach((request, i) => {
      if (!seen.has(request.key)) firsts.push(i);
      seen.add(request.key);
    });
    const now = await clock.now();
    const chains = firsts.map(() => newChainId());
    const heads = firsts.map((i, j) => ({ _id: (requests[i] as BeginRequest).key, c: chains[j], h: 1 }));
    const refusedHeads = await insertEach(collection, heads as unknown as RecordDoc[], write);
    const won = firsts.map((_, j) => j).filter((j) => !refusedHeads.has(j));
    const leases = won.map((j) =>
      lease(requests[firsts[j] as number] as BeginRequest, chains[j] as string, 1, now, now),
    );
    const refusedLeases = await insertEach(collection, leases, write);
    won.forEach((j, w) => {
      const i = firsts[j] as number;
      if (!refusedLeases.has(w))
        answers[i] = acquired(requests[i] as BeginRequest, leases[w] as RecordDoc, 'new');
    });
    const rest = requests.map((_, i) => i).filter((i) => answers[i] === undefined);
    await perKey('begin', requests, rest, answers, begin);
    return answers;
  };

  const store: MongoProcessedStore = {
    collection,

    begin: (request) => guarded('begin', () => begin(request)),

    beginMany: (requests) => guarded('begin', () => beginMany(requests)),

    async completeMany(requests: readonly CompleteRequest[]): Promise<FencedResult[]> {
      const answers: FencedResult[] = new Array(requests.length);
      const now = await guarded('complete', () => clock.now());
      const places = await guarded('complete', () =>
        Promise.all(requests.map((r) => placeOf(r.key, r.fence))),
      );
      const docs: RecordDoc[] = [];
      const at: number[] = [];
      const gone: number[] = [];
      requests.forEach((request, i) => {
        const place = places[i];
        if (place === undefined) gone.push(i);
        else {
          docs.push(terminalDoc(request.key, request.fence, place, completedFields(request, now)));
          at.push(i);
        }
      });
      const repeats = await guarded('complete', () =>
        Promise.all(
          gone.map((i) =>
            endedBy((requests[i] as CompleteRequest).key, (requests[i] as CompleteRequest).fence, {
              s: State.Completed,
            }),
          ),
        ),
      );
      gone.forEach((i, g) => {
        answers[i] = repeats[g] ? 'ok' : 'lost';
      });
      let refused: Set<number> | undefined;
      try {
        refused = await insertEach(collection, docs, write);
      } catch {
        // One record too large, or the server failed: each on its own, with its own answer or error.
        refused = undefined;
      }
      if (refused === undefined) {
        await perKey('complete', requests, at, answers, (request) => store.complete(request));
        return answers;
      }
      // A refused insert may be this call's own, applied by an earlier try whose answer was lost
      // (the contract answers a landed complete's repeat `ok`).
      const own = await guarded('complete', () =>
        Promise.all(at.map((_, d) => (refused.has(d) ? isOwnTerminal(docs[d] as RecordDoc) : true))),
      );
      const checked = at.flatMap((i, d) =>
        own[d] ? [{ d, key: (requests[i] as CompleteRequest).key, place: places[i] as Place }] : [],
      );
      const liveOnes = await guarded('complete', () =>
        stillLive(checked.map(({ d, key, place }) => ({ key, place, id: (docs[d] as RecordDoc)._id }))),
      );
      const live = at.map(() => false);
      checked.forEach(({ d }, c) => {
        live[d] = liveOnes[c] === true;
      });
      at.forEach((i, d) => {
        const request = requests[i] as CompleteRequest;
        if (!live[d]) {
          answers[i] = 'lost';
          return;
        }
        answers[i] = 'ok';
        held.delete(heldKey(request.key, request.fence));
        const place = places[i] as Place;
        if (request.outgoing.length > 0) {
          remember(completed, request.key, request.fence, { ...place, position: place.position + 1 });
        }
      });
      return answers;
    },

    async markPublishedMany(requests: readonly MarkPublishedRequest[]): Promise<void> {
      const known = requests.filter((r) => r.ids.length > 0 && completed.has(heldKey(r.key, r.fence)));
      const unknown = requests.filter((r) => r.ids.length > 0 && !completed.has(heldKey(r.key, r.fence)));
      await guarded('markPublished', async () => {
        const updates = known.map((r) => {
          const place = completed.get(heldKey(r.key, r.fence)) as Place;
          return {
            updateOne: {
              filter: { _id: elementId(place.chain, place.position) },
              update: { $addToSet: { pb: { $each: [...new Set(r.ids)] } } },
            },
          };
        });
        for (const part of commandParts(updates))
          await updating(part.length, () => collection.bulkWrite(part, { ordered: false, ...write }));
      });
      await Promise.all(unknown.map((r) => store.markPublished(r.key, r.fence, r.ids)));
    },

    async extend(key: string, fence: number, leaseMs: number): Promise<FencedResult> {
      const now = await guarded('extend', () => clock.now());
      // A released lease (its end 0, or 1 for a takeover given back) stays released: an extension
      // given up at its deadline may land after the run's release.
      return holderWrite('extend', key, fence, { $set: { l: now + leaseMs } }, { l: { $gt: 1 } });
    },

    async complete(request: CompleteRequest): Promise<FencedResult> {
      const { result, place } = await terminate('complete', request.key, request.fence, (now) =>
        completedFields(request, now),
      );
      if (place !== undefined && request.outgoing.length > 0) {
        remember(completed, request.key, request.fence, place);
      }
      return result;
    },

    async release(
      key: string,
      fence: number,
      error: ErrorInfo,
      options?: ReleaseOptions,
    ): Promise<FencedResult> {
      // Not run: the next begin's element counts the attempt again, and the last error stays; a
      // lease end in the past but not 0 keeps a takeover one.
      const update: UpdateFilter<RecordDoc> = options?.notRun
        ? { $set: { l: options.takenOver ? 1 : 0 }, $inc: { a: -1 } }
        : { $set: { l: 0, x: encodeError(error) } };
      const result = await holderWrite('release', key, fence, update);
      held.delete(heldKey(key, fence));
      return result;
    },

    async fail(key: string, fence: number, error: ErrorInfo, retentionMs: number): Promise<FencedResult> {
      const { result } = await terminate('fail', key, fence, (now) => ({
        s: State.Failed,
        x: encodeError(error),
        d: now,
        e: new Date(now + retentionMs),
      }));
      return result;
    },

    async markPublished(key: string, fence: number, ids: readonly string[]): Promise<void> {
      if (ids.length === 0) return;
      await guarded('markPublished', async () => {
        let place = completed.get(heldKey(key, fence));
        if (place === undefined) {
          const chain = await readChain(reader, key);
          if (chain === undefined || chain === 'gone' || chain.last === undefined) return;
          // Only the key's current record: a straggler of an earlier incarnation flags nothing.
          if (chain.last.s !== State.Completed || chain.last.n !== fence) return;
          place = placeFor(chain.chain, chain.position, chain.last);
        }
        // $addToSet rather than a flag inside each message: FerretDB 1.x has neither arrayFilters
        // nor the positional operator, and a set of confirmed ids needs no read-modify-write.
        // Concurrent calls may lose one another's ids there: those messages are sent again.
        const id = elementId(place.chain, place.position);
        const confirmed = { $addToSet: { pb: { $each: [...new Set(ids)] } } };
        await serially(id, () => updating(1, () => collection.updateOne({ _id: id }, confirmed, write)));
      });
    },

    async saveStep(key: string, fence: number, name: string, result: Uint8Array): Promise<FencedResult> {
      const now = await guarded('saveStep', () => clock.now());
      // Appended, never keyed by name: a step name is data and may hold `.` or `$`.
      return holderWrite('saveStep', key, fence, {
        $push: { st: { k: name, r: toBinary(result), at: now } },
      });
    },

    async markStepStarted(key: string, fence: number, name: string): Promise<FencedResult> {
      const now = await guarded('markStepStarted', () => clock.now());
      // An entry without a result: the step reads as started until a saveStep entry follows it.
      return holderWrite('markStepStarted', key, fence, { $push: { st: { k: name, at: now } } });
    },

    /**
     * Operator query: lease elements whose attempt began (`sa`) at least `olderThanMs` ago, on the
     * `eo_in_progress` index ({ s, sa }), keeping those still last in their chain. It reads past
     * the leases of finished records, which stay in their chains until swept.
     */
    async listInProgress(query: InProgressQuery): Promise<InProgressEntry[]> {
      return guarded('listInProgress', async () => {
        if (!(query.limit > 0)) return [];
        const cutoff = (await clock.now()) - query.olderThanMs;
        const prefix = query.prefix ?? '';
        const found: InProgressEntry[] = [];
        const cursor = collection.find({ s: State.InProgress, sa: { $lte: cutoff } }).sort({ sa: 1 });
        for await (const doc of cursor) {
          const key = doc.k ?? doc._id; // a previous-layout record is its own head
          if (!key.startsWith(prefix)) continue;
          const { chain, position } = placeOfRecord(doc);
          if (await hasSuccessor(reader, chain, position)) continue;
          if (doc.k !== undefined && !(await headNames(reader, key, chain))) {
            // A stray: a lease inserted into a chain deleted meanwhile, whose writer died before
            // taking it back. Nothing reads it as the key's state, and it has no expiry for the
            // sweeper to find: it goes here.
            await collection.deleteOne({ _id: doc._id, s: State.InProgress }, write);
            continue;
          }
          found.push({
            key,
            owner: doc.o ?? '',
            attempt: doc.a,
            fence: doc.n,
            leaseUntil: doc.l ?? 0,
            startedAt: doc.sa ?? 0,
          });
          if (found.length >= query.limit) break;
        }
        return found;
      });
    },

    /**
     * Every element of the key's chain but the sweeper's seal and tombstones (the leases of
     * attempts that ended with a result, past `finishedLeaseMs`), oldest first.
     */
    async history(key: string): Promise<HistoryEntry[]> {
      return guarded('history', async () => {
        const elements = (await readHistory(reader, key)) ?? [];
        return elements
          .filter((doc) => doc.s !== State.Sealed && !isTombstone(doc))
          .map((doc) => ({
            record: decodeRecord(doc),
            ...(doc.s === State.InProgress && doc.sa !== undefined ? { startedAt: doc.sa } : {}),
          }));
      });
    },

    async get(key: string): Promise<ProcessedRecord | undefined> {
      return guarded('get', async () => {
        for (let round = 0; round < MAX_ROUNDS; round++) {
          const now = await clock.now();
          const chain = await readChain(reader, key);
          if (chain === 'gone') continue;
          return readable(chain, now);
        }
        return undefined;
      });
    },

    async getMany(keys: readonly string[]): Promise<(ProcessedRecord | undefined)[]> {
      const answers = new Map<string, ProcessedRecord | undefined>();
      await guarded('get', async () => {
        const distinct = [...new Set(keys)];
        for (let c = 0; c < distinct.length; c += GET_MANY_CHUNK) {
          const now = await clock.now();
          for (const [key, chain] of await readChains(reader, distinct.slice(c, c + GET_MANY_CHUNK))) {
            // A chain swept while it was read: read that key again alone.
            answers.set(key, chain === 'gone' ? await store.get(key) : readable(chain, now));
          }
        }
      });
      return keys.map((key) => answers.get(key));
    },

    async clear(key: string, options?: ClearOptions): Promise<ClearResult> {
      const failedFence = options?.failedFence;
      return guarded('clear', async () => {
        for (let round = 0; round < MAX_ROUNDS; round++) {
          const now = await clock.now();
          const chain = await readChain(reader, key);
          if (chain === 'gone') continue;
          if (chain === undefined) return 'absent';
          const last = chain.last;
          // A head without its first lease (its writer died in between), or a chain being swept.
          if (last === undefined || last.s === State.Sealed) return 'absent';
          // The element read is the one the tombstone's insert below succeeds after, or not at all:
          // the check and the clear are one step.
          if (failedFence !== undefined && !isExpired(last, now)) {
            if (last.s !== State.Failed || last.n !== failedFence) return 'changed';
          }
          if (last.s === State.InProgress && (last.l ?? 0) > now) return 'busy';
          // The record becomes an expired FAILED tombstone rather than going away, so the next
          // begin continues its fence (even within the same millisecond); the sweeper removes it.
          const position = chain.position + 1;
          const tombstone: RecordDoc = {
            _id: elementId(chain.chain, position),
            k: key,
            s: State.Failed,
            f: last.f,
            n: last.n,
            a: last.a,
            x: encodeError(CLEARED),
            d: now,
            e: new Date(now - 1),
          };
          if (await append(chain, tombstone)) return isExpired(last, now) ? 'absent' : 'cleared';
        }
        return 'busy';
      });
    },

    async claimFingerprint(
      scope: string,
      fingerprint: string,
      key: string,
      windowMs: number,
    ): Promise<FingerprintClaim | undefined> {
      const fingerprints = claims();
      return guarded('claimFingerprint', async () => {
        const _id = claimIdOf(scope, fingerprint);
        for (let round = 0; round < MAX_ROUNDS; round++) {
          const now = await clock.now();
          const until = new Date(now + Math.max(1, windowMs));
          try {
            // The unique _id makes the first writer win.
            await fingerprints.insertOne({ _id, k: key, e: until, g: newChainId() }, write);
            return undefined;
          } catch (error) {
            if (!isDuplicateKey(error)) throw error;
          }
          const held = await fingerprints.findOne({ _id });
          if (held === null) continue; // swept meanwhile: insert again
          if (held.e.getTime() > now) return held.k === key ? undefined : { firstKey: held.k };
          // Lapsed: replaced by the one writer that locks its generation (see lockClaim). Another
          // writer holds it: read again once it has had time to write (a round or two of its).
          if (!(await lockClaim(fingerprints, held, now, write))) {
            await pause(lockWait(round + 1));
            continue;
          }
          const claim = { $set: { k: key, e: until, g: newChainId() } };
          const replaced = await updating(1, () =>
            fingerprints.updateOne(sameGeneration(held), claim, write),
          );
          if (replaced.matchedCount === 1) return undefined;
        }
        throw new StoreUnavailableError({
          operation: 'claimFingerprint',
          message: `claimFingerprint kept racing other writers after ${MAX_ROUNDS} rounds`,
        });
      });
    },

    async releaseFingerprint(scope: string, fingerprint: string, key: string): Promise<void> {
      const fingerprints = claims();
      await guarded('releaseFingerprint', async () => {
        const _id = claimIdOf(scope, fingerprint);
        const held = await fingerprints.findOne({ _id });
        // Only this key's claim, and only if no other writer is replacing it (see lockClaim).
        if (held === null || held.k !== key) return;
        if (!(await lockClaim(fingerprints, held, await clock.now(), write))) return;
        await fingerprints.deleteOne(sameGeneration(held), write);
      });
    },

    async ensureIndexes(): Promise<void> {
      // Only the missing ones: FerretDB 1.x creates an index under a lock of the whole server and
      // writes through the database's connection pool, so a worker starting beside a database
      // whose pool is stuck stopped every database (see update-gate.ts). A list takes neither.
      const claimsOf = claimsIfAny();
      if (claimsOf !== undefined) {
        const existing = await indexNames(claimsOf);
        if (!existing.has('eo_claim_ttl') && !existing.has('eo_claim_expiry')) {
          try {
            // Lapsed fingerprint claims: TTL where supported, else the sweeper deletes them.
            await claimsOf.createIndex({ e: 1 }, { name: 'eo_claim_ttl', expireAfterSeconds: 0 });
          } catch (error) {
            if (!isUnsupported(error)) {
              reopen(error);
              throw asStoreError('ensureIndexes', error);
            }
            // No TTL (FerretDB 1.x): index `e` for the sweeper's delete instead.
            await guarded('ensureIndexes', () => claimsOf.createIndex({ e: 1 }, { name: 'eo_claim_expiry' }));
          }
        }
      }
      await guarded('ensureIndexes', async () => {
        const existing = await indexNames(collection);
        // Stuck-work queries (listInProgress): lease elements by the start of their attempt.
        if (!existing.has('eo_in_progress'))
          await collection.createIndex({ s: 1, sa: 1 }, { name: 'eo_in_progress' });
        // The sweeper's query. Never a TTL index: it would delete elements one by one, in any
        // order, and a chain with a hole could take a second element at one position.
        if (!existing.has('eo_expiry')) await collection.createIndex({ e: 1 }, { name: 'eo_expiry' });
      });
    },

    sweepExpired(): Promise<SweepResult> {
      const run = sweepExpired({
        collection,
        heads,
        updating,
        clock,
        write,
        ...(blobs === undefined ? {} : { blobs }),
        batchSize: sweepBatchSize,
        sealTimeoutMs,
        graceMs: expiredGraceMs,
        inProgressTtlMs,
        finishedLeaseMs,
      });
      sweeping = run.catch(() => undefined);
      // Lapsed payload-guard claims go too (a server without TTL indexes keeps them otherwise).
      return run.then(async (result) => {
        if (claimsCollection !== undefined) {
          const fingerprints = claimsCollection;
          await guarded('sweepExpired', () => sweepClaims(fingerprints, clock, write));
        }
        return result;
      });
    },

    startSweeper(intervalMs: number, sweeper: SweeperOptions = {}): () => void {
      if (!(intervalMs > 0)) throw new ConfigError('startSweeper needs a positive interval');
      refuseUnknownOptions(
        sweeper,
        { orphanBlobs: true, onPass: true } satisfies OptionNames<SweeperOptions>,
        'startSweeper',
      );
      if (sweeper.orphanBlobs !== undefined) {
        refuseUnknownOptions(
          sweeper.orphanBlobs,
          { olderThanMs: true, whenRecordGone: true, everyMs: true },
          'orphanBlobs',
        );
      }
      const orphans = sweeper.orphanBlobs;
      if (orphans !== undefined && blobs === undefined) {
        throw new ConfigError("startSweeper: orphanBlobs needs the store's blobs option");
      }
      const { everyMs, ...collection } = orphans ?? {};
      const orphansEveryMs = duration('orphanBlobs.everyMs', everyMs, 3_600_000, 1);
      let orphansDueAt = 0;
      const loop = repeatEvery(
        intervalMs,
        async () => {
          // A failed part does not hold up the next: each failure is reported after the round.
          const startedAt = Date.now();
          const { attempt, failures } = collectingFailures();
          const sweep = await attempt(() => store.sweepExpired());
          let orphanBlobs: OrphanBlobStats | undefined;
          if (orphans !== undefined && blobs !== undefined && performance.now() >= orphansDueAt) {
            orphansDueAt = performance.now() + orphansEveryMs;
            orphanBlobs = await attempt(() => collectOrphanBlobs({ store, blobs, ...collection }));
          }
          sweeper.onPass?.({
            startedAt,
            durationMs: Date.now() - startedAt,
            ...(sweep ? { sweep } : {}),
            ...(orphanBlobs ? { orphanBlobs } : {}),
          });
          for (const error of failures) options.onSweepError?.(error);
        },
        (error) => options.onSweepError?.(error),
      );
      sweepers.add(loop);
      return () => loop.stop();
    },

    async close(): Promise<void> {
      closed = true;
      for (const loop of sweepers) loop.stop();
      await Promise.all([sweeping, ...[...sweepers].map((loop) => loop.settled())]);
      sweepers.clear();
    },
  };
  return store;
}

/**
 * A payload-guard claim: the first key, when the claim lapses, and its generation (a random id,
 * new with each key that holds it; absent in claims of earlier versions). A lock (`l: 1`) stands
 * for one generation of a claim (see lockClaim).
 */
interface ClaimDoc {
  _id: string;
  k: string;
  e: Date;
  g?: string;
  l?: 1;
}

/** The claim `held` as long as it is the same generation (a claim of an earlier version has none). */
function sameGeneration(held: ClaimDoc): Filter<ClaimDoc> {
  return held.g === undefined ? { _id: held._id, g: { $exists: false } } : { _id: held._id, g: held.g };
}

/** Between a claimer's reads of a claim whose lock another writer holds: 5 ms, doubling. */
const lockWait = doublingBackoff(5, 1_000);

/** How long a claim's generation lock is kept: far longer than any writer holds one. */
const CLAIM_LOCK_MS = 86_400_000;

/** The lock document of `held`'s generation (see lockClaim). */
function claimLock(held: ClaimDoc, now: number): ClaimDoc {
  return { _id: `${held._id}\u0000${held.g ?? ''}`, k: '', e: new Date(now + CLAIM_LOCK_MS), l: 1 };
}

/**
 * Takes the lock of `held`'s generation: true for the one writer that may replace or delete the
 * claim as read. An insert decides, as everywhere in this store: a server without atomic filtered
 * writes (FerretDB 1.x) applies a filtered update or delete as a read and a write back, so two
 * writers filtering on the lapsed claim could both win it, or a release could delete the claim
 * another key had just taken.
 */
async function lockClaim(
  fingerprints: Collection<ClaimDoc>,
  held: ClaimDoc,
  now: number,
  write: { readonly writeConcern: WriteConcernSettings },
): Promise<boolean> {
  try {
    await fingerprints.insertOne(claimLock(held, now), write);
    return true;
  } catch (error) {
    if (isDuplicateKey(error)) return false;
    throw error;
  }
}

/**
 * Inserts `docs` in one round trip (unordered): the positions of those refused as duplicates.
 * Any other failure is thrown (nothing can be said of which went in).
 */
async function insertEach<D extends Document>(
  collection: Collection<D>,
  docs: D[],
  write: { readonly writeConcern: WriteConcernSettings },
): Promise<Set<number>> {
  if (docs.length === 0) return new Set();
  try {
    await collection.insertMany(docs as never, { ordered: false, ...write });
    return new Set();
  } catch (error) {
    const refused = duplicateIndexes(error);
    if (refused === undefined) throw error;
    return refused;
  }
}

/** Lapsed claims (and their locks) deleted per command: one scan each on FerretDB 1.x. */
const CLAIM_SWEEP_CHUNK = 500;

/**
 * Deletes lapsed claims, each through its generation's lock (a claim replaced meanwhile is not
 * deleted), and lapsed locks: a few commands per chunk, not a few per claim.
 */
async function sweepClaims(
  fingerprints: Collection<ClaimDoc>,
  clock: StoreClock,
  write: { readonly writeConcern: WriteConcernSettings },
): Promise<void> {
  const now = await clock.now();
  const lapsed = await fingerprints.find({ e: { $lte: new Date(now) } }).toArray();
  const locks = lapsed.filter((doc) => doc.l === 1).map((doc) => doc._id);
  for (let c = 0; c < locks.length; c += CLAIM_SWEEP_CHUNK) {
    await fingerprints.deleteMany({ _id: { $in: locks.slice(c, c + CLAIM_SWEEP_CHUNK) } }, write);
  }
  const claimsLapsed = lapsed.filter((doc) => doc.l !== 1);
  for (let c = 0; c < claimsLapsed.length; c += CLAIM_SWEEP_CHUNK) {
    const chunk = claimsLapsed.slice(c, c + CLAIM_SWEEP_CHUNK);
    const refused = await insertEach(
      fingerprints,
      chunk.map((held) => claimLock(held, now)),
      write,
    );
    const locked = chunk.filter((_, i) => !refused.has(i));
    if (locked.length > 0) await fingerprints.deleteMany({ $or: locked.map(sameGeneration) }, write);
  }
}

function makeClock(options: MongoStoreOptions, db: Db | undefined): StoreClock {
  const mode = options.clock ?? 'server';
  if (mode === 'client') return clientClock();
  if (mode !== 'server') throw new ConfigError(`clock must be 'server' or 'client' (got ${String(mode)})`);
  if (db === undefined) throw new ConfigError("clock 'server' needs `db` with this driver version");
  return serverClock(db, options.clockRefreshMs === undefined ? {} : { refreshMs: options.clockRefreshMs });
}

/** The record a chain's last element shows at `now`: none while sealed, expired or not yet written. */
function readable(chain: Chain | undefined, now: number): ProcessedRecord | undefined {
  const last = chain?.last;
  if (last === undefined || last.s === State.Sealed || isExpired(last, now)) return undefined;
  return decodeRecord(last);
}

/** A whole number option of at least `min`, or its default; anything else is a ConfigError. */
/**
 * The names of `target`'s indexes; none when they cannot be listed (the collection does not exist
 * yet, or the server cannot list them): the indexes are then created, which is safe to repeat.
 */
async function indexNames(target: Pick<Collection, 'listIndexes'>): Promise<Set<string>> {
  try {
    return new Set((await target.listIndexes().toArray()).map((index) => String(index.name)));
  } catch {
    return new Set();
  }
}

function duration(name: string, value: number | undefined, fallback: number, min: number): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value < min) throw new ConfigError(`${name} must be a number >= ${min}`);
  return Math.ceil(value);
}

/**
 * Whether `there` is the terminal `wanted` by the same holder: only the holder of fence `n` writes
 * a COMPLETED element with it; a FAILED one with it is also what `clear` writes, told apart by its
 * error code.
 */
function sameTerminal(there: Partial<RecordDoc>, wanted: Partial<RecordDoc>): boolean {
  if (there.s !== wanted.s || there.n !== wanted.n) return false;
  return wanted.s !== State.Failed || there.x?.c === wanted.x?.c;
}

/** A fingerprint claim's `_id`; length-prefixed, so no (scope, fingerprint) pair spells another's. */
function claimIdOf(scope: string, fingerprint: string): string {
  return `${scope.length}:${scope}:${fingerprint}`;
}
