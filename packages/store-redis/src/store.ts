/**
 * The Redis processed-store: every transition is one Lua script (src/lua), so each is atomic
 * on the server and reads the server's clock, whatever the clocks of the workers say.
 */
import {
  type BeginRequest,
  type BeginResult,
  type BlobStore,
  batchAnswers,
  type ClearOptions,
  type ClearResult,
  type CompleteRequest,
  ConfigError,
  CorruptRecordError,
  collectOrphanBlobs,
  type ErrorInfo,
  type FencedResult,
  type FingerprintClaim,
  type InProgressEntry,
  type InProgressQuery,
  type InProgressRecord,
  type Logger,
  MAX_DURATION_MS,
  type MarkPublishedRequest,
  type ProcessedRecord,
  type ProcessedStore,
  type ReleaseOptions,
  StoreUnavailableError,
  defaultLogger,
} from '@exactly-once/core';
import { type OptionNames, type Repeating, refuseUnknownOptions } from '@exactly-once/core/spi';
import { type BlobCollectionOptions, type BlobCollectionStats, collectBlobPass } from './blob-collection.js';
import {
  type RedisArg,
  type RedisClient,
  registerScripts,
  runCommand,
  runScript,
  unavailable,
} from './client.js';
import {
  type CompactedRecord,
  decodeMarker,
  decodeRecord,
  INLINE_RESULT,
  isExpired,
  markerExpiry,
  packBlobResult,
  packError,
  packMessage,
  packText,
} from './codec.js';
import { type CompactionOptions, type CompactionStats, compactPass } from './compaction.js';
import { scripts } from './generated/scripts.js';
import { listInProgress } from './in-progress.js';
import { fingerprintClaimKey, keysFor, nodeOfTag, staleSlotMap } from './layout.js';
import { type MaintenanceOptions, startMaintenance } from './maintenance.js';
import { ArgumentWriter } from './packing.js';
import { ServerClocks } from './server-clock.js';
import { policyGate } from './policy-gate.js';

export interface RedisStoreOptions {
  /** An ioredis `Redis` or `Cluster`. The store does not close it unless `closeClient` is set. */
  readonly client: RedisClient;
  /** First segment of every key the store writes. No `{` or `}`. Default `eo`. */
  readonly keyPrefix?: string;
  /**
   * How long an IN_PROGRESS record outlives its lease before Redis drops it, so abandoned
   * records do not leak. Default 7 days.
   */
  readonly inProgressTtlMs?: number;
  /**
   * How long a COMPLETED or FAILED record stays stored past its expiry (it already reads as
   * absent). New fences start at the server clock; a record still stored also keeps the next
   * fence above its own if the clock stepped back (e.g. after a failover). Default 1 minute.
   */
  readonly expiredGraceMs?: number;
  /**
   * Refuse a server whose `maxmemory-policy` is not `noeviction` (checked on first use and by
   * `checkServer()`). Default true; false only logs the risk.
   */
  readonly checkEvictionPolicy?: boolean;
  /**
   * Enables compaction: COMPLETED records are indexed, and `compactCompleted()` turns those
   * completed at least this long ago into compact markers. Unset: no index, no compaction.
   */
  readonly compactAfterMs?: number;
  /**
   * Whether `complete` adds a blob result's pointer to the blob index that `collectBlobs` works
   * through. The index grows by one entry per blob result until a pass removes it: set false where
   * `collectBlobs` never runs on this store (the hot tier of a tiered store, whose blobs the cold
   * tier's collection deletes). Default true.
   */
  readonly indexBlobs?: boolean;
  /**
   * After `complete`, wait (Redis `WAIT`) until this many replicas acknowledged the write; fewer
   * within `timeoutMs` makes `complete` throw StoreUnavailableError so the message is not acked.
   */
  readonly waitReplicas?: { readonly replicas: number; readonly timeoutMs: number };
  /** Let `close()` quit the client. Default false. */
  readonly closeClient?: boolean;
  readonly logger?: Logger;
}

