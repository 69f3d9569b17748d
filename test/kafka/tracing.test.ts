/**
 * Spans with and without @opentelemetry/instrumentation-kafkajs: one CONSUMER span per record
 * either way (core's span kind 'auto'), one PRODUCER span per send, the trace continued.
 */
import { createRequire } from 'node:module';
import { context, propagation, SpanKind, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from '@opentelemetry/core';
import { KafkaJsInstrumentation } from '@opentelemetry/instrumentation-kafkajs';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { createConsumer, createProducer, KafkaAttributes } from '@exactly-once/kafka';
import { createRedisStore } from '@exactly-once/store-redis';
import type { Redis } from 'ioredis';
import type { Admin } from 'kafkajs';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  createTopics,
  dropStorePrefixes,
  fastGroup,
  fullyCommitted,
  newKafka,
  newRedis,
  quietLogger,
  readTopic,
  storePrefix,
  uniqueName,
  waitUntil,
} from './helpers.js';

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
const contextManager = new AsyncLocalStorageContextManager();
let redis: Redis;
let admin: Admin;

beforeAll(async () => {
  contextManager.enable();
  context.setGlobalContextManager(contextManager);
  trace.setGlobalTracerProvider(provider);
  propagation.setGlobalPropagator(
    new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] }),
  );
  redis = newRedis();
  admin = newKafka('tracing-admin').admin();
  await admin.connect();
});

afterAll(async () => {
  await admin?.disconnect();
  if (redis) await dropStorePrefixes(redis);
  await redis?.quit();
  trace.disable();
  context.disable();
  propagation.disable();
});

beforeEach(() => exporter.reset());

/** Sends 3 records with the SDK producer, consumes them, and returns the spans. */
async function roundTrip() {
  const kafka = newKafka('tracing');
  const topic = uniqueName('tracing');
  const out = `${topic}.out`;
  const groupId = uniqueName('tracing-group');
  await createTopics(admin, [topic, out, `${topic}.dlq`], 3);
  const producer = createProducer({ kafka });
  const sent = [];
  for (const id of ['t1', 't2', 't3']) sent.push(await producer.send(topic, { id }, { key: id }));
  await producer.disconnect();
  const consumer = createConsumer<{ id: string }>({
    kafka,
    groupId,
    topics: [topic],
    deadLetter: { topic: `${topic}.dlq` },
    store: createRedisStore({ client: redis, keyPrefix: storePrefix() }),
    fromBeginning: true,
    consumerConfig: fastGroup,
    logger: quietLogger,
    handler: (order, ctx) => ctx.publish(out, { id: order.id }, { routingKey: order.id }),
  });
  await consumer.start();
  try {
    await waitUntil(() => fullyCommitted(admin, groupId, topic), { message: 'committed' });
  } finally {
    await consumer.stop();
  }
  const outRecords = await readTopic(kafka, out, (r) => r.length >= 3);
  const spans = exporter.getFinishedSpans();
  const named = (name: string, kind?: SpanKind) =>
    spans.filter((s) => s.name === name && (kind === undefined || s.kind === kind));
  return { topic, groupId, sent, spans, named, outRecords };
}

const traceOf = (traceparent: string | undefined) => traceparent?.split('-')[1];
const parentId = (s: ReadableSpan) => s.parentSpanContext?.spanId;

describe('tracing', () => {
  it('without instrumentation-kafkajs: core makes the CONSUMER span, continuing the send span', async () => {
    const { topic, groupId, sent, named, outRecords } = await roundTrip();
    const sends = named(`send ${topic}`, SpanKind.PRODUCER);
    const processes = named(`process ${topic}`);
    expect(sends).toHaveLength(3);
    expect(processes).toHaveLength(3);
    expect(processes.every((s) => s.kind === SpanKind.CONSUMER)).toBe(true);
    for (const p of processes) {
      const send = sends.find((s) => s.spanContext().spanId === parentId(p));
      expect(send, 'process span is a child of its send span').toBeDefined();
      expect(p.spanContext().traceId).toBe(send?.spanContext().traceId);
      expect(p.attributes[KafkaAttributes.ConsumerGroup]).toBe(groupId);
      expect(p.attributes[KafkaAttributes.Partition]).toMatch(/^[0-2]$/);
      expect(typeof p.attributes[KafkaAttributes.Offset]).toBe('number');
      // The message key is a business key: on the span only with `recordKeys: true`.
      expect(p.attributes[KafkaAttributes.MessageKey]).toBeUndefined();
      expect(p.attributes['messaging.system']).toBe('kafka');
    }
    expect(sends.map((s) => s.attributes['exactly_once.request_id']).sort()).toEqual(
      sent.map((s) => s.requestId).sort(),
    );
    // Outgoing messages continue the same traces.
    const traces = new Set(sends.map((s) => s.spanContext().traceId));
    expect(outRecords.every((r) => traces.has(traceOf(r.headers.traceparent) as string))).toBe(true);
  });

  it('with instrumentation-kafkajs: its CONSUMER span per record, core adds an INTERNAL one', async () => {
    const instrumentation = new KafkaJsInstrumentation({ enabled: false });
    instrumentation.setTracerProvider(provider);
    // kafkajs is already loaded: apply the instrumentation's patch to the loaded module.
    const kafkajs = createRequire(import.meta.url)('kafkajs');
    const [definition] = instrumentation.getModuleDefinitions();
    definition?.patch?.(kafkajs, '2.2.4');
    try {
      const { topic, named } = await roundTrip();
      const consumerSpans = named(`process ${topic}`, SpanKind.CONSUMER);
      const internal = named(`exactly-once process ${topic}`, SpanKind.INTERNAL);
      const producerSpans = named(`send ${topic}`, SpanKind.PRODUCER);
      expect(consumerSpans).toHaveLength(3); // the instrumentation's, none from core
      expect(internal).toHaveLength(3);
      expect(producerSpans).toHaveLength(3); // the instrumentation's, none from the SDK producer
      // Core's span sits in the instrumentation's trace (under its batch span).
      const polls = named(`poll ${topic}`);
      expect(internal.every((s) => polls.some((p) => p.spanContext().spanId === parentId(s)))).toBe(true);
    } finally {
      definition?.unpatch?.(kafkajs, '2.2.4');
    }
  });
});
