/**
 * The rule every store's collection follows when a record that named a blob is gone: delete the
 * blob, and treat a pointer the blob store refuses as a blob already gone.
 */
import { BlobIntegrityError } from '../errors.js';
import type { BlobPointer, BlobStore } from './types.js';

/**
 * Deletes the blob a collected record named; answers whether there was one to delete (a store
 * that cannot tell counts as deleted). A pointer `blobs` refuses with a BlobIntegrityError
 * (another store's, e.g. `gridfs:` given to the filesystem store after a move, or a malformed
 * one) answers `false`: failing there would fail every pass at the same record, and nothing
 * after it would ever be collected. Any other error (the blob store is down) is thrown.
 */
export async function deleteCollectedBlob(
  blobs: BlobStore,
  pointer: Pick<BlobPointer, 'uri'>,
): Promise<boolean> {
  try {
    return (await blobs.delete(pointer)) !== false;
  } catch (error) {
    if (error instanceof BlobIntegrityError) return false;
    throw error;
  }
}