export interface RedisProcessedStore extends ProcessedStore {
  /** The payload guard's claim (see {@link ProcessedStore.claimFingerprint}). */
  claimFingerprint(
    scope: string,
    fingerprint: string,
    key: string,
    windowMs: number,
  ): Promise<FingerprintClaim | undefined>;
  /** Gives a refused key reuse's claim back (see {@link ProcessedStore.releaseFingerprint}). */
  releaseFingerprint(scope: string, fingerprint: string, key: string): Promise<void>;
  /** Checks the server's eviction policy; throws ConfigError when it is unsafe (see options). */
  checkServer(): Promise<void>;
  /** One compaction pass over this store's index; needs `compactAfterMs`. */
  compactCompleted(options?: CompactionOptions): Promise<CompactionStats>;
  /**
   * One pass deleting from `blobs` the blob results of records past their physical end (expiry +
   * `expiredGraceMs`); run it periodically with the consumer's blob store (see the README).
   */
  collectBlobs(blobs: BlobStore, options?: BlobCollectionOptions): Promise<BlobCollectionStats>;
  /**
   * Runs `compactCompleted()` (with `compactAfterMs`) and `collectBlobs(blobs)` (with `blobs`; and
   * core's `collectOrphanBlobs` with `orphanBlobs`) in the background every `everyMs`, one worker
   * of the deployment per interval; call it on every worker. Returns a function that stops it;
   * `close()` stops it too and waits for a running pass.
   */
  startMaintenance(options: MaintenanceOptions): () => void;
  /** Stops maintenance (waiting for a running pass), then quits the client if `closeClient`. */
  close(): Promise<void>;
}

export type { CompactedRecord };

const DAY_MS = 86_400_000;
/** Bits of a completion's index flags (see completeMany-n.lua). */
const INDEX_COMPLETION = 1;
const INDEX_BLOB = 2;

const REDIS_STORE_OPTIONS = {
  client: true,
  keyPrefix: true,
  inProgressTtlMs: true,
  expiredGraceMs: true,
  checkEvictionPolicy: true,
  compactAfterMs: true,
  indexBlobs: true,
  waitReplicas: true,
  closeClient: true,
  logger: true,
} as const satisfies OptionNames<RedisStoreOptions>;

