/** The handler's view of one run: keys, lease, journaled steps and buffered outgoing messages. */
export type { StepEvent, StepOptions, StepReconcileInfo, StepReconcileResult } from './steps.js';

import { type Context, propagation, type Span, SpanKind, trace } from '@opentelemetry/api';
import type { BlobPointer, BlobSource, BlobStore } from './blob/types.js';
import { encodeValue } from './codec.js';
import { ClosedError, ConfigError } from './errors.js';
import { Headers, textHeaders } from './headers.js';
import { deriveChildKey } from './keys.js';
import type { LeaseKeeper } from './lease-keeper.js';
import type { Logger } from './logger.js';
import { type OptionNames, refuseUnknownOptions } from './option-names.js';
import { ATTR_EO_STEP, ATTR_MESSAGING_DESTINATION_NAME, BAGGAGE_REQUEST_ID } from './semconv.js';
import type { Delivery } from './spi.js';
import { insideStep, runStep, type StepEvent, type StepOptions, type StepRunArgs } from './steps.js';
import type { AcquireKind, OutgoingMessage, ProcessedStore, StepRecord } from './store/types.js';
import { injectContext, inSpan, passTraceOn, tracer } from './tracing.js';

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

const PUBLISH_OPTIONS = {
  name: true,
  routingKey: true,
  headers: true,
} as const satisfies OptionNames<PublishOptions>;
const STEP_OPTIONS = {
  retry: true,
  reconcile: true,
  onGiveUp: true,
  fallback: true,
  alertAfter: true,
} as const satisfies OptionNames<StepOptions>;

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
  /**
   * Where this copy came from, for logs and audits: its queue or topic, the broker's id for the
   * message (see `Delivery.brokerId`) and its `messaging.*` attributes (Kafka partition and offset,
   * RabbitMQ routing key, delivery tag and redelivered flag). It differs between copies of one
   * message: never key an effect on it (use `keyFor`).
   */
  readonly delivery: DeliveryInfo;
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

/** A delivery as a handler sees it: everything but the body, which it has decoded. */
export type DeliveryInfo = Readonly<Pick<Delivery, 'destination' | 'system' | 'brokerId' | 'attributes'>>;

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
  /**
   * Settles once the steps still running have ended (their `fn` and journal write), or undefined
   * when none is: a handler that failed may have left one running beside it.
   */
  stepsRunning(): Promise<void> | undefined;
}

/** What a run uses of its lease keeper: steps only (the processor keeps the rest). */
export type RunLease = Pick<LeaseKeeper, 'signal' | 'writeUntilAnswered' | 'confirm'>;

export interface RunArgs {
  key: string;
  storeKey: string;
  requestId: string;
  attempt: number;
  fence: number;
  kind: AcquireKind;
  namespace: string;
  consumer: string;
  /** The delivery; its headers' text form is made on first read of `ctx.headers`. */
  delivery: Delivery;
  /**
   * The run's lease keeper: its abort signal (made on first read: most handlers never read it),
   * how a step's journal write is tried, and the check before a step runs its effect.
   */
  lease: RunLease;
  span: Span;
  otelContext: Context;
  steps: Readonly<Record<string, StepRecord>>;
  store: ProcessedStore;
  blobStore: BlobStore | undefined;
  canPublish: boolean;
  /** The processor's `onStepEvent` hook. */
  onStepEvent?: ((event: StepEvent) => void) | undefined;
  logger?: Logger;
}

/**
 * A name with an unpaired UTF-16 surrogate (a string cut by `slice` in the middle of an emoji)
 * travels as UTF-8 with U+FFFD in its place: the stores would journal its step under another name
 * (the retry misses it and runs it again), and two such names would derive one child key.
 */
function checkWellFormed(name: string, what: string): void {
  if (!name.isWellFormed()) {
    throw new ConfigError(
      `${what}: ${JSON.stringify(name)} contains an unpaired UTF-16 surrogate, which no store or hash keeps apart from U+FFFD`,
    );
  }
}

export function createRunContext(args: RunArgs): RunState {
  return new Run(args);
}

