/**
 * Tracing and metrics through `@opentelemetry/api` only: a no-op until the application installs
 * an SDK. Payloads and secrets never become attributes; idempotency keys only with `recordKeys`
 * (see redact.ts).
 */
import {
  type Attributes,
  type Context,
  type Counter,
  context,
  createContextKey,
  createNoopMeter,
  type Histogram,
  INVALID_SPAN_CONTEXT,
  type Link,
  type Meter,
  type MetricOptions,
  metrics,
  type ObservableGauge,
  propagation,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  type TextMapGetter,
  type TextMapSetter,
  trace,
} from '@opentelemetry/api';
import { describeThrown } from './errors.js';
import { Headers, type MessageHeaders, readHeader } from './headers.js';
import { noScrub, type Scrub } from './redact.js';

const SCOPE = '@exactly-once/core';
const VERSION = '0.1.0';

export function tracer() {
  return trace.getTracer(SCOPE, VERSION);
}

/**
 * Whether an OpenTelemetry SDK registered a tracer provider. Until one does, the API's proxy
 * provider has no delegate, every span is a no-op, and the pipeline skips tracing work.
 */
export function tracingEnabled(): boolean {
  const provider = trace.getTracerProvider() as {
    getDelegateTracer?: (name: string, version?: string) => unknown;
  };
  return provider.getDelegateTracer === undefined || provider.getDelegateTracer(SCOPE, VERSION) !== undefined;
}

const NOT_RECORDING = trace.wrapSpanContext(INVALID_SPAN_CONTEXT);

const UNTRACED: { readonly span: Span; readonly ctx: Context } = Object.freeze({
  span: NOT_RECORDING,
  ctx: ROOT_CONTEXT,
});

/** The span and context of a run when nothing records (one shared object). */
export function untraced(): { readonly span: Span; readonly ctx: Context } {
  return UNTRACED;
}

/** `context.with`, skipped when the context carries no recording span (nothing to propagate). */
export function withContext<T>(ctx: Context, fn: () => T): T {
  return trace.getSpan(ctx)?.isRecording() ? context.with(ctx, fn) : fn();
}

const headerGetter: TextMapGetter<MessageHeaders> = {
  keys: (carrier) => Object.keys(carrier),
  get: (carrier, key) => {
    try {
      return readHeader(carrier, key);
    } catch {
      return undefined;
    }
  },
};

const headerSetter: TextMapSetter<Record<string, string>> = {
  set: (carrier, key, value) => {
    carrier[key] = value;
  },
};

/** The producer's context (traceparent, tracestate, baggage) carried by a message. */
export function extractContext(headers: MessageHeaders): Context {
  return propagation.extract(ROOT_CONTEXT, headers, headerGetter);
}

/** Writes the given context's trace headers into `carrier`. */
export function injectContext(ctx: Context, carrier: Record<string, string>): Record<string, string> {
  propagation.inject(ctx, carrier, headerSetter);
  return carrier;
}

const TRACEPARENT = /^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;
/** W3C's limits: what a propagator would read at all. */
const PASSED_ON = [
  [Headers.Traceparent, 55],
  [Headers.Tracestate, 512],
  [Headers.Baggage, 8_192],
] as const;

/**
 * Adds to `carrier` the incoming trace headers it lacks, as received, when this process put none
 * there: a service without an OpenTelemetry SDK (no propagator registered) still passes its
 * producer's trace on, so the next service's spans join that trace rather than start a new one.
 * A traceparent that is malformed, or a header over W3C's size limit, is left out, never passed on.
 */
export function passTraceOn(incoming: MessageHeaders, carrier: Record<string, string>): void {
  for (const [name, max] of PASSED_ON) {
    if (carrier[name] !== undefined) continue;
    let value: string | undefined;
    try {
      value = readHeader(incoming, name);
    } catch {
      continue;
    }
    if (value === undefined || value.length > max) continue;
    if (name === Headers.Traceparent && !TRACEPARENT.test(value)) continue;
    carrier[name] = value;
  }
}

/**
 * `consumer`: always a `process <destination>` CONSUMER span continuing the producer's trace.
 * `internal`: an INTERNAL child of the active span (an auto-instrumentation already made the
 * consumer span). `auto`: internal when a span is active on the current context, else consumer.
 */
export type SpanKindMode = 'auto' | 'consumer' | 'internal';

