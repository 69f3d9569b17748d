/** Running the handler under its lease, and storing its result (inline, or as a blob first). */

import type { Readable } from 'node:stream';
import type { Context } from '@opentelemetry/api';
import { streamOf } from './blob/result-stream.js';
import type { BlobPointer, BlobStore } from './blob/types.js';
import { encodeResult } from './codec.js';
import type { Handler, HandlerContext } from './context.js';
import { ConfigError, readableThrown } from './errors.js';
import type { ResolvedProcessorOptions } from './options.js';
import { ATTR_EO_BLOB_SIZE } from './semconv.js';
import type { StoredResult } from './store/types.js';
import { inSpan, instrumentsFor, metricAttributes, withContext } from './tracing.js';
import { untilAborted } from './wait.js';

export type HandlerRun<R> = { ok: true; value: R | undefined } | { ok: false; error: unknown };

/**
 * One run's outcome, settled by the handler or, past `maxRunMs`, by the lease board; `ended`
 * (set by {@link startHandler}) resolves once the handler itself has returned or thrown, later than
 * `outcome` for a run given up.
 */
export function handlerRun<R>() {
  let settle!: (outcome: HandlerRun<R>) => void;
  const outcome = new Promise<HandlerRun<R>>((resolve) => {
    settle = resolve;
  });
  return { outcome, settle, ended: Promise.resolve() };
}

/**
 * Starts the handler under the lease; `run.outcome` settles with its end. A handler still running
 * after `maxRunMs` is abandoned (the lease board settles the run with a RunTimeoutError and aborts
 * its signal); its context is closed, and every store write it could still make is fenced. Answers
 * when it started (monotonic clock), for {@link recordHandlerDuration}. Not async: the caller
 * awaits `run.outcome` itself, one async frame fewer on every message's path.
 */
export function startHandler<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  payload: T,
  ctx: HandlerContext,
  runCtx: Context,
  run: ReturnType<typeof handlerRun<R>>,
): number {
  const started = performance.now();
  try {
    const value = withContext(runCtx, () => (o.handler as Handler<T, R>)(payload, ctx));
    run.ended = Promise.resolve(value).then(
      (v) => run.settle({ ok: true, value: v }),
      (error: unknown) => run.settle({ ok: false, error: readableThrown(error) }),
    );
  } catch (error) {
    run.settle({ ok: false, error: readableThrown(error) });
  }
  return started;
}

/** Records a handler's run time, from {@link startHandler}'s answer to its outcome. */
export function recordHandlerDuration(consumer: string, started: number): void {
  instrumentsFor().handlerDuration.record((performance.now() - started) / 1000, metricAttributes(consumer));
}

/**
 * Thrown by {@link storeResult} when the handler's result stream failed (or cannot be stored at
 * all): the pipeline treats `cause` as the handler's error, not as a store outage.
 */
export class ResultSourceFailure extends Error {
  override name = 'ResultSourceFailure';
  override readonly cause: unknown;
  constructor(cause: unknown) {
    const readable = readableThrown(cause);
    super('the handler result stream failed', { cause: readable });
    this.cause = readable;
  }
}

/**
 * Stores the handler's result: inline, or durable in the blob store first (then a promise).
 * `signal` (read only when a blob is written) aborts at `maxRunMs`: an upload still going then is
 * given up, so a stalled source or blob store cannot hold the message for ever. Throws
 * {@link ResultSourceFailure} (or rejects with it, for a stream).
 */
export function storeResult<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  ctx: Context,
  owner: string,
  result: R | undefined,
  signal: () => AbortSignal,
): StoredResult | undefined | Promise<StoredResult> {
  const stream = streamOf(result);
  if (stream !== undefined) return storeResultStream(o, ctx, owner, stream, signal());
  let bytes: Uint8Array | undefined;
  try {
    bytes = encodeResult(result, "the handler's result");
  } catch (error) {
    // The handler's own doing (a BigInt, a cycle): it fails the message, it is no store outage.
    throw new ResultSourceFailure(error);
  }
  if (!bytes) return undefined;
  // Inline (most results): answered at once, not through a promise.
  if (!o.blobs || bytes.byteLength <= o.inlineResultBytes) return { kind: 'inline', data: bytes };
  return storeResultBlob(o.blobs, ctx, owner, bytes, signal);
}

async function storeResultBlob(
  blobs: BlobStore,
  ctx: Context,
  owner: string,
  bytes: Uint8Array,
  signal: () => AbortSignal,
): Promise<StoredResult> {
  // The blob is durable before any record points at it.
  const pointer = await inSpan(
    'exactly-once blob put',
    ctx,
    { 'exactly_once.blob.size': bytes.byteLength },
    () => putUnlessAborted(blobs, bytes, owner, signal()),
  );
  return { kind: 'blob', pointer };
}

/** Streams the handler's result into the blob store, chunk by chunk: never held whole. */
async function storeResultStream<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  ctx: Context,
  owner: string,
  source: Readable | AsyncIterable<Uint8Array>,
  signal: AbortSignal,
): Promise<StoredResult> {
  const blobs = o.blobs;
  if (!blobs) {
    destroy(source);
    throw new ResultSourceFailure(
      new ConfigError('a streamed handler result needs a blob store: pass `blobs` to the options'),
    );
  }
  let failed: { error: unknown } | undefined;
  async function* tracked(): AsyncGenerator<Uint8Array> {
    try {
      for await (const chunk of source) {
        if (!(chunk instanceof Uint8Array)) {
          throw new TypeError('a result stream must yield Uint8Array chunks (a Readable in binary mode)');
        }
        yield chunk;
      }
    } catch (error) {
      failed = { error };
      throw error;
    }
  }
  try {
    // The blob is durable before any record points at it.
    const pointer = await inSpan('exactly-once blob put', ctx, {}, async (span) => {
      const p = await putUnlessAborted(blobs, tracked(), owner, signal);
      span.setAttribute(ATTR_EO_BLOB_SIZE, p.size);
      return p;
    });
    return { kind: 'blob', pointer, raw: true };
  } catch (error) {
    if (failed) throw new ResultSourceFailure(failed.error);
    // Given up at maxRunMs: the source stalled (or the blob store did), a failure of the run.
    if (signal.aborted) throw new ResultSourceFailure(error);
    throw error;
  } finally {
    // A put that failed before (or while) reading leaves the source open: close it.
    destroy(source);
  }
}

/** A put given up when `signal` aborts; if it lands later, its blob is deleted (nothing names it). */
async function putUnlessAborted(
  blobs: BlobStore,
  data: Uint8Array | AsyncIterable<Uint8Array>,
  owner: string,
  signal: AbortSignal,
): Promise<BlobPointer> {
  const put = blobs.put(data, { owner });
  try {
    return await untilAborted(put, signal);
  } catch (error) {
    if (signal.aborted) put.then((pointer) => blobs.delete(pointer)).catch(() => {});
    throw error;
  }
}

function destroy(source: unknown): void {
  const d = (source as { destroy?: unknown }).destroy;
  if (typeof d === 'function' && !(source as { destroyed?: boolean }).destroyed) d.call(source);
}
