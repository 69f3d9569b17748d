/**
 * A {@link BlobStore} on GridFS: a blob is a `<bucket>.files` document and its 255 KiB chunks in
 * `<bucket>.chunks`. Pointers are `gridfs:<24 hex digits of the file id>`.
 */
import { createHash } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import {
  BlobIntegrityError,
  type BlobPointer,
  type BlobPutOptions,
  type BlobSource,
  type BlobStore,
  type ListedBlob,
  StoreUnavailableError,
} from '@exactly-once/core';
import {
  abandonedAfterMsOf,
  type OptionNames,
  refuseUnknownOptions,
  sweepFromPuts,
} from '@exactly-once/core/spi';
import {
  Binary,
  type Collection,
  type Db,
  type Document,
  GridFSBucket,
  MongoError,
  ObjectId,
  type WriteConcernSettings,
} from 'mongodb';

export interface GridFsBlobStoreOptions {
  readonly db: Db;
  /** GridFS bucket (collection prefix). Default `eo_blobs`. */
  readonly bucketName?: string;
  /** Default 255 KiB, GridFS's own default: a chunk document stays well under 16 MiB. */
  readonly chunkSizeBytes?: number;
  /** Write concern of chunks and files documents. Default `{ w: 'majority' }`. */
  readonly writeConcern?: WriteConcernSettings;
  /**
   * Chunks without a files document whose last chunk is older than this belong to a put whose
   * process died (SIGKILL, power loss): puts remove them, looking at most once per this period.
   * Keep it above the longest pause between two chunks of a streamed result (a put whose chunks
   * were removed stores a blob that fails its reads, and the duplicate that reads it is
   * dead-lettered). @defaultValue 3_600_000 (1 h)
   */
  readonly abandonedAfterMs?: number;
}

export interface GridFsBlobStore extends BlobStore {
  /**
   * Removes the chunks of dead puts now (see `abandonedAfterMs`); resolves to how many uploads.
   * Each process looks at an upload once it is old enough, and not again.
   */
  removeAbandoned(): Promise<number>;
  list(): AsyncIterable<ListedBlob>;
}

export const DEFAULT_BUCKET = 'eo_blobs';
/** Uploads looked at per query when removing abandoned ones. */
const ABANDONED_PAGE = 500;
const URI_PATTERN = /^gridfs:([0-9a-f]{24})$/;
const SHA256_PATTERN = /^[0-9a-f]{64}$/;

/**
 * Creates a GridFS blob store. `put` streams the source into GridFS, hashing and counting on the
 * way, with the stream's backpressure: memory holds one chunk, not the blob. GridFS writes the
 * files document after the last chunk, so a partial upload never has a files document (and `put`
 * never returned a pointer to it); a failed upload removes its chunks. Reads fetch 16 chunks (about
 * 4 MiB) per query, so memory holds a window, not the blob; they check size and sha256
 * against the pointer and fail with {@link BlobIntegrityError} on any difference, a missing file
 * or a missing or mis-sized chunk. Driver failures surface as StoreUnavailableError (retryable).
 */
