/** The handler's view of one run: keys, lease, journaled steps and buffered outgoing messages. */
export type { StepEvent, StepOptions, StepReconcileInfo, StepReconcileResult } from './steps.js';

import { type Context, propagation, type Span, SpanKind, trace } from '@opentelemetry/api';
import type { BlobPointer, BlobSource, BlobStore } from './blob/types.js';
import { encodeValue } from './codec.js';
import { ClosedError, ConfigError } from './errors.js';
import { Headers } from './headers.js';
import { deriveChildKey } from './keys.js';
import type { Logger } from './logger.js';
import { ATTR_EO_STEP, ATTR_MESSAGING_DESTINATION_NAME, BAGGAGE_REQUEST_ID } from './semconv.js';
import { runStep, type StepEvent, type StepOptions, type StepRunArgs } from './steps.js';
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
   * attempt (retry or takeover) gets the journaled result without running `fn` again. A step
   * interrupted between its effect and the journal write runs again, unless `reconcile` says the
   * effect happened; see {@link StepOptions} for retries, give-up and alerts.
   */
  step<S>(name: string, fn: (signal: AbortSignal) => Promise<S> | S, options?: StepOptions<S>): Promise<S>;
  /**
   * Stores large content in the blob store and returns its pointer for the result: bytes, a Node
   * `Readable` (binary mode) or any async iterable of `Uint8Array`, read chunk by chunk, never
   * buffered whole. To make a stream the result itself, return `resultStream(source)`.
   */
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
  /** The processor's `onStepEvent` hook. */
  onStepEvent?: ((event: StepEvent) => void) | undefined;
  logger?: Logger;
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

  const stepArgs: StepRunArgs = {
    storeKey: args.storeKey,
    messageKey: args.key,
    consumer: args.consumer,
    attempt: args.attempt,
    fence: args.fence,
    store: args.store,
    signal: args.signal,
    keyFor,
    onStepEvent: args.onStepEvent,
    logger: args.logger,
    open: () => open('ctx.step'),
    journal(encoded) {
      const entry = Buffer.from(encoded);
      journal.push(entry);
      return () => {
        const at = journal.indexOf(entry);
        if (at >= 0) journal.splice(at, 1);
      };
    },
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
      const journaled = Object.hasOwn(args.steps, name) ? args.steps[name] : undefined;
      return inSpan(`step ${name}`, args.otelContext, { [ATTR_EO_STEP]: name }, (span) =>
        runStep(stepArgs, name, fn, options, journaled, span),
      );
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

export { sleep } from './steps.js';
