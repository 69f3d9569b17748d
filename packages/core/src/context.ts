/** The handler's view of one run: keys, lease, journaled steps and buffered outgoing messages. */
import { type Context, propagation, type Span, SpanKind, trace } from '@opentelemetry/api';
import type { BlobPointer, BlobSource, BlobStore } from './blob/types.js';
import { decodeResult, encodeResult, encodeValue } from './codec.js';
import { ClosedError, ConfigError, isRetryable, LeaseLostError } from './errors.js';
import { Headers } from './headers.js';
import { deriveChildKey } from './keys.js';
import { type RetryPolicyOptions, resolveRetryPolicy, retryDelayMs } from './retry.js';
import {
  ATTR_EO_STEP,
  ATTR_EO_STEP_REPLAYED,
  ATTR_MESSAGING_DESTINATION_NAME,
  BAGGAGE_REQUEST_ID,
} from './semconv.js';
import type { AcquireKind, OutgoingMessage, ProcessedStore, StepRecord } from './store/types.js';
import { injectContext, inSpan, tracer } from './tracing.js';

export interface PublishOptions {
  /**
   * Names this message within the run; the child idempotency key derives from it, so a re-run
   * publishes the same key. @defaultValue the publish index (`#0`, `#1`, ...)
   */
  name?: string;
  /** Routing key (RabbitMQ) or partition key (Kafka). */
  routingKey?: string;
  /** Extra headers; the SDK's own (`x-request-id`, `x-idempotency-key`, trace) always win. */
  headers?: Readonly<Record<string, string>>;
}

export interface StepOptions {
  /** In-process retries of the step's function before the error reaches the handler. */
  retry?: RetryPolicyOptions;
}

/** What a handler receives besides the payload. */
export interface HandlerContext {
  /** The message's idempotency key (unscoped, as the producer set it or as derived). */
  readonly key: string;
  /** The end-to-end request id (`x-request-id`), or the key on a first hop. */
  readonly requestId: string;
  /** 1 on the first attempt; grows with retries and takeovers. */
  readonly attempt: number;
  /** Fencing token of this run's lease. */
  readonly fence: number;
  /** How this run got the lease. `takeover`: an earlier run may have had effects; use `keyFor`/`step`. */
  readonly acquiredAs: AcquireKind;
  readonly consumer: string;
  /** Text headers of the delivery. */
  readonly headers: Readonly<Record<string, string>>;
  /** Aborts when the lease is lost: stop work, nothing this run does can complete any more. */
  readonly signal: AbortSignal;
  /** The run's `process` span. */
  readonly span: Span;
  /**
   * A stable key for an effect on another system, e.g. a payment API's `Idempotency-Key`: the
   * same on every attempt of this message, different for each `name`.
   */
  keyFor(name: string): string;
  /**
   * Records a message to publish after the record is COMPLETED (in the same write), with a
   * derived child key and the request id and trace context propagated.
   */
  publish(destination: string, message: unknown, options?: PublishOptions): void;
  /**
   * Runs `fn` once per message: its JSON result is journaled under the record, and a later
   * attempt (retry or takeover) gets the journaled result without running `fn` again.
   */
  step<S>(name: string, fn: (signal: AbortSignal) => Promise<S> | S, options?: StepOptions): Promise<S>;
  /** Stores large content (streamed) in the blob store and returns its pointer for the result. */
  storeBlob(source: BlobSource): Promise<BlobPointer>;
}

export type Handler<T = unknown, R = unknown> = (payload: T, ctx: HandlerContext) => Promise<R> | R;

export interface RunState {
  readonly ctx: HandlerContext;
  readonly outgoing: OutgoingMessage[];
  /** Blobs written during the run, to delete if the run does not complete (see `isJournaled`). */
  readonly blobs: BlobPointer[];
  /**
   * Whether a journaled step (replayed, or saved by this run unless the store said `lost`) may
   * hold this pointer. Steps outlive the run (release, takeover), so their blobs must too.
   */
  isJournaled(pointer: BlobPointer): boolean;
  /** Ends the run: `publish`, `step` and `storeBlob` throw from now on. */
  close(): void;
}

