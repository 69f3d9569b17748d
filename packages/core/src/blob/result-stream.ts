/**
 * A handler result too large to hold in memory, returned as a stream: the pipeline writes it to
 * the blob store chunk by chunk while the lease is heartbeated, and the record keeps only the
 * pointer (`{ kind: 'blob', pointer }`), which every duplicate is answered with.
 */
import { Readable } from 'node:stream';
import type { BlobSource } from './types.js';

const RESULT_STREAM: unique symbol = Symbol.for('@exactly-once/core.result-stream');

/** A handler result to be stored as a blob from a stream; made by {@link resultStream}. */
export interface ResultStream {
  readonly [RESULT_STREAM]: true;
  readonly source: Readable | AsyncIterable<Uint8Array>;
}

/**
 * Marks a stream as the handler's result. The pipeline stores its bytes as they are (not JSON) in
 * the blob store as they arrive, whatever their size (`inlineResultBytes` does not apply). A
 * source that fails mid-way fails the run like a handler error (retried if retryable). A handler may also return a `Readable` (or any async iterable of
 * `Uint8Array`) directly; the marker makes the intent explicit and types the handler's result.
 *
 * @example
 * ```ts
 * handler: async (job) => resultStream(createReadStream(await render(job)))
 * // the ack disposition (and every duplicate's) carries { kind: 'blob', pointer }
 * ```
 */
export function resultStream(source: Readable | AsyncIterable<Uint8Array>): ResultStream {
  if (!isAsyncIterable(source)) throw new TypeError('resultStream needs a Readable or an async iterable');
  return Object.freeze({ [RESULT_STREAM]: true as const, source });
}

/** The stream a handler result stands for, or undefined for an ordinary (JSON) result. */
export function streamOf(value: unknown): Exclude<BlobSource, Uint8Array> | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  if ((value as Partial<ResultStream>)[RESULT_STREAM] === true) return (value as ResultStream).source;
  // A stream would JSON-encode as `{}`: returning one can only mean its bytes are the result.
  if (value instanceof Readable || isAsyncIterable(value)) return value as AsyncIterable<Uint8Array>;
  return undefined;
}

function isAsyncIterable(value: unknown): value is AsyncIterable<unknown> {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as { [Symbol.asyncIterator]?: unknown })[Symbol.asyncIterator] === 'function'
  );
}
