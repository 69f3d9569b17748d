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
import { createOutboxRelay, type OutboxEntry } from '../src/outbox/relay.js';
import { createProcessor } from '../src/processor.js';
import { withFaults } from '../src/store/faulty-store.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import type { OutgoingMessage } from '../src/store/types.js';
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

describe('tracing: the outbox relay', () => {
  const entry = (id: string, traceparent: string): OutboxEntry => ({
    id,
    messages: [
      {
        id: `${id}/0`,
        destination: 'order-events',
        body: new Uint8Array([1]),
        headers: { [Headers.IdempotencyKey]: `${id}/0`, [Headers.RequestId]: `req-${id}`, traceparent },
      },
    ],
  });

  it('publishes each message in an `outbox publish` PRODUCER span, child of the context it was written with', async () => {
    const pending = new Map([['o1', entry('o1', `00-${producerTraceId}-00f067aa0ba902b7-01`)]]);
    const sent: OutgoingMessage[] = [];
    let failures = 1;
    const relay = createOutboxRelay({
      source: {
        async *scan() {
          yield* [...pending.values()];
        },
        markPublished: async (ids) => {
          for (const id of ids) pending.delete(id);
        },
        countPending: async () => pending.size,
      },
      publisher: {
        async publish(messages) {
          if (failures-- > 0) throw new Error('broker down');
          sent.push(...messages);
        },
      },
      retry: { initialDelayMs: 1, maxDelayMs: 1 },
      idleDelayMs: 1,
      logger: { debug() {}, info() {}, warn() {}, error() {} },
    });
    relay.start();
    await relay.drained();
    await relay.stop();
    const spans = exporter.getFinishedSpans().filter((s) => s.name === 'outbox publish order-events');
    // The failed round's span, then the confirmed one's: both in the writer's trace.
    expect(spans).toHaveLength(2);
    for (const span of spans) {
      expect(span.kind).toBe(SpanKind.PRODUCER);
      expect(span.spanContext().traceId).toBe(producerTraceId);
      expect(span.parentSpanContext?.spanId).toBe('00f067aa0ba902b7');
      expect(span.attributes).toMatchObject({
        'messaging.destination.name': 'order-events',
        'exactly_once.request_id': 'req-o1',
      });
    }
    expect(spans[0]?.status.code).toBe(SpanStatusCode.ERROR);
    expect(spans[1]?.status.code).not.toBe(SpanStatusCode.ERROR);
    // The consumer continues from the relay's span, so the trace shows the wait in the outbox.
    expect(sent).toHaveLength(1);
    expect(sent[0]?.headers.traceparent).toBe(`00-${producerTraceId}-${spans[1]?.spanContext().spanId}-01`);
    expect(sent[0]?.headers[Headers.IdempotencyKey]).toBe('o1/0');
  });

  it('leaves a message whose span is not sampled as it was written', async () => {
    const unsampled = `00-${producerTraceId}-00f067aa0ba902b7-00`;
    const sent: OutgoingMessage[] = [];
    const relay = createOutboxRelay({
      source: {
        async *scan() {
          if (sent.length === 0) yield entry('o2', unsampled);
        },
        markPublished: async () => {},
        countPending: async () => (sent.length === 0 ? 1 : 0),
      },
      publisher: {
        async publish(messages) {
          sent.push(...messages);
        },
      },
      idleDelayMs: 1,
    });
    relay.start();
    await relay.drained();
    await relay.stop();
    expect(exporter.getFinishedSpans().filter((s) => s.name.startsWith('outbox publish'))).toHaveLength(0);
    expect(sent[0]?.headers.traceparent).toBe(unsampled);
  });
});