/**
 * One run's state. Most runs publish nothing, run no step and store no blob: everything those
 * need (name sets, the step journal, the methods' closures) is made on first use, so a plain run
 * allocates a few objects, not dozens.
 */
class Run implements RunState {
  readonly ctx: HandlerContext;
  readonly outgoing: OutgoingMessage[] = [];
  readonly blobs: BlobPointer[] = [];
  closed = false;
  private stepNames: Set<string> | undefined;
  private publishNames: Set<string> | undefined;
  // Encoded step results that may be journaled: replayed ones, and this run's unless `lost`.
  private journalEntries: Buffer[] | undefined;
  private stepArgs: StepRunArgs | undefined;
  private running: Set<Promise<unknown>> | undefined;

  constructor(readonly args: RunArgs) {
    this.ctx = new RunHandlerContext(this);
  }

  open(what: string): void {
    if (this.closed) {
      throw new ClosedError(
        'run context',
        `${what} called after the handler returned: the run is over and nothing it does is recorded`,
      );
    }
  }

  keyFor(name: string): string {
    if (typeof name !== 'string' || name.length === 0)
      throw new ConfigError('keyFor(name) needs a non-empty name');
    checkWellFormed(name, 'keyFor(name)');
    return deriveChildKey(this.args.namespace, this.args.consumer, name, this.args.key);
  }

  private journal(): Buffer[] {
    this.journalEntries ??= Object.values(this.args.steps).map((s) => Buffer.from(s.result));
    return this.journalEntries;
  }

  // A pointer is found by its uri in the step's JSON, wherever the handler put it.
  isJournaled(pointer: BlobPointer): boolean {
    return this.journal().some((bytes) => bytes.includes(pointer.uri));
  }

  close(): void {
    this.closed = true;
  }

  stepsRunning(): Promise<void> | undefined {
    if (this.running === undefined || this.running.size === 0) return undefined;
    return Promise.allSettled(this.running).then(() => undefined);
  }

