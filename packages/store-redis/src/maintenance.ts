/**
 * Background maintenance: a compaction pass (stores with `compactAfterMs`) and a blob collection
 * pass (when given the blob store; its orphans too with `orphanBlobs`), every `everyMs`. Every
 * worker of a deployment may start it: the workers take turns through one short-lived Redis key,
 * so each interval one pass runs, not one per worker (the passes are safe side by side, only
 * redundant).
 */
import { randomUUID } from 'node:crypto';
import {
  type BlobStore,
  ConfigError,
  type Logger,
  type OrphanBlobOptions,
  type OrphanBlobStats,
  toErrorInfo,
} from '@exactly-once/core';
import {
  collectingFailures,
  type OptionNames,
  type Repeating,
  refuseUnknownOptions,
  repeatEvery,
} from '@exactly-once/core/spi';
import type { BlobCollectionOptions, BlobCollectionStats } from './blob-collection.js';
import { type RedisClient, runCommand } from './client.js';
import type { CompactionOptions, CompactionStats } from './compaction.js';

export interface MaintenanceOptions {
  /**
   * How often each worker asks for a turn (ms, counted from the end of its last try), and how long
   * a turn it took is held from its start. A pass walks every tag of the store: seconds even on an
   * empty one, so minutes at least; hourly is typical.
   */
  readonly everyMs: number;
  /** The consumers' blob store: each pass also runs `collectBlobs(blobs)`. */
  readonly blobs?: BlobStore;
  readonly compaction?: CompactionOptions;
  readonly blobCollection?: BlobCollectionOptions;
  /**
   * With `blobs`: each pass also runs core's `collectOrphanBlobs` on this store and `blobs`, for
   * the blobs of runs killed before `complete` (see core's README, "Large results").
   */
  readonly orphanBlobs?: OrphanCollectionOptions;
  /** A pass that failed; the next interval runs anyway. Default: a warning to the store's logger. */
  readonly onError?: (error: unknown) => void;
  /** What each of this worker's turns did (for metrics). */
  readonly onPass?: (pass: MaintenancePass) => void;
}

/** core's `collectOrphanBlobs` options, the store and blob store being maintenance's own. */
export type OrphanCollectionOptions = Pick<OrphanBlobOptions, 'olderThanMs' | 'whenRecordGone'>;

/** One turn of a worker: its pass's figures, or `ran: false` when another worker had the interval. */
export type MaintenancePass =
  | {
      readonly ran: true;
      /** When the pass started (ms since epoch, this worker's clock) and how long it took. */
      readonly startedAt: number;
      readonly durationMs: number;
      readonly compaction?: CompactionStats;
      readonly blobs?: BlobCollectionStats;
      readonly orphanBlobs?: OrphanBlobStats;
    }
  | { readonly ran: false };

export interface MaintenanceContext {
  readonly client: RedisClient;
  readonly prefix: string;
  readonly logger: Logger;
  /** The store's compaction pass; undefined without `compactAfterMs`. */
  readonly compact: ((options?: CompactionOptions) => Promise<CompactionStats>) | undefined;
  readonly collectBlobs: (blobs: BlobStore, options?: BlobCollectionOptions) => Promise<BlobCollectionStats>;
  readonly collectOrphans: (blobs: BlobStore, options: OrphanCollectionOptions) => Promise<OrphanBlobStats>;
}

const MAINTENANCE_OPTIONS = {
  everyMs: true,
  blobs: true,
  compaction: true,
  blobCollection: true,
  orphanBlobs: true,
  onError: true,
  onPass: true,
} as const satisfies OptionNames<MaintenanceOptions>;

export function startMaintenance(context: MaintenanceContext, options: MaintenanceOptions): Repeating {
  const { client, prefix, logger, compact } = context;
  refuseUnknownOptions(options, MAINTENANCE_OPTIONS, 'startMaintenance');
  if (options.orphanBlobs !== undefined) {
    // A misspelt olderThanMs would delete orphan blobs without the age guard meant for them.
    refuseUnknownOptions(options.orphanBlobs, { olderThanMs: true, whenRecordGone: true }, 'orphanBlobs');
  }
  const { everyMs, blobs } = options;
  if (!(Number.isFinite(everyMs) && everyMs > 0)) {
    throw new ConfigError('startMaintenance needs everyMs > 0');
  }
  if (options.orphanBlobs !== undefined && blobs === undefined) {
    throw new ConfigError("startMaintenance: orphanBlobs needs blobs (the consumers' blob store)");
  }
  if (compact === undefined && blobs === undefined) {
    throw new ConfigError(
      'startMaintenance has nothing to do: the store has no compactAfterMs and no blobs were given',
    );
  }
  // The turn lasts one interval: whoever takes it runs the pass, the others skip until it lapses.
  const turnKey = `${prefix}:maintenance`;
  const me = randomUUID();
  const onError =
    options.onError ??
    ((error: unknown) => logger.warn('store maintenance pass failed', { error: toErrorInfo(error) }));

  const pass = async (): Promise<void> => {
    const taken = await runCommand(client, 'maintenance', 'SET', [
      turnKey,
      me,
      'NX',
      'PX',
      String(Math.ceil(everyMs)),
    ]);
    if (taken === null) {
      options.onPass?.({ ran: false });
      return;
    }
    // Each part runs even when the other failed; a failure is reported after both.
    const startedAt = Date.now();
    const { attempt, failures } = collectingFailures();
    const compaction = compact && (await attempt(() => compact(options.compaction)));
    const collected = blobs && (await attempt(() => context.collectBlobs(blobs, options.blobCollection)));
    const orphans = options.orphanBlobs;
    const orphaned = blobs && orphans && (await attempt(() => context.collectOrphans(blobs, orphans)));
    options.onPass?.({
      ran: true,
      startedAt,
      durationMs: Date.now() - startedAt,
      ...(compaction ? { compaction } : {}),
      ...(collected ? { blobs: collected } : {}),
      ...(orphaned ? { orphanBlobs: orphaned } : {}),
    });
    for (const error of failures) onError(error);
  };
  // The first ask at once: a worker restarted more often than everyMs (a crash loop, frequent
  // deploys, a sweeper of its own) would otherwise never run a pass. The turn key still allows
  // one pass per interval, however many workers start together.
  return repeatEvery(everyMs, pass, onError, { immediately: true });
}
