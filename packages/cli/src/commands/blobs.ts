/**
 * `blobs orphans --blob-dir <dir> | --gridfs-bucket <name>`: core's `collectOrphanBlobs` over a
 * blob store, against the processed-store the consumers use (`--redis`, `--redis-cluster`,
 * `--mongo`). `--dry-run` counts what it would delete.
 */
import { collectOrphanBlobs } from '@exactly-once/core';
import { UsageError } from '../errors.js';
import { formatSpan, type Io, printJson, printLines } from '../output.js';
import {
  type BlobStoreOptions,
  checkBlobStoreOptions,
  openBlobStore,
  openStore,
  type StoreOptions,
  storeError,
} from '../stores.js';

export interface OrphansOptions extends StoreOptions, BlobStoreOptions {
  readonly olderThanMs: number;
  readonly whenRecordGone: 'keep' | 'delete';
  readonly dryRun?: boolean;
  readonly json?: boolean;
}

export async function orphans(io: Io, options: OrphansOptions): Promise<void> {
  checkBlobStoreOptions(options, true);
  const opened = await openStore(options);
  try {
    const blobs = openBlobStore(options, opened);
    if (blobs === undefined) throw new UsageError('give the blob store: --blob-dir or --gridfs-bucket');
    const stats = await collectOrphanBlobs({
      store: opened.store,
      blobs,
      olderThanMs: options.olderThanMs,
      whenRecordGone: options.whenRecordGone,
      dryRun: options.dryRun === true,
    }).catch((error: unknown) => {
      throw storeError(error);
    });
    if (options.json) {
      printJson(io, { ...stats, dryRun: options.dryRun === true });
      return;
    }
    printLines(io, [
      `${stats.examined} blobs with an owner, stored over ${formatSpan(options.olderThanMs)} ago, looked up in ${opened.description}`,
      `${stats.deleted} ${options.dryRun ? 'would be deleted (dry run)' : 'deleted'}: their key's record is final and does not name them${
        options.whenRecordGone === 'delete' ? ', or is gone' : ''
      }`,
      ...(stats.abandonedUploads === undefined
        ? []
        : [`${stats.abandonedUploads} partial blobs of puts killed midway removed (untouched for 1 h)`]),
    ]);
  } finally {
    await opened.close();
  }
}