export function createRedisStore(options: RedisStoreOptions): RedisProcessedStore {
  if (typeof options === 'object' && options !== null) refuseUnknownOptions(options, REDIS_STORE_OPTIONS);
  const client = options?.client;
  if (typeof client?.call !== 'function' || typeof client.defineCommand !== 'function') {
    throw new ConfigError('client is required: an ioredis Redis or Cluster');
  }
  // ioredis prefixes the keys a script is given but not the names packed into its arguments:
  // the batch scripts and the single-key ones would then work on two different Redis keys for
  // one store key, and two workers could both hold it.
  const own = (client as { options?: { keyPrefix?: string; redisOptions?: { keyPrefix?: string } } }).options;
  if (own?.keyPrefix || own?.redisOptions?.keyPrefix) {
    throw new ConfigError(
      "the ioredis client has its own keyPrefix: the store's keys must not be prefixed by the client; use the store's keyPrefix option instead",
    );
  }
  const prefix = options.keyPrefix ?? 'eo';
  if (prefix.length === 0 || /[{}]/.test(prefix)) {
    throw new ConfigError(
      `keyPrefix must be non-empty and contain no "{" or "}" (got ${JSON.stringify(prefix)})`,
    );
  }
  const ttlMs = duration('inProgressTtlMs', options.inProgressTtlMs, 7 * DAY_MS);
  const graceMs = duration('expiredGraceMs', options.expiredGraceMs, 60_000);
  const compactAfterMs =
    options.compactAfterMs === undefined ? undefined : duration('compactAfterMs', options.compactAfterMs, 0);
  const wait = options.waitReplicas;
  if (wait && !(Number.isInteger(wait.replicas) && wait.replicas >= 0 && wait.timeoutMs >= 0)) {
    throw new ConfigError('waitReplicas needs an integer replicas >= 0 and timeoutMs >= 0');
  }
  const logger = options.logger ?? defaultLogger;
  const enforce = options.checkEvictionPolicy ?? true;
  const indexBlobs = options.indexBlobs ?? true;
  registerScripts(client);
  // On a Cluster a batch script runs on one node: batches go per node (see nodeOfTag).
  const cluster = (client as { isCluster?: boolean }).isCluster === true;
  // The scripts' argument for it (see refuseMigrating in lua/includes/record.lua).
  const clusterArg = cluster ? '1' : '0';
  const nodeOf = (key: string): string => nodeOfTag(client, keysFor(prefix, key).tag);
  // Each node's clock, for the time after which a begin's caller has given up.
  const clocks = new ServerClocks();
  /**
   * Runs a batch call. A batch grouped by a stale slot map fails whole (see staleSlotMap), and
   * refreshing the map lets the redelivery be grouped right.
   */
  const batch = async <A>(call: () => Promise<A>): Promise<A> => {
    try {
      return await call();
    } catch (error) {
      staleSlotMap(client, error);
      throw error;
    }
  };

  const gate = policyGate({ client, logger, enforce });
  const ready = gate.ready;

  const fenced = async (operation: string, args: RedisArg[]): Promise<FencedResult> => {
    await ready();
    let reply: unknown;
    try {
      reply = await runScript(client, operation as 'extend', operation, args);
    } catch (error) {
      // Damaged since its begin: the record no longer holds the fence.
      if (error instanceof CorruptRecordError) return 'lost';
      throw error;
    }
    return reply === 1 ? 'ok' : 'lost';
  };

  /** One key's part of completeMany's packed argument (see completeMany-n.lua). */
  const packCompletion = (out: ArgumentWriter, record: Buffer, request: CompleteRequest): void => {
    const indexed = compactAfterMs !== undefined && request.retentionMs > compactAfterMs;
    out
      .string(record)
      .uint(request.fence, 6)
      .uint(Number(ms(request.retentionMs)), 6)
      .uint((indexed ? INDEX_COMPLETION : 0) | (indexBlobs ? INDEX_BLOB : 0), 1)
      .uint(request.outgoing.length, 4);
    if (request.traceId === undefined) out.string('');
    else out.packedText(request.traceId);
    const result = request.result;
    if (result === undefined) out.string('');
    else if (result.kind === 'inline') out.tagged(INLINE_RESULT, result.data);
    else out.string(packBlobResult(result));
    for (const message of request.outgoing) out.string(message.id).string(packMessage(message));
  };

  /** Completes `requests` in one call per node on a Cluster (one call on a standalone server). */
  const completeMany = async (requests: readonly CompleteRequest[]): Promise<FencedResult[]> => {
    if (requests.length === 0) return [];
    await ready();
    return inGroups(
      'complete',
      requests,
      (r) => nodeOf(r.key),
      async (group) => {
        const packed = new ArgumentWriter(group.length * 160);
        let route: Buffer | undefined;
        for (const request of group) {
          const record = keysFor(prefix, request.key).record;
          route ??= record;
          packCompletion(packed, record, request);
        }
        const call: RedisArg[] = [1, route as Buffer, String(graceMs), clusterArg, packed.finish()];
        const replies = (await batch(() =>
          wait === undefined
            ? runScript(client, 'completeMany', 'complete', call)
            : withWait(client, call, wait),
        )) as number[];
        return replies.map((r): FencedResult => (r === 1 ? 'ok' : 'lost'));
      },
    );
  };

  const compactCompleted = async (compaction?: CompactionOptions): Promise<CompactionStats> => {
    if (compactAfterMs === undefined) {
      throw new ConfigError('compactCompleted needs a store created with compactAfterMs');
    }
    await ready();
    return compactPass({ client, prefix, compactAfterMs, graceMs }, compaction);
  };
  const collectBlobs = async (
    blobs: BlobStore,
    collection?: BlobCollectionOptions,
  ): Promise<BlobCollectionStats> => {
    await ready();
    return collectBlobPass({ client, prefix, blobs }, collection);
  };
  const maintenance = new Set<Repeating>();

  const store: RedisProcessedStore = {
    async begin(request: BeginRequest): Promise<BeginResult> {
      const startedAt = clocks.started();
      await gate.readyToBegin();
      const keys = keysFor(prefix, request.key);
      const node = nodeOf(request.key);
      const fingerprint = packText(request.fingerprint);
      const [code, now, payload] = (await runScript(
        client,
        'begin',
        'begin',
        [
          keys.record,
          keys.markers,
          keys.legacyMarkers,
          fingerprint,
          request.owner,
          ms(request.leaseMs),
          request.traceId === undefined ? '' : packText(request.traceId),
          String(ttlMs),
          keys.id,
          request.key,
          String(clocks.deadline(node, startedAt, request.abandonAfterMs)),
          clusterArg,
        ],
        request.key,
      )) as [Buffer, number, BeginPayload];
      clocks.observe(node, Number(now));
      return decodeBegin(request, code, now, payload, request.leaseMs);
    },

    async beginMany(requests: readonly BeginRequest[]): Promise<BeginResult[]> {
      if (requests.length === 0) return [];
      const startedAt = clocks.started();
      await gate.readyToBegin();
      // One call (per node on a Cluster): keys in request order, so a key asked twice sees itself.
      return inGroups(
        'begin',
        requests,
        (r) => nodeOf(r.key),
        async (group, node) => {
          const packed = new ArgumentWriter(group.length * 256);
          let route: Buffer | undefined;
          for (const request of group) {
            const keys = keysFor(prefix, request.key);
            route ??= keys.record;
            packed.string(keys.record).packedText(request.fingerprint);
            if (request.traceId === undefined) packed.string('');
            else packed.packedText(request.traceId);
            packed
              .string(request.key)
              .string(request.owner)
              .string(keys.markers)
              .uint(Number(ms(request.leaseMs)), 6)
              .uint(clocks.deadline(node, startedAt, request.abandonAfterMs), 6);
          }
          const args = [1, route as Buffer, String(ttlMs), clusterArg, packed.finish()];
          const reply = (await batch(() => runScript(client, 'beginMany', 'begin', args))) as [
            number,
            ...(Buffer | BeginPayload)[],
          ];
          const now = reply[0];
          clocks.observe(node, now);
          return group.map((request, i) => {
            const code = reply[1 + 2 * i] as Buffer;
            const payload = reply[2 + 2 * i] as BeginPayload;
            // A damaged record: this key's error alone (see inGroups), the others' answers stand,
            // whether the script refused it or its fields do not decode here.
            if (code.toString('latin1') === 'E') {
              return new CorruptRecordError({ key: request.key, detail: String(payload) });
            }
            try {
              return decodeBegin(request, code, now, payload, request.leaseMs);
            } catch (error) {
              if (error instanceof CorruptRecordError) return error;
              throw error;
            }
          });
        },
      );
    },
    async extend(key: string, fence: number, leaseMs: number): Promise<FencedResult> {
      return fenced('extend', [keysFor(prefix, key).record, String(fence), ms(leaseMs), String(ttlMs)]);
    },

    async complete(request: CompleteRequest): Promise<FencedResult> {
      const [answer] = await completeMany([request]);
      return answer as FencedResult;
    },

    completeMany,

    async markPublishedMany(requests: readonly MarkPublishedRequest[]): Promise<void> {
      const wanted = requests.filter((r) => r.ids.length > 0);
      if (wanted.length === 0) return;
      await ready();
      await inGroups(
        'markPublished',
        wanted,
        (r) => nodeOf(r.key),
        async (group) => {
          const records = group.map((r) => keysFor(prefix, r.key).record);
          const packed = new ArgumentWriter(group.length * 128);
          group.forEach((r, i) => {
            packed
              .string(records[i] as Buffer)
              .string(String(r.fence))
              .uint(r.ids.length, 4);
            for (const id of r.ids) packed.string(id);
          });
          const args = [1, records[0] as Buffer, packed.finish()];
          await batch(() => runScript(client, 'markPublishedMany', 'markPublished', args));
          return group.map(() => undefined);
        },
      );
    },

    release(key: string, fence: number, error: ErrorInfo, options?: ReleaseOptions): Promise<FencedResult> {
      const notRun = options?.notRun === true;
      return fenced('release', [
        keysFor(prefix, key).record,
        String(fence),
        notRun ? '' : packError(error),
        String(ttlMs),
        notRun ? (options?.takenOver ? '2' : '1') : '0',
      ]);
    },

    async fail(key: string, fence: number, error: ErrorInfo, retentionMs: number): Promise<FencedResult> {
      const record = keysFor(prefix, key).record;
      return fenced('fail', [record, String(fence), packError(error), ms(retentionMs), String(graceMs)]);
    },

    async markPublished(key: string, fence: number, ids: readonly string[]): Promise<void> {
      if (ids.length === 0) return;
      await ready();
      const args = [keysFor(prefix, key).record, String(fence), ...ids];
      await runScript(client, 'markPublished', 'markPublished', args, key);
    },

    saveStep(key: string, fence: number, name: string, result: Uint8Array): Promise<FencedResult> {
      return fenced('saveStep', [keysFor(prefix, key).record, String(fence), name, Buffer.from(result)]);
    },

    markStepStarted(key: string, fence: number, name: string): Promise<FencedResult> {
      return fenced('markStepStarted', [keysFor(prefix, key).record, String(fence), name]);
    },

    async clear(key: string, options?: ClearOptions): Promise<ClearResult> {
      await ready();
      const keys = keysFor(prefix, key);
      const fence = options?.failedFence;
      if (fence !== undefined && !Number.isSafeInteger(fence)) {
        throw new ConfigError(
          `clear: failedFence must be a record's fence (an integer), not ${String(fence)}`,
        );
      }
      const failedFence = fence === undefined ? '' : String(fence);
      const code = Number(
        await runScript(
          client,
          'clear',
          'clear',
          [keys.record, keys.markers, keys.legacyMarkers, keys.index, keys.id, String(graceMs), failedFence],
          key,
        ),
      );
      if (code === 1) return 'cleared';
      if (code === 0) return 'absent';
      if (code === -1) return 'busy';
      if (code === -2) return 'changed';
      throw malformed('clear', String(code));
    },

    /** Operator query; SCANs the store's keys (see in-progress.ts). */
    async listInProgress(query: InProgressQuery): Promise<InProgressEntry[]> {
      await ready();
      return listInProgress(client, prefix, query);
    },

    async get(key: string): Promise<ProcessedRecord | undefined> {
      await ready();
      const keys = keysFor(prefix, key);
      const [now, stored, marker] = (await runScript(
        client,
        'get',
        'get',
        [keys.record, keys.markers, keys.legacyMarkers, keys.id],
        key,
      )) as [number, StoredRecord | null, Buffer | null];
      const record = stored ? decodeRecord(key, stored[0], stored[1]) : undefined;
      if (record !== undefined) return isExpired(record, Number(now)) ? undefined : record;
      if (marker !== null && markerExpiry(marker) > Number(now)) return decodeMarker(key, marker);
      return undefined;
    },

    async claimFingerprint(
      scope: string,
      fingerprint: string,
      key: string,
      windowMs: number,
    ): Promise<FingerprintClaim | undefined> {
      await ready();
      // One command: SET NX sets only when no live claim exists; GET answers the holder's key
      // (nil when this call set it). PX expires the claim on the server's clock.
      // A claim damaged by hand (another type at its name) is this key's CorruptRecordError.
      const held = await runCommand(
        client,
        'claimFingerprint',
        'SET',
        [
          fingerprintClaimKey(prefix, scope, fingerprint),
          key,
          'NX',
          'GET',
          'PX',
          // PX needs at least 1.
          String(Math.max(1, Number(ms(windowMs)))),
        ],
        key,
      );
      if (held === null || held === undefined || held === key) return undefined;
      return { firstKey: String(held) };
    },

    async releaseFingerprint(scope: string, fingerprint: string, key: string): Promise<void> {
      await ready();
      await runScript(client, 'releaseFingerprint', 'releaseFingerprint', [
        fingerprintClaimKey(prefix, scope, fingerprint),
        key,
      ]);
    },

    checkServer: gate.check,

    compactCompleted,
    collectBlobs,

    startMaintenance(maintenanceOptions: MaintenanceOptions): () => void {
      const loop = startMaintenance(
        {
          client,
          prefix,
          logger,
          compact: compactAfterMs === undefined ? undefined : compactCompleted,
          collectBlobs,
          collectOrphans: (blobs, orphans) => collectOrphanBlobs({ ...orphans, store, blobs }),
        },
        maintenanceOptions,
      );
      maintenance.add(loop);
      return () => {
        loop.stop();
        maintenance.delete(loop);
      };
    },

    async close(): Promise<void> {
      const loops = [...maintenance];
      maintenance.clear();
      for (const loop of loops) loop.stop();
      await Promise.all(loops.map((loop) => loop.settled()));
      gate.close();
      if (!options.closeClient) return;
      try {
        await client.quit();
      } catch (cause) {
        throw unavailable('close', cause);
      }
    },
  };
  return store;
}

