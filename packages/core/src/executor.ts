/**
 * Idempotent execution outside a consumer: an HTTP endpoint (`POST /orders` with an
 * `Idempotency-Key` header), a scheduled job, a first service that publishes. The same pipeline
 * as a consumer's, driven by a request instead of a delivery: one run per key, the stored result
 * for every replay, outgoing messages published after the record is durable.
 */
import { randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import { context } from '@opentelemetry/api';
import type { ResultStream } from './blob/result-stream.js';
import type { BlobPointer } from './blob/types.js';
import { decodeResult, encodeValue } from './codec.js';
import type { Handler } from './context.js';
import {
  ClosedError,
  ConfigError,
  ErrorCode,
  type ErrorInfo,
  ExactlyOnceError,
  toErrorInfo,
  UnencodableValueError,
} from './errors.js';
import { Headers } from './headers.js';
import { normalizeKey, normalizeRequestId, tooDeep } from './keys.js';
import { type OptionNames, refuseUnknownOptions } from './option-names.js';
import type { ProcessorOptions } from './options.js';
import { REQUEST_SYSTEM, unreadable } from './prepare.js';
import { buildProcessor, keysGivenBack } from './processor.js';
import type { StandardSchemaV1 } from './schema.js';
import type { StoreHealth } from './store/health.js';
import type { StoredResult } from './store/types.js';
import { injectContext } from './tracing.js';
import { settledWithin } from './wait.js';

/** Another request with the same key is running; answer e.g. 409 with `Retry-After`. */
export class RequestInProgressError extends ExactlyOnceError {
  override name = 'RequestInProgressError';
  constructor(readonly retryAfterMs: number) {
    super(ErrorCode.InProgress, 'a request with this idempotency key is in progress', true);
  }
}

/**
 * The run did not complete. `outcome` says why: `mismatch` (the key was used with another
 * payload: answer 422), `failed` (failed permanently, now or earlier), `retryable` (the client may
 * retry with the same key, best after `retryAfterMs`: answer e.g. 503 with `Retry-After`). `info`
 * is the underlying error.
 */
export class ExecutionFailedError extends ExactlyOnceError {
  override name = 'ExecutionFailedError';
  constructor(
    readonly outcome: 'mismatch' | 'failed' | 'retryable',
    readonly info: ErrorInfo,
    /**
     * With `retryable`: the wait the `retry` policy asks before the next attempt (or before the
     * store is asked again). Not enforced: a call with the key before it runs the next attempt
     * at once, and uses up `retry.maxAttempts` sooner.
     */
    readonly retryAfterMs?: number,
    /**
     * What the handler threw, when this call ran it (its own error class and fields, for mapping
     * to a response); absent when the failure was answered from the store or came before the run.
     */
    cause?: unknown,
  ) {
    super(ErrorCode.ExecutionFailed, `${info.name}: ${info.message}`, outcome === 'retryable', { cause });
  }
}

/**
 * `In`: what {@link IdempotentExecutor.execute} takes as `payload`. Without a `schema` it is what
 * the handler gets (`T`); with one, the schema's input (a field it defaults may be left out),
 * while the handler gets its output.
 */
export type ExecutorOptions<T, R, In = T> = Omit<
  ProcessorOptions<T, R>,
  'handler' | 'decode' | 'missingKey' | 'schema'
> & {
  /** As the processor's `schema`; `execute` then takes its input type. */
  schema?: StandardSchemaV1<In, T>;
};

export interface ExecuteRequest<T> {
  /**
   * The client's idempotency key, as the request carried it: absent or empty is refused as
   * `KEY_MISSING` (so a header that was not sent can be passed as it is).
   */
  key: string | undefined;
  payload: T;
  /** Defaults to the key: a first hop's request id is its key. */
  requestId?: string;
}

/** The names an {@link ExecuteRequest} may carry (others are refused). */
const EXECUTE_REQUEST = {
  key: true,
  payload: true,
  requestId: true,
} as const satisfies OptionNames<ExecuteRequest<unknown>>;

/**
 * The result as `execute` hands it back. A handler that returned a stream (`resultStream(...)`, a
 * `Readable` or an async iterable of bytes) gets a `Readable` of the stored bytes, on the first call
 * and on every replay alike (the handler's own stream was consumed into the blob store); it
 * verifies size and sha256 as it goes and fails with `BlobIntegrityError` at the end if they
 * differ. Any other result comes back decoded from its stored JSON.
 */
export type ExecutedResult<R> = R extends ResultStream | Readable | AsyncIterable<Uint8Array> ? Readable : R;

export interface ExecuteResult<R> {
  /** `completed`: this call ran the handler; `duplicate`: the stored result of an earlier run. */
  readonly status: 'completed' | 'duplicate';
  readonly result: ExecutedResult<R> | undefined;
  /**
   * Where a result stored by reference lives (streamed results, and results over
   * `inlineResultBytes`): to serve or redirect to it without reading it through this process.
   */
  readonly pointer?: BlobPointer;
  /**
   * A duplicate answered by a compacted record (the store's compaction, see store-redis): the key
   * was processed, but its result is no longer kept, so `result` and `pointer` are absent. Answer
   * such a request without the original response (e.g. 409 or a "done" body), or do not compact
   * the keys of requests whose response must be replayed.
   */
  readonly compacted?: true;
  /**
   * The request id as this run recorded and passed on (`x-request-id` of its outgoing messages):
   * the one given, or the key, in `sha256:<hex>` form when over 255 bytes.
   */
  readonly requestId: string;
}

export interface IdempotentExecutor<T, R, In = T> {
  /**
   * Runs `handler` once per key. Throws {@link RequestInProgressError} while another run holds
   * the key, and {@link ExecutionFailedError} when the key was reused with another payload or the
   * run failed.
   */
  execute(request: ExecuteRequest<In>, handler: Handler<T, R>): Promise<ExecuteResult<R>>;
  /** Since when the store has not answered this executor's calls (a liveness probe's input). */
  storeHealth(): StoreHealth;
  /**
   * Refuses new calls (`retryable`, `CLOSED`), lets the calls in flight answer within
   * `timeoutMs` (default 10 s), then aborts `ctx.signal` of the handlers still running: a call
   * whose handler then fails, or whose store writes are still being tried (an outage), answers
   * `retryable` (`CLOSED`) and gives its key back uncounted, so the key's next call runs at once.
   * Resolves once that is done (2 s more at most: a handler deaf to its signal keeps its lease).
   * Close the store after it, not before: a call still running tries its writes until `maxRunMs`.
   * Safe to call twice.
   */
  stop(options?: { timeoutMs?: number }): Promise<void>;
}

/** What a call refused or cut by stop() answers: ask again, here after a restart or elsewhere. */
const STOPPED = toErrorInfo(
  new ClosedError('the executor', 'the executor is stopping: call again with the same key'),
);
const STOPPED_RETRY_AFTER_MS = 1_000;

/**
 * @example
 * ```ts
 * const orders = createIdempotentExecutor<OrderRequest, OrderResponse>({ consumer: 'orders-api', store, publisher });
 * const { result, status } = await orders.execute({ key: req.header('Idempotency-Key'), payload: body },
 *   async (order, ctx) => { ctx.publish('orders', order); return { orderId: ctx.keyFor('order') }; });
 * ```
 */
export function createIdempotentExecutor<T = unknown, R = unknown, In = T>(
  options: ExecutorOptions<T, R, In>,
): IdempotentExecutor<T, R, In> {
  // One processor per executor; the handler of the current call travels with the payload (as
  // given: the pipeline's schema, if any, turns it into the handler's).
  type Envelope = { payload: In; handler: Handler<T, R>; thrown?: unknown };
  const envelopes = new Map<string, Envelope>();
  const processor = buildProcessor<T, R>(
    {
      ...options,
      spanKind: options.spanKind ?? 'internal',
      // The payload as given; with a schema, the schema's input (it runs next and gives `T`).
      decode: (_body, delivery) => {
        const id = delivery.brokerId as string;
        return (envelopes.get(id) as Envelope).payload as unknown as T;
      },
      handler: async (payload, ctx) => {
        const envelope = envelopes.get(ctx.headers['x-eo-call'] as string) as Envelope;
        try {
          return await envelope.handler(payload, ctx);
        } catch (error) {
          // The pipeline keeps only its ErrorInfo; the caller gets the error itself as `cause`.
          envelope.thrown = error;
          throw error;
        }
      },
    },
    { waitForOwnRuns: false, duringOutage: 'requests are answered as retryable (STORE_UNAVAILABLE)' },
  );
  const blobs = options.blobs;

  const readResult = async (stored: StoredResult | undefined): Promise<ExecutedResult<R> | undefined> => {
    if (!stored) return undefined;
    if (stored.kind === 'inline') return decodeResult<ExecutedResult<R>>(stored.data);
    if (!blobs) throw new ConfigError('the stored result is a blob but the executor has no blob store');
    // A streamed result is read as it is sent on, never held whole.
    if (stored.raw)
      return Readable.from(blobs.stream(stored.pointer), { objectMode: false }) as ExecutedResult<R>;
    return decodeResult<ExecutedResult<R>>(await blobs.get(stored.pointer));
  };

  // The calls in flight, for stop() to wait for.
  const calls = new Set<Promise<unknown>>();
  let stopping: Promise<void> | undefined;
  const stop = async (timeoutMs: number): Promise<void> => {
    if (!(await settledWithin(calls, timeoutMs))) {
      const reason = new ClosedError('the executor', 'the executor stopped before this call ended');
      const cut = processor.abortRuns(reason);
      if (cut > 0) {
        processor.options.logger.warn(
          'stopping with calls still running after timeoutMs; they answer retryable',
          {
            consumer: options.consumer,
            calls: cut,
          },
        );
      }
    }
    // Also the keys of begins answered after their deadline (given back unrun).
    await keysGivenBack(processor, Promise.allSettled(calls));
  };

  const executor: IdempotentExecutor<T, R, In> = {
    storeHealth: () => processor.storeHealth(),
    stop: ({ timeoutMs = 10_000 } = {}) => {
      stopping ??= stop(timeoutMs);
      return stopping;
    },
    execute(request, handler) {
      // Checked before anything is stored: a run that cannot start must not use up an attempt.
      if (typeof handler !== 'function')
        return Promise.reject(new ConfigError('execute needs a handler function'));
      if (stopping !== undefined) {
        return Promise.reject(new ExecutionFailedError('retryable', STOPPED, STOPPED_RETRY_AFTER_MS));
      }
      const answer = run(request, handler);
      calls.add(answer);
      const forget = () => calls.delete(answer);
      answer.then(forget, forget);
      return answer;
    },
  };
  return executor;

  async function run(request: ExecuteRequest<In>, handler: Handler<T, R>): Promise<ExecuteResult<R>> {
    refuseUnknownOptions(request, EXECUTE_REQUEST, 'execute request');
    const call = randomUUID();
    const envelope: Envelope = { payload: request.payload, handler };
    envelopes.set(call, envelope);
    const requestId = request.requestId ?? request.key;
    // No key: no header, which the pipeline refuses as KEY_MISSING like a delivery without one.
    const headers: Record<string, string> = {
      ...(request.key === undefined ? {} : { [Headers.IdempotencyKey]: request.key }),
      ...(requestId === undefined ? {} : { [Headers.RequestId]: requestId }),
      'x-eo-call': call,
    };
    injectContext(context.active(), headers);
    try {
      const d = await processor.process({
        body: requestBody(request.payload),
        headers,
        destination: options.consumer,
        system: REQUEST_SYSTEM,
        brokerId: call,
      });
      switch (d.action) {
        case 'ack':
          return {
            status: d.outcome === 'duplicate' ? 'duplicate' : 'completed',
            result: await readResult(d.result),
            ...(d.result?.kind === 'blob' ? { pointer: d.result.pointer } : {}),
            ...(d.compacted ? { compacted: true } : {}),
            // As the pipeline read it (an empty one counts as absent); both passed its checks.
            // (A completed or duplicate call had a key.)
            requestId: requestId ? normalizeRequestId(requestId) : normalizeKey(request.key as string),
          };
        case 'defer':
          if (d.outcome === 'busy') throw new RequestInProgressError(d.delayMs);
          // Given back unrun or cut short by stop(): the key's next call runs it.
          if (d.outcome === 'not-run') {
            throw new ExecutionFailedError('retryable', STOPPED, STOPPED_RETRY_AFTER_MS, envelope.thrown);
          }
          throw new ExecutionFailedError(
            'retryable',
            d.error ?? { name: 'Error', code: 'ERROR', message: d.outcome },
            d.delayMs,
            envelope.thrown,
          );
        case 'retry':
          throw new ExecutionFailedError('retryable', d.error, d.delayMs, envelope.thrown);
        case 'dead-letter':
          // Completed, but its outgoing messages were not confirmed: the same key again is
          // answered as a duplicate and publishes them. Never "failed": the effect happened.
          if (d.outcome === 'publish-failed') throw new ExecutionFailedError('retryable', d.reason.error);
          throw new ExecutionFailedError(
            d.outcome === 'mismatch' ? 'mismatch' : 'failed',
            d.reason.error,
            undefined,
            envelope.thrown,
          );
      }
    } finally {
      envelopes.delete(call);
    }
  }
}

/**
 * The payload as the bytes the pipeline reads. One nested so deep that encoding it overflows the
 * stack is refused as the pipeline refuses one past MAX_PAYLOAD_DEPTH (MALFORMED_MESSAGE), not as
 * a value JSON cannot hold: it is the client's request that is wrong.
 */
function requestBody(payload: unknown): Uint8Array {
  try {
    return encodeValue(payload, 'the request payload').bytes;
  } catch (error) {
    if (!(error instanceof UnencodableValueError && error.cause instanceof RangeError)) throw error;
    throw new ExecutionFailedError('failed', toErrorInfo(unreadable(tooDeep())));
  }
}
