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
import type { BlobStore } from '@exactly-once/core';
import { type RedisClient, runCommand } from './client.js';
import { unpackResult } from './codec.js';
import { blobIndexKey, TAG_COUNT } from './layout.js';

export interface BlobCollectionOptions {
  /** Index entries read per tag per call. Default 100. */
  readonly batchSize?: number;
  /** Tags worked on in parallel (a pass visits all 65,536). Default 32. */
  readonly concurrency?: number;
}

export interface BlobCollectionStats {
  /** Blobs deleted from the blob store. */
  readonly deleted: number;
}

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
  let next = 0;
  // One worker's failure stops the others at their next step, and the pass answers only once all
  // have stopped: a caller that runs the next pass on a rejection never has two passes deleting.
  let failed = false;
  const worker = async () => {
    while (!failed && next < TAG_COUNT) {
      const key = blobIndexKey(prefix, next++);
      while (!failed) {
        // Members are pointers packed as ASCII JSON (`b[uri,size,sha256]`): strings round-trip them.
        const due = (await runCommand(client, 'collectBlobs', 'ZRANGE', [
          key,
          '-inf',
          now,
          'BYSCORE',
          'LIMIT',
          '0',
          String(batchSize),
        ])) as string[];
        for (const member of due) {
          if (failed) return;
          const result = unpackResult(Buffer.from(member));
          if (result.kind === 'blob') {
            await blobs.delete(result.pointer);
            deleted++;
          }
          await runCommand(client, 'collectBlobs', 'ZREM', [key, member]);
        }
        if (due.length < batchSize) break;
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
  return { deleted };
}
