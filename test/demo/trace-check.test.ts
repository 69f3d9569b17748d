/**
 * The demo's trace check on traces in a real Jaeger: an order whose billing spans all died with a
 * SIGKILLed worker is found by the order service's run, and the client's replays of that order
 * (each a trace of its own, with the same request id) neither hide it nor count as a second trace.
 */
import { ROOT_CONTEXT, type Span, SpanKind, type Tracer, trace } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { afterAll, expect, it } from 'vitest';
import { checkTrace } from '../../examples/three-services/driver/jaeger.js';
import { env, uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';

const providers = ['order', 'notification'].map(
  (service) =>
    new BasicTracerProvider({
      resource: resourceFromAttributes({ 'service.name': service }),
      spanProcessors: [new SimpleSpanProcessor(new OTLPTraceExporter({ url: `${env.otlpUrl}/v1/traces` }))],
    }),
);
const [order, notification] = providers.map((p) => p.getTracer('trace-check')) as [Tracer, Tracer];

afterAll(async () => {
  await Promise.all(providers.map((p) => p.shutdown()));
});

/** A `POST /orders` trace whose process span has `outcome`; returns that span, ended. */
function orderRequest(requestId: string, outcome: string, linkTo?: Span): Span {
  const server = order.startSpan('POST /orders', { kind: SpanKind.SERVER });
  const process = order.startSpan(
    'exactly-once process orders-api',
    {
      attributes: { 'exactly_once.request_id': requestId, 'exactly_once.outcome': outcome },
      links: linkTo ? [{ context: linkTo.spanContext() }] : [],
    },
    trace.setSpan(ROOT_CONTEXT, server),
  );
  process.end();
  server.end();
  return process;
}

it('finds an order whose billing spans died with their worker by its run, not by its replays', async () => {
  const requestId = uniqueName('trace-check-order');
  const run = orderRequest(requestId, 'acquired');
  // The email, consumed downstream of the (lost) billing spans, in the order's trace.
  notification
    .startSpan(
      'process payments',
      {
        kind: SpanKind.CONSUMER,
        attributes: {
          'exactly_once.request_id': requestId,
          'exactly_once.outcome': 'acquired',
          'exactly_once.action': 'ack',
        },
      },
      trace.setSpan(ROOT_CONTEXT, run),
    )
    .end();
  // Two replays: the client got the stored answer back, in traces of their own.
  orderRequest(requestId, 'duplicate', run);
  orderRequest(requestId, 'duplicate', run);
  await Promise.all(providers.map((p) => p.forceFlush()));

  const expectation = {
    requestId,
    billingDuplicate: false,
    notificationDuplicate: false,
    replayed: true,
    ranOnlyOnKilled: ['billing' as const],
  };
  let check: Awaited<ReturnType<typeof checkTrace>> | undefined;
  await waitUntil(
    async () => {
      check = await checkTrace(env.jaegerQueryUrl, expectation, Date.now() - 60_000);
      return check.problems.length === 0;
    },
    { timeoutMs: 20_000, message: () => `the trace check passes: ${check?.problems.join('; ')}` },
  );
  expect(check?.lostWithKill).toEqual(['billing']);
  expect(check?.completedTwice).toEqual([]);
});