type PipelineLike = Record<string, (...args: RedisArg[]) => unknown> & {
  exec(): Promise<[Error | null, unknown][] | null>;
};

/**
 * Runs completeMany and `WAIT` in one pipeline; throws (not acked) when fewer replicas than asked
 * acknowledged it. Returns the script's reply. In a cluster, ioredis sends a pipeline to the node
 * of its keyed commands, so WAIT runs on the connection that made the write.
 */
async function withWait(
  client: RedisClient,
  args: RedisArg[],
  wait: { replicas: number; timeoutMs: number },
): Promise<unknown> {
  let results: [Error | null, unknown][] | null;
  try {
    const pipeline = client.pipeline() as PipelineLike;
    pipeline[`${scripts.completeMany.command}Buffer`]?.(...args);
    pipeline.call?.('WAIT', wait.replicas, wait.timeoutMs);
    results = await pipeline.exec();
  } catch (cause) {
    throw unavailable('complete', cause);
  }
  const [written, waited] = results ?? [];
  if (written?.[0] || waited?.[0]) throw unavailable('complete', written?.[0] ?? waited?.[0]);
  // Nothing was written (every fence lost): no replica needs to have anything.
  const replies = Array.isArray(written?.[1]) ? (written?.[1] as unknown[]) : [written?.[1]];
  if (replies.every((r) => r !== 1)) return written?.[1];
  const acknowledged = Number(waited?.[1]);
  if (acknowledged < wait.replicas) {
    throw new StoreUnavailableError({
      operation: 'complete',
      message:
        `record completed on the primary, but only ${acknowledged} of ${wait.replicas} replicas ` +
        `acknowledged within ${wait.timeoutMs} ms; not acking, the redelivery will find it`,
    });
  }
  return written?.[1];
}