export function createGridFsBlobStore(options: GridFsBlobStoreOptions): GridFsBlobStore {
  refuseUnknownOptions(options, {
    db: true,
    bucketName: true,
    chunkSizeBytes: true,
    writeConcern: true,
    abandonedAfterMs: true,
  } satisfies OptionNames<GridFsBlobStoreOptions>);
  const bucketName = options.bucketName ?? DEFAULT_BUCKET;
  const abandonedAfterMs = abandonedAfterMsOf(options.abandonedAfterMs);
  const writeConcern = options.writeConcern ?? { w: 'majority' };
  const bucket = new GridFSBucket(options.db, {
    bucketName,
    chunkSizeBytes: options.chunkSizeBytes ?? 255 * 1024,
    writeConcern,
  });
  const files = options.db.collection<Document>(`${bucketName}.files`);
  const chunks = options.db.collection<Document>(`${bucketName}.chunks`);

  const stream = (pointer: BlobPointer): AsyncIterable<Uint8Array> => {
    // Validate now rather than on first iteration, so a bad pointer fails where it is passed.
    const id = idOf(pointer);
    checkPointer(pointer);
    return verified(files, chunks, id, pointer);
  };

  // Upload ids are ObjectIds made when the upload opens, so they order uploads by start time.
  // Every upload up to `settledUpTo` was found complete or removed by this process.
  let settledUpTo: ObjectId | undefined;
  const removeAbandoned = async (): Promise<number> => {
    const cutoffMs = Date.now() - abandonedAfterMs;
    const cutoff = ObjectId.createFromTime(Math.floor(cutoffMs / 1000));
    let removed = 0;
    let after = settledUpTo;
    // Once an upload may still be streaming, the next pass starts again before it.
    let open = false;
    try {
      for (;;) {
        const range = after === undefined ? { $lt: cutoff } : { $gt: after, $lt: cutoff };
        const page = await chunks
          .find(
            { files_id: range, n: 0 },
            { projection: { files_id: 1 }, sort: { files_id: 1 }, limit: ABANDONED_PAGE },
          )
          .toArray();
        if (page.length === 0) break;
        const ids = page.map((doc) => doc.files_id as ObjectId);
        const complete = new Set(
          (await files.find({ _id: { $in: ids } }, { projection: { _id: 1 } }).toArray()).map((doc) =>
            String(doc._id),
          ),
        );
        for (const id of ids) {
          if (!complete.has(String(id))) {
            // No files document: a dead put, or one still streaming. Chunk ids are made as each
            // chunk is written, so the last one says when the upload last moved.
            const last = await chunks.findOne({ files_id: id }, { sort: { n: -1 }, projection: { _id: 1 } });
            if (last !== null && (last._id as ObjectId).getTimestamp().getTime() >= cutoffMs) {
              open = true;
            } else {
              await chunks.deleteMany({ files_id: id }, { writeConcern });
              removed++;
            }
          }
          if (!open) settledUpTo = id;
        }
        after = ids[ids.length - 1];
        if (page.length < ABANDONED_PAGE) break;
      }
    } catch (error) {
      throw new StoreUnavailableError({ operation: 'blob.removeAbandoned', cause: error });
    }
    return removed;
  };
  const sweep = sweepFromPuts(abandonedAfterMs, removeAbandoned);

  return {
    async put(source: BlobSource, putOptions?: BlobPutOptions): Promise<BlobPointer> {
      sweep();
      // The files document (written last) carries the owner: a listed blob always has it.
      const owner = putOptions?.owner;
      const upload = bucket.openUploadStream('eo-blob', owner === undefined ? {} : { metadata: { owner } });
      const hash = createHash('sha256');
      let size = 0;
      async function* hashed(): AsyncGenerator<Buffer> {
        for await (const chunk of source instanceof Uint8Array ? [source] : source) {
          if (!(chunk instanceof Uint8Array)) throw new TypeError('blob source must yield Uint8Array chunks');
          hash.update(chunk);
          size += chunk.byteLength;
          // Copied: the stream may queue the chunk while the source reuses its buffer.
          yield Buffer.from(chunk);
        }
      }
      try {
        // pipeline waits on the stream's backpressure and resolves on 'finish', which GridFS emits
        // after the files document is written.
        await pipeline(hashed(), upload);
      } catch (error) {
        await upload.abort().catch(() => undefined);
        throw error instanceof MongoError
          ? new StoreUnavailableError({ operation: 'blob.put', cause: error })
          : error;
      }
      return { uri: `gridfs:${upload.id.toHexString()}`, size, sha256: hash.digest('hex') };
    },

    stream,
    removeAbandoned,

    async get(pointer: BlobPointer): Promise<Uint8Array> {
      const parts: Uint8Array[] = [];
      let size = 0;
      for await (const part of stream(pointer)) {
        parts.push(part);
        size += part.byteLength;
      }
      // Allocated only now: a corrupt pointer's `size` never decides how much memory is taken.
      const out = new Uint8Array(size);
      let offset = 0;
      for (const part of parts) {
        out.set(part, offset);
        offset += part.byteLength;
      }
      return out;
    },

    async *list(): AsyncGenerator<ListedBlob> {
      let after: ObjectId | undefined;
      for (;;) {
        let page: Document[];
        try {
          page = await files
            .find(after === undefined ? {} : { _id: { $gt: after } }, {
              projection: { _id: 1, uploadDate: 1, metadata: 1 },
              sort: { _id: 1 },
              limit: LIST_PAGE,
            })
            .toArray();
        } catch (error) {
          throw new StoreUnavailableError({ operation: 'blob.list', cause: error });
        }
        for (const doc of page) {
          const id = doc._id;
          if (!(id instanceof ObjectId)) continue; // not one of this store's uploads
          const owner: unknown = (doc.metadata as { owner?: unknown } | undefined)?.owner;
          const uploaded: unknown = doc.uploadDate;
          yield {
            uri: `gridfs:${id.toHexString()}`,
            owner: typeof owner === 'string' ? owner : undefined,
            storedAt: uploaded instanceof Date ? uploaded.getTime() : id.getTimestamp().getTime(),
          };
        }
        if (page.length < LIST_PAGE) return;
        after = page[page.length - 1]?._id as ObjectId;
      }
    },

    async delete(pointer: Pick<BlobPointer, 'uri'>): Promise<boolean> {
      const id = idOf(pointer);
      try {
        // The files document first: a reader then finds no file, never a file with chunks missing.
        const { deletedCount } = await files.deleteOne({ _id: id }, { writeConcern });
        await chunks.deleteMany({ files_id: id }, { writeConcern });
        return deletedCount > 0;
      } catch (error) {
        throw new StoreUnavailableError({ operation: 'blob.delete', cause: error });
      }
    },
  };
}