  publish(destination: string, message: unknown, options: PublishOptions = {}): void {
    const args = this.args;
    this.open('ctx.publish');
    refuseUnknownOptions(options, PUBLISH_OPTIONS, 'ctx.publish options');
    if (insideStep(this.stepArgs)) {
      // A step that ran is replayed from its journaled result without running `fn`: a message
      // published inside it would be sent by the attempt that ran it and lost by the others.
      throw new ConfigError(
        "ctx.publish inside a step's fn: a replayed step does not run fn, so the message would be lost; publish after the step, from its result",
      );
    }
    if (!args.canPublish) {
      throw new ConfigError('ctx.publish needs a publisher: pass `publisher` to the consumer options');
    }
    const name = options.name ?? `#${this.outgoing.length}`;
    this.publishNames ??= new Set();
    if (this.publishNames.has(name)) throw new ConfigError(`publish name "${name}" used twice in one run`);
    this.publishNames.add(name);
    const childKey = this.keyFor(`publish:${name}`);
    const { bytes, contentType } = encodeValue(message, `a message to ${destination}`);
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
    if (carrier[Headers.Traceparent] === undefined) passTraceOn(args.delivery.headers, carrier);
    create.end();
    this.outgoing.push({
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
  }

  async step<S>(
    name: string,
    fn: (signal: AbortSignal) => Promise<S> | S,
    options: StepOptions<S> = {},
  ): Promise<S> {
    const args = this.args;
    this.open('ctx.step');
    // A misspelt `reconcile` would run an in-doubt step again without asking: refused.
    refuseUnknownOptions(options, STEP_OPTIONS, 'ctx.step options');
    if (typeof name !== 'string') throw new ConfigError('ctx.step(name) needs a string name');
    checkWellFormed(name, 'ctx.step(name)');
    this.stepNames ??= new Set();
    if (this.stepNames.has(name)) throw new ConfigError(`step name "${name}" used twice in one run`);
    this.stepNames.add(name);
    const journaled = Object.hasOwn(args.steps, name) ? args.steps[name] : undefined;
    const stepArgs = this.stepRunArgs();
    const running = inSpan(`step ${name}`, args.otelContext, { [ATTR_EO_STEP]: name }, (span) =>
      runStep(stepArgs, name, fn, options, journaled, span),
    );
    this.running ??= new Set();
    this.running.add(running);
    const ended = () => this.running?.delete(running);
    running.then(ended, ended);
    return running;
  }

  private stepRunArgs(): StepRunArgs {
    const args = this.args;
    this.stepArgs ??= {
      storeKey: args.storeKey,
      messageKey: args.key,
      consumer: args.consumer,
      attempt: args.attempt,
      fence: args.fence,
      store: args.store,
      signal: () => args.lease.signal,
      writeUntilAnswered: (write) => args.lease.writeUntilAnswered(write),
      confirmLease: () => args.lease.confirm(),
      keyFor: (name) => this.keyFor(name),
      onStepEvent: args.onStepEvent,
      logger: args.logger,
      open: () => this.open('ctx.step'),
      journal: (encoded) => {
        const journal = this.journal();
        const entry = Buffer.from(encoded);
        journal.push(entry);
        return () => {
          const at = journal.indexOf(entry);
          if (at >= 0) journal.splice(at, 1);
        };
      },
    };
    return this.stepArgs;
  }

  async storeBlob(source: BlobSource): Promise<BlobPointer> {
    this.open('ctx.storeBlob');
    if (!this.args.blobStore)
      throw new ConfigError('ctx.storeBlob needs a blob store: pass `blobs` to the options');
    const pointer = await this.args.blobStore.put(source, { owner: this.args.storeKey });
    this.blobs.push(pointer);
    return pointer;
  }
}

/**
 * The handler's `ctx`. Its methods are made on first read and bound to the run, so a handler may
 * pass them around or destructure them (`const { step } = ctx`) like plain functions.
 */
class RunHandlerContext implements HandlerContext {
  readonly key: string;
  readonly requestId: string;
  readonly attempt: number;
  readonly fence: number;
  readonly acquiredAs: AcquireKind;
  readonly consumer: string;
  readonly span: Span;
  #run: Run;
  #headers: Readonly<Record<string, string>> | undefined;
  #keyFor: HandlerContext['keyFor'] | undefined;
  #publish: HandlerContext['publish'] | undefined;
  #step: HandlerContext['step'] | undefined;
  #storeBlob: HandlerContext['storeBlob'] | undefined;

  constructor(run: Run) {
    const args = run.args;
    this.#run = run;
    this.key = args.key;
    this.requestId = args.requestId;
    this.attempt = args.attempt;
    this.fence = args.fence;
    this.acquiredAs = args.kind;
    this.consumer = args.consumer;
    this.span = args.span;
  }

  get headers(): Readonly<Record<string, string>> {
    this.#headers ??= textHeaders(this.#run.args.delivery.headers);
    return this.#headers;
  }

  get delivery(): DeliveryInfo {
    const { destination, system, brokerId, attributes } = this.#run.args.delivery;
    return {
      destination,
      system,
      ...(brokerId === undefined ? {} : { brokerId }),
      ...(attributes === undefined ? {} : { attributes }),
    };
  }

  get signal(): AbortSignal {
    return this.#run.args.lease.signal;
  }

  get keyFor(): HandlerContext['keyFor'] {
    const run = this.#run;
    this.#keyFor ??= (name) => run.keyFor(name);
    return this.#keyFor;
  }

  get publish(): HandlerContext['publish'] {
    const run = this.#run;
    this.#publish ??= (destination, message, options) => run.publish(destination, message, options);
    return this.#publish;
  }

  get step(): HandlerContext['step'] {
    const run = this.#run;
    this.#step ??= (name, fn, options) => run.step(name, fn, options);
    return this.#step;
  }

  get storeBlob(): HandlerContext['storeBlob'] {
    const run = this.#run;
    this.#storeBlob ??= (source) => run.storeBlob(source);
    return this.#storeBlob;
  }
}
