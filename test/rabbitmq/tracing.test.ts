/**
 * Spans with and without @opentelemetry/instrumentation-amqplib: exactly one CONSUMER span per
 * delivery either way (core's span kind 'auto' adds an INTERNAL one under the instrumentation's),
 * and the publisher's trace continued into the consumer.
 */
import { createRequire } from 'node:module';
import { createConsumer, createPublisher } from '@exactly-once/rabbitmq';
import { createRedisStore } from '@exactly-once/store-redis';
import { context, propagation, SpanKind, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from '@opentelemetry/core';
import { AmqplibInstrumentation } from '@opentelemetry/instrumentation-amqplib';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';
import { closeRedis, newRedis, queuesOf, rawChannel, storePrefix } from './helpers.js';

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
const contextManager = new AsyncLocalStorageContextManager();
const redis = newRedis();

beforeAll(() => {
  contextManager.enable();
  context.setGlobalContextManager(contextManager);
  trace.setGlobalTracerProvider(provider);
  propagation.setGlobalPropagator(
    new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] }),
  );
});
afterAll(async () => {
  await closeRedis(redis);
  trace.disable();
  context.disable();
  propagation.disable();
});
beforeEach(() => exporter.reset());

async function roundTrip() {
  const queue = uniqueName('rmq-trace');
  const publisher = createPublisher({ connection: env.amqpUrl });
  const raw = await rawChannel();
  await raw.ch.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
  const sent = [];
  for (const id of ['t1', 't2', 't3']) sent.push(await publisher.send(queue, { id }));
  let done = 0;
  const consumer = createConsumer<{ id: string }>({
    connection: env.amqpUrl,
    queue,
    consumer: 'tracing',
    store: createRedisStore({ client: redis, keyPrefix: storePrefix(queue) }),
    retryDelaysMs: [100],
    retentionCheck: 'off',
    handler: () => {
      done++;
    },
  });
  await consumer.start();
  await waitUntil(() => consumer.stats.acked === 3);
  await consumer.stop();
  await publisher.close();
  await raw.deleteQueues(queuesOf(queue, [100]));
  await raw.close();
  const spans = exporter.getFinishedSpans();
  return {
    queue,
    sent,
    done,
    spans,
    named: (n: string, k?: SpanKind) =>
      spans.filter((s) => s.name === n && (k === undefined || s.kind === k)),
  };
}

describe('rabbitmq tracing', () => {
  it('without instrumentation: a PRODUCER send span and a CONSUMER process span per message, one trace', async () => {
    const { queue, named, sent } = await roundTrip();
    const sends = named(`send ${queue}`, SpanKind.PRODUCER);
    const processes = named(`process ${queue}`, SpanKind.CONSUMER);
    expect(sends).toHaveLength(3);
    expect(processes).toHaveLength(3);
    const traceIds = new Set(sends.map((s) => s.spanContext().traceId));
    expect(processes.every((p) => traceIds.has(p.spanContext().traceId))).toBe(true);
    expect(processes.map((p) => p.attributes['exactly_once.request_id']).sort()).toEqual(
      sent.map((s) => s.requestId).sort(),
    );
  });

  it('with instrumentation-amqplib: one CONSUMER span per delivery (its own), core adds INTERNAL', async () => {
    const instrumentation = new AmqplibInstrumentation({ enabled: false });
    instrumentation.setTracerProvider(provider);
    // amqplib is already loaded: apply the instrumentation's file patches to the loaded modules.
    const require = createRequire(import.meta.url);
    const [definition] = instrumentation.getModuleDefinitions();
    const files = (definition?.files ?? []).map((f) => ({ f, exports: require(f.name) }));
    for (const { f, exports } of files) f.patch?.(exports, '0.10.9');
    try {
      const { queue, spans, named } = await roundTrip();
      const consumers = spans.filter((s) => s.kind === SpanKind.CONSUMER && s.name.includes(queue));
      const internal = spans.filter((s) => s.name === `exactly-once process ${queue}`);
      expect(consumers).toHaveLength(3);
      expect(internal).toHaveLength(3);
      expect(internal.every((s) => s.kind === SpanKind.INTERNAL)).toBe(true);
      // One PRODUCER span per send too: the instrumentation's; `send` adds none of its own.
      const producers = spans.filter((s) => s.kind === SpanKind.PRODUCER);
      expect(named(`send ${queue}`)).toHaveLength(0);
      expect(producers).toHaveLength(3);
      const producerTraces = new Set(producers.map((s) => s.spanContext().traceId));
      expect(consumers.every((c) => producerTraces.has(c.spanContext().traceId))).toBe(true);
    } finally {
      for (const { f, exports } of files) f.unpatch?.(exports, '0.10.9');
    }
  });
});