export function startProcessSpan(
  mode: SpanKindMode,
  destination: string,
  headers: MessageHeaders,
  attributes: Attributes,
  links: Link[] = [],
): { span: Span; ctx: Context } {
  const active = trace.getSpan(context.active());
  const internal = mode === 'internal' || (mode === 'auto' && active !== undefined && active.isRecording());
  const producer = extractContext(headers);
  const parent = internal ? context.active() : producer;
  if (internal) {
    // Batch instrumentations parent the consumer span on a poll span; keep a direct link to the
    // producer's span so the message's own trace is one click away.
    const remote = trace.getSpanContext(producer);
    // No link to the very span we are a child of (an in-process caller): Jaeger would keep only
    // one of the two references.
    const isParent = remote?.spanId === active?.spanContext().spanId;
    if (remote && trace.isSpanContextValid(remote) && !isParent) links = [...links, { context: remote }];
  }
  const span = tracer().startSpan(
    internal ? `exactly-once process ${destination}` : `process ${destination}`,
    {
      kind: internal ? SpanKind.INTERNAL : SpanKind.CONSUMER,
      attributes,
      links,
    },
    parent,
  );
  // Keep the parent's baggage (request id) on the span's context for outgoing messages.
  return { span, ctx: trace.setSpan(parent, span) };
}

const SCRUB = createContextKey('exactly-once scrub');

/**
 * A context whose spans (the run's child spans: store calls, steps, blob writes, sends) record
 * error messages through `scrub`, so a message quoting the key does not carry it into telemetry.
 */
export function withScrub(ctx: Context, scrub: Scrub): Context {
  return ctx.setValue(SCRUB, scrub);
}

/** The scrub set on `ctx` by {@link withScrub}, or none. */
export function scrubOf(ctx: Context): Scrub {
  return (ctx.getValue(SCRUB) as Scrub | undefined) ?? noScrub;
}

/** Runs `fn` in a child span, recording an exception and error status if it throws. */
export function inSpan<T>(
  name: string,
  parent: Context,
  attributes: Attributes,
  fn: (span: Span) => Promise<T>,
  kind: SpanKind = SpanKind.INTERNAL,
): Promise<T> {
  // A child of a span that does not record would not record either.
  if (!trace.getSpan(parent)?.isRecording()) return fn(NOT_RECORDING);
  return inRecordingSpan(name, parent, attributes, fn, kind);
}

async function inRecordingSpan<T>(
  name: string,
  parent: Context,
  attributes: Attributes,
  fn: (span: Span) => Promise<T>,
  kind: SpanKind,
): Promise<T> {
  const span = tracer().startSpan(name, { kind, attributes }, parent);
  try {
    return await context.with(trace.setSpan(parent, span), () => fn(span));
  } catch (error) {
    recordError(span, error, scrubOf(parent));
    throw error;
  } finally {
    span.end();
  }
}

/**
 * Records `error` as an `exception` event (type, message, stack trace, as `span.recordException`
 * writes them) and the span's error status, every text through `scrub`.
 */
export function recordError(span: Span, error: unknown, scrub: Scrub = noScrub): void {
  if (!span.isRecording()) return;
  if (error instanceof Error) {
    const attributes: Attributes = {
      'exception.type':
        (error as { code?: unknown }).code === undefined
          ? error.name
          : String((error as { code?: unknown }).code),
      'exception.message': scrub(error.message),
    };
    if (error.stack !== undefined) attributes['exception.stacktrace'] = scrub(error.stack);
    span.addEvent('exception', attributes);
  }
  span.setStatus({
    code: SpanStatusCode.ERROR,
    message: scrub(error instanceof Error ? error.message : describeThrown(error)),
  });
}

/** `<trace id>-<span id>` of a span, as records keep it (see `ProcessedRecord.traceId`). */
export function spanRef(span: Span): string | undefined {
  const sc = span.spanContext();
  // The untraced run's context is the API's invalid one: skip the validity regexes.
  if (sc === INVALID_SPAN_CONTEXT) return undefined;
  return trace.isSpanContextValid(sc) ? `${sc.traceId}-${sc.spanId}` : undefined;
}

/** A link to the span that completed a record, so a duplicate's span points at the original run. */
export function linkToRef(ref: string | undefined): Link[] {
  const m = ref ? /^([0-9a-f]{32})-([0-9a-f]{16})$/.exec(ref) : null;
  if (!m) return [];
  return [{ context: { traceId: m[1] as string, spanId: m[2] as string, traceFlags: 1, isRemote: true } }];
}

/** The library's meter (one scope and version for every instrument it makes). */
const meter = () => metrics.getMeter(SCOPE, VERSION);
const noopMeter = createNoopMeter();
let metricsFailureReported = false;

/**
 * A provider's instrument that throws (the API says none may; a hand-written provider can) must
 * not fail a delivery: a delivery records its metrics between its handler's end and the release
 * of its lease. The measurement is dropped; the first such error becomes a process warning.
 */
function metricsFailed(error: unknown): void {
  if (metricsFailureReported) return;
  metricsFailureReported = true;
  process.emitWarning(
    `the metrics provider threw; measurements it refuses are dropped (${describeThrown(error)})`,
    { type: 'ExactlyOnceWarning' },
  );
}

