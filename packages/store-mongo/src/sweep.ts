/**
 * The expiry sweeper: deletes records past their retention where the server has no TTL index
 * (FerretDB 1.x), and deletes their blobs, which no TTL index would.
 *
 * Order matters for blobs: a blob must never disappear while a live record points at it, while an
 * orphaned blob is only wasted space. So each blob-carrying record is deleted on its own, with a
 * filter that still requires it to be the same incarnation (fence) and still expired, and its blob
 * is deleted only if that delete removed it.
 */
import type { BlobPointer, BlobStore } from '@exactly-once/core';
import type { Collection, WriteConcernSettings } from 'mongodb';
import type { StoreClock } from './clock.js';
import type { RecordDoc } from './codec.js';
import { guarded } from './driver.js';

export interface SweepResult {
  /** Records deleted. */
  readonly deleted: number;
  /** Blobs deleted (each after its record). */
  readonly blobsDeleted: number;
}

export interface SweepContext {
  readonly collection: Collection<RecordDoc>;
  readonly clock: StoreClock;
  readonly write: { readonly writeConcern: WriteConcernSettings };
  readonly blobs?: BlobStore;
  readonly batchSize: number;
}

export async function sweepExpired(context: SweepContext): Promise<SweepResult> {
  const { collection, clock, write, blobs, batchSize } = context;
  let deleted = 0;
  let blobsDeleted = 0;
  for (;;) {
    const now = await guarded('sweep', () => clock.now());
    const cutoff = new Date(now);
    // Only COMPLETED and FAILED records carry `e`.
    const expired = await guarded('sweep', () =>
      collection
        .find({ e: { $lte: cutoff } }, { projection: { _id: 1, n: 1, b: 1 }, limit: batchSize })
        .toArray(),
    );
    let progress = 0;

    const withoutBlob = expired.filter((doc) => blobs === undefined || doc.b === undefined).map((d) => d._id);
    if (withoutBlob.length > 0) {
      const result = await guarded('sweep', () =>
        collection.deleteMany({ _id: { $in: withoutBlob }, e: { $lte: cutoff } }, write),
      );
      progress += result.deletedCount;
    }

    for (const doc of expired) {
      if (blobs === undefined || doc.b === undefined) continue;
      const pointer: BlobPointer = { uri: doc.b.u, size: doc.b.z, sha256: doc.b.h };
      const result = await guarded('sweep', () =>
        collection.deleteOne({ _id: doc._id, n: doc.n, e: { $lte: cutoff } }, write),
      );
      if (result.deletedCount !== 1) continue;
      progress += 1;
      await blobs.delete(pointer);
      blobsDeleted += 1;
    }

    deleted += progress;
    // A short batch was the last one; a batch that deleted nothing (all revived meanwhile) too.
    if (expired.length < batchSize || progress === 0) break;
  }
  return { deleted, blobsDeleted };
}
