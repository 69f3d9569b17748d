/**
 * OpenTelemetry for one service process: OTLP/HTTP to Jaeger (whose query API the driver checks)
 * and the same spans to Zipkin (whose UI shows a trace), W3C tracecontext + baggage, and a
 * span processor that counts the pipeline's outcome of every delivery (the `exactly_once.outcome`
 * attribute core sets on each process span), which the service serves on its stats endpoint.
 */
import type { Context } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { ZipkinExporter } from '@opentelemetry/exporter-zipkin';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { core, NodeSDK } from '@opentelemetry/sdk-node';
import {
  BatchSpanProcessor,
  type ReadableSpan,
  type Span,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { ATTR_SERVICE_NAME } from '@opentelemetry/semantic-conventions';
import { servers } from './config.js';

export interface Tracing {
  /** Pipeline outcomes so far: `{ acquired: 12, duplicate: 3, ... }`. */
  readonly outcomes: Readonly<Record<string, number>>;
  /** Exports every ended span now. */
  flush(): Promise<void>;
  /** Flushes and stops the SDK (on SIGTERM). */
  shutdown(): Promise<void>;
}

class OutcomeCounter implements SpanProcessor {
  readonly counts: Record<string, number> = {};
  onStart(_span: Span, _parent: Context): void {}
  onEnd(span: ReadableSpan): void {
    const outcome = span.attributes['exactly_once.outcome'];
    // Only core's process spans carry both; one per delivery (or per HTTP request in A).
    if (typeof outcome === 'string' && span.attributes['exactly_once.consumer'] !== undefined) {
      this.counts[outcome] = (this.counts[outcome] ?? 0) + 1;
    }
  }
  forceFlush(): Promise<void> {
    return Promise.resolve();
  }
  shutdown(): Promise<void> {
    return Promise.resolve();
  }
}

/** Starts the SDK. Call first thing in `main`, before any span can be made. */
export function startTracing(service: string, instance: string, run: string): Tracing {
  const counter = new OutcomeCounter();
  // Jaeger v2 takes no Zipkin format and Zipkin no OTLP, so each gets its own exporter. A short
  // export delay: the demo SIGKILLs workers, and a crash loses what is still buffered.
  const exporters = [
    new OTLPTraceExporter({ url: `${servers.otlpUrl}/v1/traces` }),
    new ZipkinExporter({ url: `${servers.zipkinUrl}/api/v2/spans` }),
  ];
  const batches = exporters.map(
    (exporter) => new BatchSpanProcessor(exporter, { scheduledDelayMillis: 100, maxQueueSize: 8192 }),
  );
  const sdk = new NodeSDK({
    resource: resourceFromAttributes({
      [ATTR_SERVICE_NAME]: service,
      // `service.instance.id` is still incubating in the conventions package; spelled out here.
      'service.instance.id': instance,
      'demo.run': run,
    }),
    autoDetectResources: false,
    spanProcessors: [...batches, counter],
    textMapPropagator: new core.CompositePropagator({
      propagators: [new core.W3CTraceContextPropagator(), new core.W3CBaggagePropagator()],
    }),
    instrumentations: [],
  });
  sdk.start();
  return {
    outcomes: counter.counts,
    flush: async () => {
      await Promise.all(batches.map((b) => b.forceFlush()));
    },
    shutdown: () => sdk.shutdown(),
  };
}
