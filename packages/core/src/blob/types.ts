/**
 * The blob-store contract for results too large to keep inline in a record. A blob is written
 * (and made durable) before any record points at it; the pointer carries the size and sha256 so
 * a reader detects corruption or truncation.
 */
import type { Readable } from 'node:stream';

/** Where a blob lives, and how to check it. */
export interface BlobPointer {
  /** Store-specific location, e.g. `fs:2f1c…` or `gridfs:65a…`. */
  readonly uri: string;
  /** Bytes. */
  readonly size: number;
  /** Lower-case hex sha256 of the content. */
  readonly sha256: string;
}

/**
 * What a blob is made from: bytes, or a stream read chunk by chunk (never buffered whole): a Node
 * `Readable` (a file, an HTTP body, a child process's stdout; in binary mode, not with
 * `setEncoding`), a web `ReadableStream`, or any async iterable of `Uint8Array` (e.g. an async
 * generator). A chunk that is not a `Uint8Array` fails the `put` with a TypeError.
 */
export type BlobSource = Uint8Array | Readable | AsyncIterable<Uint8Array>;

/** What a put may say about the blob besides its bytes. */
export interface BlobPutOptions {
  /**
   * The store key of the run that stores it (the pipeline passes it for every blob of a run), so
   * {@link collectOrphanBlobs} can ask that key's record whether it still names the blob.
   */
  readonly owner?: string;
}

/** A blob as {@link BlobStore.list} reports it. */
export interface ListedBlob {
  readonly uri: string;
  /** {@link BlobPutOptions.owner} as given to its put; undefined when none was. */
  readonly owner: string | undefined;
  /** When the put stored it (ms since epoch, the blob store's clock). */
  readonly storedAt: number;
}

export interface BlobStore {
  /** Stores the bytes durably and returns their pointer. Streams are never buffered whole. */
  put(source: BlobSource, options?: BlobPutOptions): Promise<BlobPointer>;
  /** Streams the content, throwing {@link BlobIntegrityError} at the end when size or hash differ. */
  stream(pointer: BlobPointer): AsyncIterable<Uint8Array>;
  /** Reads the whole content (verified). For results known to fit in memory. */
  get(pointer: BlobPointer): Promise<Uint8Array>;
  /**
   * Deletes the blob; deleting a missing blob is not an error. Only the pointer's `uri` is read.
   * Answers whether there was a blob to delete, for the collections' counts (a store that cannot
   * tell answers nothing: counted as deleted).
   */
  // biome-ignore lint/suspicious/noConfusingVoidType: stores written against Promise<void> still fit
  delete(pointer: Pick<BlobPointer, 'uri'>): Promise<boolean | void>;
  /**
   * Every blob stored (puts under way excluded), for {@link collectOrphanBlobs}. Optional: a
   * store without it has no orphan collection.
   */
  list?(): AsyncIterable<ListedBlob>;
  /**
   * Removes what puts killed midway left (never a blob `list` reports), once old enough for the
   * store to tell them from puts under way; resolves to how many. Optional: run by
   * {@link collectOrphanBlobs} after its pass.
   */
  removeAbandoned?(): Promise<number>;
}