/** Files documents read per query by `list`. */
const LIST_PAGE = 500;

/** Chunks fetched per query on a read: memory holds one window (about 4 MiB), not a server batch. */
const READ_WINDOW_CHUNKS = 16;

/**
 * Reads the blob window by window (one bounded query per {@link READ_WINDOW_CHUNKS} chunks, not
 * the driver's download stream, whose cursor takes the server's default 16 MiB batches), checking
 * that every chunk is there, in order and of the size the files document implies, then the size
 * and sha256 against the pointer.
 */
async function* verified(
  files: Collection<Document>,
  chunks: Collection<Document>,
  id: ObjectId,
  pointer: BlobPointer,
): AsyncGenerator<Uint8Array> {
  const hash = createHash('sha256');
  let size = 0;
  try {
    const file = await files.findOne({ _id: id });
    if (file === null) throw new BlobIntegrityError(`blob ${pointer.uri} does not exist`);
    const length = Number(file.length);
    const chunkSize = Number(file.chunkSize);
    if (length !== pointer.size) {
      throw new BlobIntegrityError(`blob ${pointer.uri} has ${length} bytes, ${pointer.size} recorded`);
    }
    if (!(chunkSize > 0)) throw new BlobIntegrityError(`blob ${pointer.uri} has an invalid chunk size`);
    const count = Math.ceil(length / chunkSize);
    for (let from = 0; from < count; from += READ_WINDOW_CHUNKS) {
      const to = Math.min(count, from + READ_WINDOW_CHUNKS);
      const cursor = chunks
        .find({ files_id: id, n: { $gte: from, $lt: to } }, { batchSize: READ_WINDOW_CHUNKS })
        .sort({ n: 1 });
      let n = from;
      for await (const doc of cursor) {
        if (doc.n !== n)
          throw new BlobIntegrityError(`blob ${pointer.uri} is corrupt: chunk ${n} is missing`);
        const data = doc.data instanceof Binary ? doc.data.value() : undefined;
        const expected = n === count - 1 ? length - n * chunkSize : chunkSize;
        if (data === undefined || data.byteLength !== expected) {
          throw new BlobIntegrityError(
            `blob ${pointer.uri} is corrupt: chunk ${n} has ${data?.byteLength} bytes, ${expected} expected`,
          );
        }
        size += data.byteLength;
        hash.update(data);
        n++;
        yield data;
      }
      if (n !== to) throw new BlobIntegrityError(`blob ${pointer.uri} is corrupt: chunk ${n} is missing`);
    }
  } catch (error) {
    throw readError(pointer, error);
  }
  if (size !== pointer.size) {
    throw new BlobIntegrityError(`blob ${pointer.uri} has ${size} bytes, ${pointer.size} recorded`);
  }
  const digest = hash.digest('hex');
  if (digest !== pointer.sha256) {
    throw new BlobIntegrityError(`blob ${pointer.uri} has sha256 ${digest}, ${pointer.sha256} recorded`);
  }
}

function readError(pointer: BlobPointer, error: unknown): unknown {
  if (error instanceof BlobIntegrityError) return error;
  // Kept for errors of the driver's own GridFS streams: "file not found" carries code ENOENT.
  if ((error as { code?: unknown })?.code === 'ENOENT') {
    return new BlobIntegrityError(`blob ${pointer.uri} does not exist`);
  }
  if (error instanceof MongoError)
    return new StoreUnavailableError({ operation: 'blob.stream', cause: error });
  return error;
}

function idOf(pointer: Pick<BlobPointer, 'uri'>): ObjectId {
  const uri: unknown = pointer?.uri;
  const hex = typeof uri === 'string' ? URI_PATTERN.exec(uri)?.[1] : undefined;
  if (hex === undefined) {
    throw new BlobIntegrityError(
      `not a GridFS blob pointer: ${JSON.stringify(uri)?.slice(0, 100)} (expected gridfs:<24 hex digits>)`,
    );
  }
  return ObjectId.createFromHexString(hex);
}

function checkPointer(pointer: BlobPointer): void {
  if (!Number.isSafeInteger(pointer.size) || pointer.size < 0) {
    throw new BlobIntegrityError(`blob ${pointer.uri} has an invalid recorded size: ${String(pointer.size)}`);
  }
  if (typeof pointer.sha256 !== 'string' || !SHA256_PATTERN.test(pointer.sha256)) {
    throw new BlobIntegrityError(`blob ${pointer.uri} has an invalid recorded sha256`);
  }
}