/** A record as the scripts answer it: the packed record and its extras hash (flat). */
type StoredRecord = [Buffer, Buffer[]];

/** A begin reply's payload: a fence (new), { leaseUntil } (batch busy), a stored record, or a marker. */
type BeginPayload = number | number[] | StoredRecord | Buffer;

/** Turns a begin script's code and payload into the contract's answer. */
function decodeBegin(
  request: BeginRequest,
  code: Buffer,
  now: number,
  payload: BeginPayload,
  leaseMs: number,
): BeginResult {
  const status = code.toString('latin1');
  if (status === 'N') {
    return {
      status: 'acquired',
      kind: 'new',
      fence: Number(payload),
      attempt: 1,
      // The script's lease end: its clock plus the lease as it was sent.
      leaseUntil: Number(now) + Number(ms(leaseMs)),
      steps: {},
    };
  }
  if (status === 'K') {
    return { status: 'duplicate', record: decodeMarker(request.key, payload as Buffer, request.fingerprint) };
  }
  if (status === 'X') return { status: 'mismatch', record: decodeMarker(request.key, payload as Buffer) };
  if (status === 'B' && typeof (payload as unknown[])[0] === 'number') {
    const leaseUntil = Number((payload as number[])[0]);
    return { status: 'busy', retryAfterMs: Math.min(leaseMs, Math.max(1, leaseUntil - Number(now))) };
  }
  const [packed, extras] = payload as StoredRecord;
  const record = decodeRecord(request.key, packed, extras);
  if (record === undefined) throw malformed('begin', status);
  switch (status) {
    case 'R':
    case 'T': {
      const held = record as InProgressRecord;
      return {
        status: 'acquired',
        kind: status === 'R' ? 'retry' : 'takeover',
        fence: held.fence,
        attempt: held.attempt,
        leaseUntil: held.leaseUntil,
        steps: held.steps,
      };
    }
    case 'B': {
      const busy = record as InProgressRecord;
      return { status: 'busy', record: busy, retryAfterMs: Math.max(1, busy.leaseUntil - Number(now)) };
    }
    case 'D':
      if (record.state === 'COMPLETED') {
        return { status: 'duplicate', record, completedAgoMs: Number(now) - record.completedAt };
      }
      break;
    case 'F':
      if (record.state === 'FAILED') return { status: 'failed', record };
      break;
    case 'M':
      return { status: 'mismatch', record };
  }
  throw malformed('begin', status);
}

