import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';

describe('smoke: Jaeger v2', () => {
  it('receives a span over OTLP/HTTP (protobuf) and serves it from the query API', async () => {
    const service = uniqueName('smoke-svc');
    const provider = new BasicTracerProvider({
      resource: resourceFromAttributes({ 'service.name': service }),
      spanProcessors: [new SimpleSpanProcessor(new OTLPTraceExporter({ url: `${env.otlpUrl}/v1/traces` }))],
    });
    let traceId: string;
    try {
      const span = provider
        .getTracer('smoke')
        .startSpan('smoke span', { attributes: { 'smoke.id': service } });
      traceId = span.spanContext().traceId;
      span.end();
      await provider.forceFlush();
    } finally {
      await provider.shutdown();
    }
    const trace = await waitUntil(
      async () => {
        const res = await fetch(`${env.jaegerQueryUrl}/api/traces/${traceId}`);
        if (res.status !== 200) return undefined;
        const body = (await res.json()) as {
          data: {
            spans: { operationName: string; processID: string }[];
            processes: Record<string, { serviceName: string }>;
          }[];
        };
        return body.data[0];
      },
      { timeoutMs: 15_000, message: `trace ${traceId} in Jaeger` },
    );
    expect(trace.spans).toHaveLength(1);
    expect(trace.spans[0]?.operationName).toBe('smoke span');
    expect(trace.processes[trace.spans[0]?.processID ?? '']?.serviceName).toBe(service);
  });
});