export function createRunContext(args: {
  key: string;
  storeKey: string;
  requestId: string;
  attempt: number;
  fence: number;
  kind: AcquireKind;
  namespace: string;
  consumer: string;
  headers: Readonly<Record<string, string>>;
  /** The run's abort signal, made on first use (most handlers never read it). */
  signal: () => AbortSignal;
  span: Span;
  otelContext: Context;
  steps: Readonly<Record<string, StepRecord>>;
  store: ProcessedStore;
  blobStore: BlobStore | undefined;
  canPublish: boolean;
}): RunState {
  const outgoing: OutgoingMessage[] = [];
  const blobs: BlobPointer[] = [];
  const stepNames = new Set<string>();
  const publishNames = new Set<string>();
  // Encoded step results that may be journaled: replayed ones, and this run's unless `lost`.
  const journal: Buffer[] = Object.values(args.steps).map((s) => Buffer.from(s.result));
  let closed = false;
  const open = (what: string) => {
    if (closed) {
      throw new ClosedError(
        'run context',
        `${what} called after the handler returned: the run is over and nothing it does is recorded`,
      );
    }
  };
  const keyFor = (name: string) => {
    if (typeof name !== 'string' || name.length === 0)
      throw new ConfigError('keyFor(name) needs a non-empty name');
    return deriveChildKey(args.namespace, args.consumer, name, args.key);
  };

  const ctx: HandlerContext = {
    key: args.key,
    requestId: args.requestId,
    attempt: args.attempt,
    fence: args.fence,
    acquiredAs: args.kind,
    consumer: args.consumer,
    headers: args.headers,
    get signal() {
      return args.signal();
    },
    span: args.span,
    keyFor,
    publish(destination, message, options = {}) {
      open('ctx.publish');
      if (!args.canPublish) {
        throw new ConfigError('ctx.publish needs a publisher: pass `publisher` to the consumer options');
      }
      const name = options.name ?? `#${outgoing.length}`;
      if (publishNames.has(name)) throw new ConfigError(`publish name "${name}" used twice in one run`);
      publishNames.add(name);
      const childKey = keyFor(`publish:${name}`);
      const { bytes, contentType } = encodeValue(message);
      // A `create` span per message gives each one its own creation context (messaging
      // conventions); the later `send` links to it.
      const create = tracer().startSpan(
        `create ${destination}`,
        { kind: SpanKind.PRODUCER, attributes: { [ATTR_MESSAGING_DESTINATION_NAME]: destination } },
        args.otelContext,
      );
      const bag = (propagation.getBaggage(args.otelContext) ?? propagation.createBaggage()).setEntry(
        BAGGAGE_REQUEST_ID,
        { value: args.requestId },
      );
      const carrier: Record<string, string> = {};
      injectContext(propagation.setBaggage(trace.setSpan(args.otelContext, create), bag), carrier);
      create.end();
      outgoing.push({
        id: childKey,
        destination,
        ...(options.routingKey === undefined ? {} : { routingKey: options.routingKey }),
        body: bytes,
        headers: {
          'content-type': contentType,
          ...options.headers,
          ...carrier,
          [Headers.RequestId]: args.requestId,
          [Headers.IdempotencyKey]: childKey,
        },
      });
    },
    async step(name, fn, options = {}) {
      open('ctx.step');
      if (stepNames.has(name)) throw new ConfigError(`step name "${name}" used twice in one run`);
      stepNames.add(name);
      const journaled = args.steps[name];
      return inSpan(`step ${name}`, args.otelContext, { [ATTR_EO_STEP]: name }, async (span) => {
        if (journaled) {
          span.setAttribute(ATTR_EO_STEP_REPLAYED, true);
          return decodeResult(journaled.result);
        }
        span.setAttribute(ATTR_EO_STEP_REPLAYED, false);
        const value = await runWithRetry(fn, options.retry, args.signal());
        const encoded = (encodeResult(value) ?? encodeResult(null)) as Uint8Array;
        open('ctx.step');
        // Counted as journaled before the write: if the answer never arrives, it may have landed.
        const entry = Buffer.from(encoded);
        journal.push(entry);
        const saved = await args.store.saveStep(args.storeKey, args.fence, name, encoded);
        if (saved === 'lost') {
          journal.splice(journal.indexOf(entry), 1);
          throw new LeaseLostError({ key: args.storeKey, fence: args.fence });
        }
        // Return what a replay would return, so both paths see the same value.
        return decodeResult(encoded);
      });
    },
    async storeBlob(source) {
      open('ctx.storeBlob');
      if (!args.blobStore)
        throw new ConfigError('ctx.storeBlob needs a blob store: pass `blobs` to the options');
      const pointer = await args.blobStore.put(source);
      blobs.push(pointer);
      return pointer;
    },
  };
  return {
    ctx,
    outgoing,
    blobs,
    // A pointer is found by its uri in the step's JSON, wherever the handler put it.
    isJournaled: (pointer) => journal.some((bytes) => bytes.includes(pointer.uri)),
    close() {
      closed = true;
    },
  };
}

async function runWithRetry<S>(
  fn: (signal: AbortSignal) => Promise<S> | S,
  retry: RetryPolicyOptions | undefined,
  signal: AbortSignal,
): Promise<S> {
  const policy = resolveRetryPolicy(retry ?? { maxAttempts: 1 }, 'step.retry');
  for (let attempt = 1; ; attempt++) {
    signal.throwIfAborted();
    try {
      return await fn(signal);
    } catch (error) {
      if (!isRetryable(error) || attempt >= policy.maxAttempts) throw error;
      await sleep(retryDelayMs(policy, attempt), signal);
    }
  }
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