/**
 * Runs `run` once per group of items with the same `group` key (concurrently), and answers in
 * the items' order. Within a group, items keep their order.
 */
async function inGroups<T, A>(
  operation: string,
  items: readonly T[],
  group: (item: T) => string,
  // A CorruptRecordError in place of an answer fails that item alone.
  run: (items: T[], group: string) => Promise<(A | CorruptRecordError)[]>,
): Promise<A[]> {
  const groups = new Map<string, number[]>();
  items.forEach((item, i) => {
    const k = group(item);
    const g = groups.get(k);
    if (g) g.push(i);
    else groups.set(k, [i]);
  });
  const answers = new Array<A>(items.length);
  const errors = new Map<number, unknown>();
  await Promise.all(
    [...groups].map(async ([name, indexes]) => {
      try {
        const replies = await run(
          indexes.map((i) => items[i] as T),
          name,
        );
        indexes.forEach((i, j) => {
          const reply = replies[j];
          if (reply instanceof CorruptRecordError) errors.set(i, reply);
          else answers[i] = reply as A;
        });
      } catch (error) {
        for (const i of indexes) errors.set(i, error);
      }
    }),
  );
  // Some nodes answered (a Cluster node down): their answers go back with the others' errors, so
  // their leases and writes are not lost.
  return batchAnswers(operation, answers, errors);
}

function duration(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value < 0) throw new ConfigError(`${name} must be a duration in ms >= 0`);
  return Math.ceil(value);
}

/**
 * Durations reach Lua as integers; a NaN, negative or huge one would corrupt deadlines (the
 * scripts keep times in 48-bit ms, markers in 32-bit seconds: a longer one wraps and reads as
 * passed, and a processed key would run again).
 */
function ms(value: number): string {
  if (!Number.isFinite(value) || value > MAX_DURATION_MS) {
    throw new ConfigError(`a lease or retention must be a number of ms up to 50 years (got ${value})`);
  }
  return String(Math.max(0, Math.ceil(value)));
}

function malformed(operation: string, status: string): StoreUnavailableError {
  return new StoreUnavailableError({ operation, message: `unexpected ${operation} reply "${status}"` });
}
