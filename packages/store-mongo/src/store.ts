/**
 * The MongoDB processed-store: one document per key, every transition one conditional write.
 */
import {
  type BeginRequest,
  type BeginResult,
  type BlobStore,
  type ClearResult,
  type CompleteRequest,
  ConfigError,
  type ErrorInfo,
  type FencedResult,
  type FingerprintClaim,
  type InProgressEntry,
  type InProgressQuery,
  type ProcessedRecord,
  type ProcessedStore,
  StoreUnavailableError,
} from '@exactly-once/core';
import type { Collection, Db, Document, UpdateFilter, WriteConcernSettings } from 'mongodb';
import { clientClock, type StoreClock, serverClock } from './clock.js';
import {
  decodeRecord,
  decodeSteps,
  encodeError,
  encodeOutgoing,
  encodeResult,
  isExpired,
  packFingerprint,
  packTraceId,
  type RecordDoc,
  State,
  toBinary,
} from './codec.js';
import { asStoreError, guarded, isDuplicateKey, isUnsupported } from './driver.js';
import { sweepExpired, type SweepResult } from './sweep.js';

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
   * Delay of the TTL index past `expiresAt`, in seconds. Default 0 without `blobs`, 3600 with:
   * the sweeper, which deletes blobs too, should reach a record before the TTL monitor does.
   */
  readonly ttlDelaySeconds?: number;
  /** Expired records the sweeper reads per round. Default 500. */
  readonly sweepBatchSize?: number;
  /** Receives errors of the background sweeper (the next round runs anyway). Default: ignored. */
  readonly onSweepError?: (error: unknown) => void;
  /**
   * Collection of the payload guard's fingerprint claims (`claimFingerprint`). Default
   * `<records collection name>_fingerprints` in the records collection's database.
   */
  readonly fingerprintCollection?: Collection<Document>;
}

export interface EnsureIndexesResult {
  /** Whether the server accepted the TTL index; without it, run {@link MongoProcessedStore.startSweeper}. */
  readonly ttl: boolean;
}

export interface MongoProcessedStore extends ProcessedStore {
  /** The payload guard's claim (see {@link ProcessedStore.claimFingerprint}). */
  claimFingerprint(
    scope: string,
    fingerprint: string,
    key: string,
    windowMs: number,
  ): Promise<FingerprintClaim | undefined>;
  readonly collection: Collection<RecordDoc>;
  /** Creates the expiry index: TTL where the server supports it, a plain one otherwise. */
  ensureIndexes(): Promise<EnsureIndexesResult>;
  /** Deletes records past their retention (and, with `blobs`, their blobs). */
  sweepExpired(): Promise<SweepResult>;
  /** Runs {@link sweepExpired} every `intervalMs` until the returned function or `close` is called. */
  startSweeper(intervalMs: number): () => void;
  /** Stops sweepers and waits for a running sweep. The client belongs to the caller and stays open. */
  close(): Promise<void>;
}

export type { SweepResult } from './sweep.js';

export const DEFAULT_COLLECTION = 'eo_records';
/** The error a cleared record's tombstone carries (it reads as absent). */
const CLEARED = { name: 'Cleared', code: 'CLEARED', message: 'cleared by an operator' };
/** Rounds of begin's claim/read loop; only writers racing on the same key ever need a second one. */
const MAX_BEGIN_ROUNDS = 8;

/**
 * Creates a processed-store on a MongoDB collection (MongoDB 4.4+, or a wire-compatible server).
 *
 * Each transition is a single write whose filter names the state, fence and lease it expects, so
 * the server decides every race. `begin` inserts (the unique `_id` picks one winner among racing
 * workers); on E11000 it reads the record and either answers from it (duplicate, failed,
 * mismatch, busy) or claims it with a conditional update on the fence and lease (or expiry) it
 * read; if that update matches nothing, another worker got there first and it reads again.
 */
