import { context, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from '@opentelemetry/core';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { HandlerContext } from '../src/context.js';
import { Headers } from '../src/headers.js';
import { createProcessor } from '../src/processor.js';
import { withFaults } from '../src/store/faulty-store.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import { delivery, recordingPublisher } from './helpers.js';

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
const contextManager = new AsyncLocalStorageContextManager();

beforeAll(() => {
  contextManager.enable();
  context.setGlobalContextManager(contextManager);
  trace.setGlobalTracerProvider(provider);
  propagation.setGlobalPropagator(
    new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] }),
  );
});
afterAll(() => {
  trace.disable();
  context.disable();
  propagation.disable();
});
beforeEach(() => exporter.reset());

const producerTraceId = '4bf92f3577b34da6a3ce929d0e0e4736';
const headers = (k: string) => ({
  [Headers.IdempotencyKey]: k,
  [Headers.RequestId]: `req-${k}`,
  traceparent: `00-${producerTraceId}-00f067aa0ba902b7-01`,
});

describe('tracing', () => {
  it('continues the producer trace with a CONSUMER process span carrying the outcome attributes', async () => {
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      retentionCheck: 'off',
      handler: () => 1,
    });
    await p.process(delivery({}, headers('t1')));
    const span = exporter.getFinishedSpans().find((s) => s.name === 'process orders');
    expect(span?.kind).toBe(SpanKind.CONSUMER);
    expect(span?.spanContext().traceId).toBe(producerTraceId);
    expect(span?.attributes).toMatchObject({
      'messaging.system': 'test',
      'messaging.destination.name': 'orders',
      'exactly_once.request_id': 'req-t1',
      'exactly_once.outcome': 'acquired',
      'exactly_once.attempt': 1,
      'exactly_once.fence': expect.any(Number),
    });
    const names = exporter.getFinishedSpans().map((s) => s.name);
    expect(names).toEqual(expect.arrayContaining(['exactly-once begin', 'exactly-once complete']));
  });

  it('marks the span of a message deferred for a store outage as an error', async () => {
    // Before: its status was unset, so a trace viewer's error filter missed the outage.
    const p = createProcessor({
      consumer: 'c',
      store: withFaults(createMemoryStore(), { failWhen: (op) => op === 'begin' }),
      retentionCheck: 'off',
      handler: () => 1,
    });
    expect(await p.process(delivery({}, headers('t-down')))).toMatchObject({ outcome: 'store-unavailable' });
    const span = exporter.getFinishedSpans().find((s) => s.name === 'process orders');
    expect(span?.status.code).toBe(SpanStatusCode.ERROR);
    expect(span?.status.message).toMatch(/^StoreUnavailableError: /);
  });

  it('records the key (and key-bearing message attributes) only with recordKeys', async () => {
    const attributes = { 'messaging.message.id': 'k-1', 'messaging.kafka.message.key': 'order-9' };
    for (const recordKeys of [false, true]) {
      exporter.reset();
      const p = createProcessor({
        consumer: 'c',
        store: createMemoryStore(),
        retentionCheck: 'off',
        recordKeys,
        handler: () => 1,
      });
      await p.process({ ...delivery({}, headers('k-1')), attributes });
      const span = exporter.getFinishedSpans().find((s) => s.name === 'process orders');
      expect(span?.attributes['exactly_once.request_id']).toBe('req-k-1');
      for (const name of ['exactly_once.key', 'messaging.message.id', 'messaging.kafka.message.key']) {
        expect(span?.attributes[name] !== undefined, name).toBe(recordKeys);
      }
    }
  });

  it('keeps the key and quoted payload out of error statuses and exception events unless recordKeys', async () => {
    const key = 'secret-key-0042';
    const store = createMemoryStore();
    const run = async (recordKeys: boolean, body: unknown, fail: boolean) => {
      exporter.reset();
      const p = createProcessor({
        consumer: 'c',
        store,
        retentionCheck: 'off',
        recordKeys,
        retry: { maxAttempts: 1 },
        handler: (_: unknown, ctx: HandlerContext) => {
          if (fail) throw new Error(`charge for ${ctx.key} declined`);
          return 1;
        },
      });
      // The request id is recorded always; here it is not the key.
      await p.process(delivery(body, { ...headers(key), [Headers.RequestId]: 'req-1' }));
      return JSON.stringify(
        exporter
          .getFinishedSpans()
          .map((s) => ({ status: s.status, events: s.events, attributes: s.attributes })),
      );
    };
    const handlerFailure = await run(false, { n: 1 }, true);
    expect(handlerFailure).toContain('declined');
    expect(handlerFailure).not.toContain(key);
    expect(await run(true, { n: 2 }, true)).toContain(key);
    // JSON.parse quotes the text it could not read.
    const malformed = await run(false, 'not json: alice@example.com', false);
    expect(malformed).toContain('MalformedMessageError');
    expect(malformed).not.toContain('alice@example.com');
  });

  it('links a duplicate to the span that completed the record, in the same trace', async () => {
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      retentionCheck: 'off',
      handler: () => 1,
    });
    await p.process(delivery({}, headers('t2')));
    const original = exporter.getFinishedSpans().find((s) => s.name === 'process orders');
    exporter.reset();
    await p.process(delivery({}, headers('t2')));
    const dup = exporter.getFinishedSpans().find((s) => s.name === 'process orders');
    expect(dup?.attributes['exactly_once.outcome']).toBe('duplicate');
    expect(dup?.spanContext().traceId).toBe(producerTraceId);
    expect(dup?.links[0]?.context.spanId).toBe(original?.spanContext().spanId);
  });

  it('injects trace context and the request id baggage into outgoing messages', async () => {
    const publisher = recordingPublisher();
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      publisher,
      retentionCheck: 'off',
      handler: (_: unknown, ctx: HandlerContext) => ctx.publish('next', { a: 1 }),
    });
    await p.process(delivery({}, headers('t3')));
    const out = publisher.sent[0];
    expect(out?.headers.traceparent).toMatch(new RegExp(`^00-${producerTraceId}-[0-9a-f]{16}-01$`));
    expect(out?.headers.baggage).toContain('exactly_once.request_id=req-t3');
    const names = exporter.getFinishedSpans().map((s) => s.name);
    expect(names).toEqual(expect.arrayContaining(['create next', 'send next']));
  });

  it('makes an INTERNAL child when an instrumentation already opened a consumer span (auto mode)', async () => {
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      retentionCheck: 'off',
      handler: () => 1,
    });
    const outer = provider
      .getTracer('instr')
      .startSpan('orders process', { kind: SpanKind.CONSUMER }, ROOT_CONTEXT);
    await context.with(trace.setSpan(ROOT_CONTEXT, outer), () => p.process(delivery({}, headers('t4'))));
    outer.end();
    const inner = exporter.getFinishedSpans().find((s) => s.name === 'exactly-once process orders');
    expect(inner?.kind).toBe(SpanKind.INTERNAL);
    expect(inner?.parentSpanContext?.spanId).toBe(outer.spanContext().spanId);
    // The producer's span stays reachable through a link.
    expect(inner?.links[0]?.context.traceId).toBe(producerTraceId);
    expect(exporter.getFinishedSpans().filter((s) => s.kind === SpanKind.CONSUMER)).toHaveLength(1);
  });

  it('never puts the payload into attributes', async () => {
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      retentionCheck: 'off',
      handler: () => 1,
    });
    await p.process(delivery({ card: 'pan-4242424242424242' }, headers('t5')));
    const all = JSON.stringify(exporter.getFinishedSpans().map((s) => s.attributes));
    // A marker no number can hold: the fence is a store time in ms, and at some moments its
    // digits spell 4242.
    expect(all).not.toContain('pan-');
  });

  it('records the request id on the span of a message that could not be read (found by its id)', async () => {
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      retentionCheck: 'off',
      handler: () => 1,
    });
    const { [Headers.IdempotencyKey]: _, ...keyless } = headers('t6');
    await p.process(delivery('not json', headers('t6')));
    await p.process(delivery({}, keyless));
    await p.process(delivery({}, { ...keyless, [Headers.RequestId]: 'bad \ud800' }));
    const spans = exporter.getFinishedSpans().filter((s) => s.name === 'process orders');
    expect(
      spans.map((s) => [s.attributes['exactly_once.outcome'], s.attributes['exactly_once.request_id']]),
    ).toEqual([
      ['invalid', 'req-t6'],
      ['invalid', 'req-t6'],
      // An unusable request id is not recorded (the letter says why the message was refused).
      ['invalid', undefined],
    ]);
  });
});
