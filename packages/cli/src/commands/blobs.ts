/**
 * `blobs orphans --blob-dir <dir> | --gridfs-bucket <name>`: core's `collectOrphanBlobs` over a
 * blob store, against the processed-store the consumers use (`--redis`, `--redis-cluster`,
 * `--mongo`). `--dry-run` counts what it would delete.
 */
import { type BlobStore, collectOrphanBlobs, createFsBlobStore } from '@exactly-once/core';
import { UsageError } from '../errors.js';
import { type Io, printJson, printLines } from '../output.js';
import { openStore, type StoreOptions, storeError } from '../stores.js';

export interface OrphansOptions extends StoreOptions {
  readonly blobDir?: string;
  readonly gridfsBucket?: string;
  readonly olderThanMs: number;
  readonly whenRecordGone: 'keep' | 'delete';
  readonly dryRun?: boolean;
  readonly json?: boolean;
}

export async function orphans(io: Io, options: OrphansOptions): Promise<void> {
  if ((options.blobDir === undefined) === (options.gridfsBucket === undefined)) {
    throw new UsageError(
      'give the blob store: --blob-dir <directory> or --gridfs-bucket <name> (with --mongo)',
    );
  }
  if (options.gridfsBucket !== undefined && !options.mongo) {
    throw new UsageError('--gridfs-bucket reads the GridFS bucket of the --mongo store: give --mongo');
  }
  const opened = await openStore(options);
  try {
    const blobs: BlobStore | undefined =
      options.blobDir !== undefined
        ? createFsBlobStore({ directory: options.blobDir })
        : opened.gridFs?.(options.gridfsBucket as string);
    if (blobs === undefined) throw new UsageError('--gridfs-bucket needs the --mongo store');
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
      `${stats.examined} blobs with an owner, stored over ${Math.round(options.olderThanMs / 60_000)} min ago, looked up in ${opened.description}`,
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