export function createMongoStore(options: MongoStoreOptions): MongoProcessedStore {
  if (options.db === undefined && options.collection === undefined) {
    throw new ConfigError('createMongoStore needs `db` or `collection`');
  }
  const collection = (options.collection ??
    options.db?.collection(options.collectionName ?? DEFAULT_COLLECTION)) as Collection<RecordDoc>;
  const writeConcern = options.writeConcern ?? { w: 'majority' };
  const write = { writeConcern };
  const clock = makeClock(options, collection);
  let claimsCollection: Collection<ClaimDoc> | undefined;
  const claims = (): Collection<ClaimDoc> => {
    if (claimsCollection) return claimsCollection;
    const db = options.db ?? (collection as { db?: Db }).db;
    const named =
      options.fingerprintCollection ?? db?.collection(`${collection.collectionName}_fingerprints`);
    if (named === undefined) throw new ConfigError('claimFingerprint needs `db` or `fingerprintCollection`');
    claimsCollection = named as unknown as Collection<ClaimDoc>;
    return claimsCollection;
  };
  const blobs = options.blobs;
  const sweepers = new Set<() => void>();
  let sweeping: Promise<unknown> = Promise.resolve();

  const held = (key: string, fence: number) => ({ _id: key, s: State.InProgress, n: fence });
  const fenced = async (operation: string, key: string, fence: number, update: UpdateFilter<RecordDoc>) => {
    const result = await guarded(operation, () => collection.updateOne(held(key, fence), update, write));
    return (result.matchedCount === 1 ? 'ok' : 'lost') satisfies FencedResult;
  };

  const fresh = (request: BeginRequest, now: number, fence: number): RecordDoc => ({
    _id: request.key,
    s: State.InProgress,
    f: packFingerprint(request.fingerprint),
    n: fence,
    a: 1,
    ...(request.traceId === undefined ? {} : { t: packTraceId(request.traceId) }),
    o: request.owner,
    l: now + request.leaseMs,
    sa: now,
  });
  const acquiredNew = (doc: RecordDoc): BeginResult => ({
    status: 'acquired',
    kind: 'new',
    fence: doc.n,
    attempt: 1,
    leaseUntil: doc.l ?? 0,
    steps: {},
  });

  /**
   * Absent key: insert, fence = store time. The unique `_id` decides a race between workers: the
   * losers get E11000 (undefined here) and go on to read the winner's record.
   */
  const insertNew = async (request: BeginRequest, now: number): Promise<BeginResult | undefined> => {
    const doc = fresh(request, now, now);
    try {
      await collection.insertOne(doc, write);
      return acquiredNew(doc);
    } catch (error) {
      if (isDuplicateKey(error)) return undefined;
      throw error;
    }
  };

  /** Expired record: replace it, continuing its fence, if nobody renewed or swept it meanwhile. */
  const renew = async (request: BeginRequest, old: RecordDoc, now: number) => {
    const doc = fresh(request, now, Math.max(old.n + 1, now));
    const { _id, ...fields } = doc;
    const unset: Record<string, ''> = { st: '', x: '', r: '', b: '', ob: '', pb: '', d: '', e: '' };
    if (request.traceId === undefined) unset.t = '';
    const result = await collection.updateOne(
      { _id, n: old.n, e: { $lte: new Date(now) } },
      { $set: fields, $unset: unset },
      write,
    );
    return result.matchedCount === 1 ? acquiredNew(doc) : undefined;
  };

  /** Lease passed (or released): take it over, provided nobody changed the lease since we read it. */
  const takeOver = async (request: BeginRequest, doc: RecordDoc, now: number) => {
    const leaseUntil = now + request.leaseMs;
    const update: UpdateFilter<RecordDoc> = {
      $set: {
        o: request.owner,
        l: leaseUntil,
        sa: now,
        ...(request.traceId === undefined ? {} : { t: packTraceId(request.traceId) }),
      },
      $inc: { n: 1, a: 1 },
      ...(request.traceId === undefined ? { $unset: { t: '' } } : {}),
    };
    const taken = await collection.findOneAndUpdate(
      { _id: request.key, s: State.InProgress, n: doc.n, l: doc.l ?? 0 },
      update,
      { returnDocument: 'after', ...write },
    );
    if (taken === null) return undefined;
    return {
      status: 'acquired',
      kind: (doc.l ?? 0) === 0 ? 'retry' : 'takeover',
      fence: taken.n,
      attempt: taken.a,
      leaseUntil,
      steps: decodeSteps(taken.st),
    } satisfies BeginResult;
  };

  const begin = async (request: BeginRequest): Promise<BeginResult> => {
    for (let round = 0; round < MAX_BEGIN_ROUNDS; round++) {
      const now = await clock.now();
      const created = await insertNew(request, now);
      if (created !== undefined) return created;

      const doc = await collection.findOne({ _id: request.key });
      if (doc === null) continue; // swept since the insert failed: insert again
      if (isExpired(doc, now)) {
        const renewed = await renew(request, doc, now);
        if (renewed !== undefined) return renewed;
        continue;
      }
      const record = decodeRecord(doc);
      if (record.fingerprint !== request.fingerprint) return { status: 'mismatch', record };
      if (record.state === 'COMPLETED') return { status: 'duplicate', record };
      if (record.state === 'FAILED') return { status: 'failed', record };
      if (record.leaseUntil > now) {
        return { status: 'busy', record, retryAfterMs: record.leaseUntil - now };
      }
      const taken = await takeOver(request, doc, now);
      if (taken !== undefined) return taken;
      // Someone else took it over, extended or finished it in between: read again.
    }
    throw new StoreUnavailableError({
      operation: 'begin',
      message: `processed-store begin gave up after ${MAX_BEGIN_ROUNDS} contended rounds`,
    });
  };

  const store: MongoProcessedStore = {
    collection,

    begin: (request) => guarded('begin', () => begin(request)),

    async extend(key: string, fence: number, leaseMs: number): Promise<FencedResult> {
      const now = await guarded('extend', () => clock.now());
      return fenced('extend', key, fence, { $set: { l: now + leaseMs } });
    },

    async complete(request: CompleteRequest): Promise<FencedResult> {
      const now = await guarded('complete', () => clock.now());
      const result = encodeResult(request.result);
      const completed: Partial<RecordDoc> = {
        s: State.Completed,
        d: now,
        e: new Date(now + request.retentionMs),
        ...result,
        ...(request.outgoing.length === 0 ? {} : { ob: encodeOutgoing(request.outgoing) }),
        // Without a new trace id the record keeps the one of the run that held the lease.
        ...(request.traceId === undefined ? {} : { t: packTraceId(request.traceId) }),
      };
      const unset: Record<string, ''> = { o: '', l: '', sa: '', st: '', x: '', pb: '' };
      for (const field of ['r', 'b', 'ob'] as const) if (!(field in completed)) unset[field] = '';
      return fenced('complete', request.key, request.fence, { $set: completed, $unset: unset });
    },

    async release(key: string, fence: number, error: ErrorInfo): Promise<FencedResult> {
      return fenced('release', key, fence, { $set: { l: 0, x: encodeError(error) } });
    },

    async fail(key: string, fence: number, error: ErrorInfo, retentionMs: number): Promise<FencedResult> {
      const now = await guarded('fail', () => clock.now());
      return fenced('fail', key, fence, {
        $set: { s: State.Failed, x: encodeError(error), d: now, e: new Date(now + retentionMs) },
        $unset: { o: '', l: '', sa: '', st: '', r: '', b: '', ob: '', pb: '' },
      });
    },

    async markPublished(key: string, fence: number, ids: readonly string[]): Promise<void> {
      if (ids.length === 0) return;
      await guarded('markPublished', async () => {
        const now = await clock.now();
        // $addToSet rather than a flag inside each message: FerretDB 1.x has neither arrayFilters
        // nor the positional operator, and a set of confirmed ids needs no read-modify-write.
        await collection.updateOne(
          { _id: key, s: State.Completed, n: fence, e: { $gt: new Date(now) } },
          { $addToSet: { pb: { $each: [...new Set(ids)] } } },
          write,
        );
      });
    },

    async saveStep(key: string, fence: number, name: string, result: Uint8Array): Promise<FencedResult> {
      const now = await guarded('saveStep', () => clock.now());
      // Appended, never keyed by name: a step name is data and may hold `.` or `$`.
      return fenced('saveStep', key, fence, { $push: { st: { k: name, r: toBinary(result), at: now } } });
    },

    async markStepStarted(key: string, fence: number, name: string): Promise<FencedResult> {
      const now = await guarded('markStepStarted', () => clock.now());
      // An entry without a result: the step reads as started until a saveStep entry follows it.
      return fenced('markStepStarted', key, fence, { $push: { st: { k: name, at: now } } });
    },

    /**
     * Operator query: IN_PROGRESS records whose current attempt began (`sa`) at least
     * `olderThanMs` ago, on the `eo_in_progress` index ({ s, sa }); a prefix is a range on `_id`
     * (the store key, compared verbatim, never as a pattern).
     */
    async listInProgress(query: InProgressQuery): Promise<InProgressEntry[]> {
      return guarded('listInProgress', async () => {
        if (!(query.limit > 0)) return [];
        const cutoff = (await clock.now()) - query.olderThanMs;
        const filter: Document = { s: State.InProgress, sa: { $lte: cutoff } };
        const prefix = query.prefix;
        if (prefix !== undefined && prefix !== '') {
          const last = prefix.charCodeAt(prefix.length - 1);
          filter._id =
            last < 0xd7ff
              ? { $gte: prefix, $lt: prefix.slice(0, -1) + String.fromCharCode(last + 1) }
              : { $gte: prefix };
        }
        const found: InProgressEntry[] = [];
        for await (const doc of collection.find(filter).sort({ sa: 1 })) {
          const record = doc as RecordDoc;
          if (prefix !== undefined && !record._id.startsWith(prefix)) continue;
          found.push({
            key: record._id,
            owner: record.o ?? '',
            attempt: record.a,
            fence: record.n,
            leaseUntil: record.l ?? 0,
            startedAt: record.sa ?? 0,
          });
          if (found.length >= query.limit) break;
        }
        return found;
      });
    },

    async get(key: string): Promise<ProcessedRecord | undefined> {
      return guarded('get', async () => {
        const now = await clock.now();
        const doc = await collection.findOne({ _id: key });
        return doc === null || isExpired(doc, now) ? undefined : decodeRecord(doc);
      });
    },

    async clear(key: string): Promise<ClearResult> {
      return guarded('clear', async () => {
        const now = await clock.now();
        const doc = await collection.findOne({ _id: key });
        if (doc === null) return 'absent';
        if (doc.s === State.InProgress && (doc.l ?? 0) > now) return 'busy';
        // Only the version read is cleared: a worker that began or extended since keeps it. The
        // record becomes an expired FAILED tombstone rather than going away, so the next begin
        // (which renews expired records) continues its fence, even within the same millisecond;
        // the sweeper or TTL index removes it later.
        const filter = {
          _id: key,
          s: doc.s,
          n: doc.n,
          ...(doc.s === State.InProgress ? { l: doc.l ?? 0 } : {}),
        };
        const { matchedCount } = await collection.updateOne(
          filter,
          {
            $set: { s: State.Failed, e: new Date(now - 1), d: now, x: encodeError(CLEARED) },
            $unset: { o: '', l: '', st: '', r: '', b: '', ob: '', pb: '', sa: '' },
          },
          write,
        );
        if (matchedCount === 1) return isExpired(doc, now) ? 'absent' : 'cleared';
        return (await collection.findOne({ _id: key })) === null ? 'absent' : 'busy';
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
        // Length-prefixed, so no (scope, fingerprint) pair can spell another's id.
        const _id = `${scope.length}:${scope}:${fingerprint}`;
        for (let round = 0; round < MAX_BEGIN_ROUNDS; round++) {
          const now = await clock.now();
          const until = new Date(now + Math.max(1, windowMs));
          try {
            // The unique _id makes the first writer win.
            await fingerprints.insertOne({ _id, k: key, e: until }, write);
            return undefined;
          } catch (error) {
            if (!isDuplicateKey(error)) throw error;
          }
          const held = await fingerprints.findOne({ _id });
          if (held === null) continue; // swept meanwhile: insert again
          if (held.e.getTime() > now) return held.k === key ? undefined : { firstKey: held.k };
          // Expired: replace it, unless another worker renewed it since it was read.
          const replaced = await fingerprints.updateOne(
            { _id, k: held.k, e: held.e },
            { $set: { k: key, e: until } },
            write,
          );
          if (replaced.matchedCount === 1) return undefined;
        }
        throw new StoreUnavailableError({
          operation: 'claimFingerprint',
          message: `claimFingerprint kept racing other writers after ${MAX_BEGIN_ROUNDS} rounds`,
        });
      });
    },

    async ensureIndexes(): Promise<EnsureIndexesResult> {
      try {
        // Lapsed fingerprint claims: TTL where supported, else the sweeper deletes them.
        await claims().createIndex({ e: 1 }, { name: 'eo_claim_ttl', expireAfterSeconds: 0 });
      } catch (error) {
        if (error instanceof ConfigError) {
          // No database to put claims in: nothing to index (claimFingerprint will say so).
        } else if (isUnsupported(error)) {
          // No TTL (FerretDB 1.x): index `e` for the sweeper's delete instead.
          await guarded('ensureIndexes', () => claims().createIndex({ e: 1 }, { name: 'eo_claim_expiry' }));
        } else throw asStoreError('ensureIndexes', error);
      }
      // Stuck-work queries (listInProgress): IN_PROGRESS records by the start of their attempt.
      await guarded('ensureIndexes', () =>
        collection.createIndex({ s: 1, sa: 1 }, { name: 'eo_in_progress' }),
      );
      const expireAfterSeconds = options.ttlDelaySeconds ?? (blobs === undefined ? 0 : 3600);
      try {
        await collection.createIndex({ e: 1 }, { name: 'eo_expiry_ttl', expireAfterSeconds });
        return { ttl: true };
      } catch (error) {
        if (!isUnsupported(error)) throw asStoreError('ensureIndexes', error);
      }
      // No TTL (FerretDB 1.x answers NotImplemented): index `e` for the sweeper's query instead.
      await guarded('ensureIndexes', () => collection.createIndex({ e: 1 }, { name: 'eo_expiry' }));
      return { ttl: false };
    },

    sweepExpired(): Promise<SweepResult> {
      const run = sweepExpired({
        collection,
        clock,
        write,
        ...(blobs === undefined ? {} : { blobs }),
        batchSize: options.sweepBatchSize ?? 500,
      });
      sweeping = run.catch(() => undefined);
      // Lapsed payload-guard claims go too (a server without TTL indexes keeps them otherwise).
      return run.then(async (result) => {
        if (claimsCollection !== undefined) {
          const now = await guarded('sweepExpired', () => clock.now());
          const fingerprints = claimsCollection;
          await guarded('sweepExpired', () => fingerprints.deleteMany({ e: { $lte: new Date(now) } }, write));
        }
        return result;
      });
    },

    startSweeper(intervalMs: number): () => void {
      if (!(intervalMs > 0)) throw new ConfigError('startSweeper needs a positive interval');
      let stopped = false;
      let timer: NodeJS.Timeout | undefined;
      const tick = async () => {
        try {
          await store.sweepExpired();
        } catch (error) {
          options.onSweepError?.(error);
        }
        if (!stopped) timer = setTimeout(tick, intervalMs).unref();
      };
      timer = setTimeout(tick, intervalMs).unref();
      const stop = () => {
        stopped = true;
        clearTimeout(timer);
        sweepers.delete(stop);
      };
      sweepers.add(stop);
      return stop;
    },

    async close(): Promise<void> {
      for (const stop of [...sweepers]) stop();
      await sweeping;
    },
  };
  return store;
}

/** A payload-guard claim: the first key and when the claim lapses. */
interface ClaimDoc {
  _id: string;
  k: string;
  e: Date;
}

function makeClock(options: MongoStoreOptions, collection: Collection<RecordDoc>): StoreClock {
  const mode = options.clock ?? 'server';
  if (mode === 'client') return clientClock();
  if (mode !== 'server') throw new ConfigError(`clock must be 'server' or 'client' (got ${String(mode)})`);
  // Collection#db is public from driver 6.9; older drivers need `db` passed alongside.
  const db = options.db ?? (collection as { db?: Db }).db;
  if (db === undefined) throw new ConfigError("clock 'server' needs `db` with this driver version");
  return serverClock(db, options.clockRefreshMs === undefined ? {} : { refreshMs: options.clockRefreshMs });
}
