/**
 * Blob collection: a COMPLETED record whose result is a blob adds the blob's pointer to its tag's
 * blob index (`{<tag>}b`), scored with the record's physical end (expiry + grace). Once that time
 * has passed no record names the blob (pointers are unique per put: the fs and GridFS stores name
 * every blob afresh), so a pass deletes it and then its index entry. A pass that dies in between
 * deletes it again next time (deleting a missing blob is not an error).
 *
 * Only result pointers are indexed: blobs a handler stored with `ctx.storeBlob` and put inside a
 * JSON result or a journaled step are never collected here.
 */
import { type BlobStore, CorruptRecordError } from '@exactly-once/core';
import { deleteCollectedBlob } from '@exactly-once/core/spi';
import { type RedisClient, runCommand, runScript } from './client.js';
import { unpackResult } from './codec.js';
import { blobIndexKey, chunksByNode, staleSlotMap, TAG_COUNT } from './layout.js';

export interface BlobCollectionOptions {
  /** Index entries read per tag per call. Default 100. */
  readonly batchSize?: number;
  /**
   * Calls in parallel. A pass reads the indexes of all 65,536 tags, 256 tags of a node per call,
   * then works on the tags that have due entries. Default 32.
   */
  readonly concurrency?: number;
}

export interface BlobCollectionStats {
  /**
   * Blobs deleted from the blob store. One found gone already (deleted by `orphanBlobs`' pass, or
   * by a pass that died before dropping its index entry) is not counted, unless the blob store
   * cannot tell (its `delete` answers nothing).
   */
  readonly deleted: number;
  /** Tags whose blob index was damaged by hand (another type at its name): left as they are. */
  readonly damaged: number;
}

/**
 * Tags whose blob indexes one call reads, on their node: a pass over a store with few blobs makes
 * about 65,536 / 256 calls instead of one per tag.
 */
const TAGS_PER_CALL = 256;

export async function collectBlobPass(
  context: { client: RedisClient; prefix: string; blobs: BlobStore },
  options: BlobCollectionOptions = {},
): Promise<BlobCollectionStats> {
  const batchSize = Math.max(1, Math.floor(options.batchSize ?? 100));
  const concurrency = Math.max(1, Math.floor(options.concurrency ?? 32));
  const { client, prefix, blobs } = context;
  // Server time, as the scores were written with it.
  const [seconds, micros] = (await runCommand(client, 'collectBlobs', 'TIME', [])) as [string, string];
  const now = String(Number(seconds) * 1000 + Math.floor(Number(micros) / 1000));
  let deleted = 0;
  let damaged = 0;
  const tags = Array.from({ length: TAG_COUNT }, (_, tag) => tag);
  const chunks = chunksByNode(client, tags, (tag) => tag, TAGS_PER_CALL);
  let next = 0;
  // One worker's failure stops the others at their next step, and the pass answers only once all
  // have stopped: a caller that runs the next pass on a rejection never has two passes deleting.
  let failed = false;

  /** The due entries of one tag's index, read alone (as strings: the members are ASCII). */
  const dueOf = async (key: Buffer): Promise<string[]> =>
    (await runCommand(client, 'collectBlobs', 'ZRANGE', [
      key,
      '-inf',
      now,
      'BYSCORE',
      'LIMIT',
      '0',
      String(batchSize),
    ])) as string[];
  /** Deletes the blobs of `due` and their entries, then reads the tag again while batches are full. */
  const collectTag = async (key: Buffer, first: readonly (Buffer | string)[] | undefined): Promise<void> => {
    let due: readonly (Buffer | string)[] = first ?? (await dueOf(key));
    for (;;) {
      for (const member of due) {
        if (failed) return;
        // Members are pointers packed as ASCII JSON (`b[uri,size,sha256]`).
        const result = unpackResult(Buffer.from(member));
        // Not counted when already gone (an orphan pass, or a pass that died before the ZREM). A
        // pointer this blob store refuses to name (another store's, see the README) is taken for
        // one it cannot find: failing on it would stop every pass at this entry for good.
        if (result.kind === 'blob' && (await deleteCollectedBlob(blobs, result.pointer))) deleted++;
        await runCommand(client, 'collectBlobs', 'ZREM', [key, member]);
      }
      if (failed || due.length < batchSize) return;
      due = await dueOf(key);
    }
  };
  const worker = async () => {
    while (!failed && next < chunks.length) {
      const keys = (chunks[next++] as readonly number[]).map((tag) => blobIndexKey(prefix, tag));
      let lists: Buffer[][];
      try {
        lists = (await runScript(client, 'blobsDue', 'collectBlobs', [
          keys[0] as Buffer,
          now,
          String(batchSize),
          ...keys,
        ])) as Buffer[][];
      } catch (error) {
        // A tag of the chunk moved to another node, or one tag's index is damaged: a call per
        // tag, each routed by its own key; a damaged index is counted and left as it is.
        if (!staleSlotMap(client, error) && !(error instanceof CorruptRecordError)) throw error;
        for (const key of keys) {
          if (failed) break;
          try {
            await collectTag(key, undefined);
          } catch (tagError) {
            if (!(tagError instanceof CorruptRecordError)) throw tagError;
            damaged++;
          }
        }
        continue;
      }
      for (const [i, key] of keys.entries()) {
        const due = lists[i] as Buffer[];
        if (due.length > 0 && !failed) await collectTag(key, due);
      }
    }
  };
  const ends = await Promise.allSettled(
    Array.from({ length: concurrency }, () =>
      worker().catch((error: unknown) => {
        failed = true;
        throw error;
      }),
    ),
  );
  const rejected = ends.find((end) => end.status === 'rejected');
  if (rejected) throw rejected.reason;
  return { deleted, damaged };
}
