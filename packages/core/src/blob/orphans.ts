/**
 * Orphan blobs: blobs a run stored and no record names, because the run died between the put and
 * its `complete` (SIGKILL, power loss) or a later attempt completed the key with other blobs. The
 * stores' blob collection never sees them (it follows the records); this pass follows the blobs.
 *
 * Every blob the pipeline stores carries its run's store key (`owner`). A blob is deleted only
 * when that key's record is final and does not name it: COMPLETED without the blob's uri in its
 * result (inline bytes, or the content of a result blob) or in its outgoing messages, or FAILED.
 * A final record never comes to name a blob it does not name already (only the run holding the
 * key's lease completes it, with the blobs it stored). Everything else is kept: an IN_PROGRESS
 * key (its run, or a journaled step, may name the blob), a key this store does not hold (absent,
 * expired: the stores' blob collection deals with result blobs of expired records) unless
 * `whenRecordGone` says so, a blob with no owner, one younger than `olderThanMs`, and any blob
 * whose owner's result blob could not be read.
 */
import type { ProcessedRecord, ProcessedStore } from '../store/types.js';
import type { BlobPointer, BlobStore } from './types.js';

export interface OrphanBlobOptions {
  /** The processed-store whose runs stored the blobs (the same one the consumers use). */
  readonly store: ProcessedStore;
  /** A blob store with `list` (the fs and GridFS stores have it). */
  readonly blobs: BlobStore;
  /** Blobs stored more recently than this are not looked at. @defaultValue 3_600_000 (1 h) */
  readonly olderThanMs?: number;
  /**
   * A blob whose key has no record in `store` (expired, cleared, or never this store's): `'keep'`
   * it, or `'delete'` it. Choose `'delete'` only when this blob store serves this processed-store
   * alone: then the `ctx.storeBlob` blobs named inside results go too once their records expired,
   * which nothing else collects. @defaultValue 'keep'
   */
  readonly whenRecordGone?: 'keep' | 'delete';
  /** Count what would be deleted, delete nothing. */
  readonly dryRun?: boolean;
  /** Stops the pass between two blobs. */
  readonly signal?: AbortSignal;
}

export interface OrphanBlobStats {
  /** Blobs listed old enough and with an owner. */
  readonly examined: number;
  /** Blobs deleted (with `dryRun`: to delete): their owner's record is final and does not name them. */
  readonly deleted: number;
  /**
   * Partial puts removed after the pass (the blob store's `removeAbandoned`, when it has one; not
   * with `dryRun`): temporary files, or GridFS chunks without their files document, older than
   * the blob store's `abandonedAfterMs`.
   */
  readonly abandonedUploads?: number;
}

/**
 * One pass over the blob store (see the module comment for what is deleted). Run it on a schedule
 * more often than `retentionMs`: once a key's record has expired, its orphans are no longer
 * recognised as such and stay.
 */
export async function collectOrphanBlobs(options: OrphanBlobOptions): Promise<OrphanBlobStats> {
  const { store, blobs, signal } = options;
  if (!blobs.list) throw new TypeError('collectOrphanBlobs needs a blob store with list()');
  const before = Date.now() - (options.olderThanMs ?? 3_600_000);
  let examined = 0;
  let deleted = 0;
  for await (const blob of blobs.list()) {
    signal?.throwIfAborted();
    if (blob.owner === undefined || blob.storedAt > before) continue;
    examined++;
    const record = await store.get(blob.owner);
    if (record === undefined ? options.whenRecordGone !== 'delete' : await names(record, blob.uri, blobs))
      continue;
    if (!options.dryRun) await blobs.delete(blob);
    deleted++;
  }
  // The other leftover of a killed run: its put's partial bytes, which `list` never reports.
  if (options.dryRun || blobs.removeAbandoned === undefined) return { examined, deleted };
  return { examined, deleted, abandonedUploads: await blobs.removeAbandoned() };
}

/** Whether `record` may still name the blob `uri`; true when that cannot be read for sure. */
async function names(record: ProcessedRecord, uri: string, blobs: BlobStore): Promise<boolean> {
  if (record.state === 'IN_PROGRESS') return true;
  if (record.state === 'FAILED') return false;
  const needle = Buffer.from(uri);
  for (const message of record.outgoing) {
    if (Buffer.from(message.body).includes(needle)) return true;
    if (Object.values(message.headers).some((value) => value.includes(uri))) return true;
  }
  const result = record.result;
  if (result === undefined) return false;
  if (result.kind === 'inline') return Buffer.from(result.data).includes(needle);
  if (result.pointer.uri === uri) return true;
  // A large JSON result may hold pointers the handler stored with ctx.storeBlob.
  return contains(blobs, result.pointer, needle).catch(() => true);
}

/** Whether the blob's bytes contain `needle`, read chunk by chunk (a match may span two). */
async function contains(blobs: BlobStore, pointer: BlobPointer, needle: Buffer): Promise<boolean> {
  let tail = Buffer.alloc(0);
  for await (const chunk of blobs.stream(pointer)) {
    const window = Buffer.concat([tail, chunk]);
    if (window.includes(needle)) return true;
    tail = window.subarray(Math.max(0, window.length - needle.length + 1));
  }
  return false;
}