/** Makes an instrument with the library's meter, or a no-op one if the provider throws. */
function made<I>(make: (m: Meter) => I): I {
  try {
    return make(meter());
  } catch (error) {
    metricsFailed(error);
    return make(noopMeter);
  }
}

/**
 * A provider's `add` or `record` that never throws (see metricsFailed): one closure an instrument,
 * none a measurement.
 */
function measuring(
  measure: (value: number, attributes?: Attributes, ctx?: Context) => void,
): (value: number, attributes?: Attributes, ctx?: Context) => void {
  return (value, attributes, ctx) => {
    try {
      measure(value, attributes, ctx);
    } catch (error) {
      metricsFailed(error);
    }
  };
}

/** A counter whose `add` never throws (see metricsFailed). */
export function counter(name: string, options: MetricOptions): Counter {
  return {
    add: made((m) => {
      const c = m.createCounter(name, options);
      return measuring(c.add.bind(c));
    }),
  };
}

/** A histogram whose `record` never throws (see metricsFailed). */
export function histogram(name: string, options: MetricOptions): Histogram {
  return {
    record: made((m) => {
      const h = m.createHistogram(name, options);
      return measuring(h.record.bind(h));
    }),
  };
}

/** An observable gauge whose callbacks are added and removed without throwing (see metricsFailed). */
export function observableGauge(name: string, options: MetricOptions): ObservableGauge {
  const g = made((m) => m.createObservableGauge(name, options));
  const guarded = (call: () => void) => {
    try {
      call();
    } catch (error) {
      metricsFailed(error);
    }
  };
  return {
    addCallback: (callback) => guarded(() => g.addCallback(callback)),
    removeCallback: (callback) => guarded(() => g.removeCallback(callback)),
  };
}

// The metrics API has no proxy provider: instruments made before the application registers its
// SDK would stay no-ops, so they are re-made when the global provider changes.
let instruments: { provider: unknown; value: ReturnType<typeof createInstruments> } | undefined;
function createInstruments() {
  return {
    deliveries: counter('exactly_once.deliveries', {
      description: 'Deliveries handled, by outcome and settle action',
    }),
    processDuration: histogram('exactly_once.process.duration', {
      description: 'Time from receipt to settle decision',
      unit: 's',
    }),
    handlerDuration: histogram('exactly_once.handler.duration', {
      description: 'Handler run time',
      unit: 's',
    }),
    payloadReuse: counter('exactly_once.payload_reuse', {
      description: 'Messages whose payload fingerprint another key claimed within payloadGuard.windowMs',
    }),
    publishEscalations: counter('exactly_once.publish.escalations', {
      description: 'Messages dead-lettered because their outgoing messages were never confirmed',
    }),
    republished: counter('exactly_once.publish.republished', {
      description:
        'Outgoing messages a duplicate delivery published for the run that completed its key, which had not confirmed them',
    }),
    stepGiveUps: counter('exactly_once.step.give_ups', {
      description: "Steps that gave up (`onGiveUp: 'continue'`) and resolved with their fallback",
    }),
    stepAlerts: counter('exactly_once.step.alerts', {
      description: 'Steps whose function failed `alertAfter` times in one run',
    }),
  };
}
/** Per consumer, its metric attributes `{ consumer }` (see metricAttributes). */
const consumerSets = new Map<string, Attributes>();
/** Per consumer, outcome and action, the attributes of a delivery's metrics. */
const deliverySets = new Map<string, Map<string, Map<string, Attributes>>>();

/**
 * A metric's attributes, one frozen object per distinct set, made once: every delivery records a
 * few metrics, and most deliveries share a handful of sets.
 */
export function metricAttributes(consumer: string): Attributes;
export function metricAttributes(consumer: string, outcome: string, action: string): Attributes;
export function metricAttributes(consumer: string, outcome?: string, action?: string): Attributes {
  if (outcome === undefined || action === undefined) {
    let set = consumerSets.get(consumer);
    if (set === undefined) {
      set = Object.freeze({ consumer });
      consumerSets.set(consumer, set);
    }
    return set;
  }
  let byOutcome = deliverySets.get(consumer);
  if (byOutcome === undefined) {
    byOutcome = new Map();
    deliverySets.set(consumer, byOutcome);
  }
  let byAction = byOutcome.get(outcome);
  if (byAction === undefined) {
    byAction = new Map();
    byOutcome.set(outcome, byAction);
  }
  let set = byAction.get(action);
  if (set === undefined) {
    set = Object.freeze({ consumer, outcome, action });
    byAction.set(action, set);
  }
  return set;
}

export function instrumentsFor() {
  const provider = metrics.getMeterProvider();
  if (instruments?.provider !== provider) instruments = { provider, value: createInstruments() };
  return instruments.value;
}
