/**
 * Keys and payloads stay out of telemetry unless `recordKeys` is set: a real RabbitMQ consumer on
 * the Redis store, traced into an in-memory exporter and logging into a capturing logger, over a
 * processed message, a duplicate, a retry, two dead letters (one not JSON: JSON.parse quotes its
 * input) and a payload reused under another key. No exported span (name, attribute, event,
 * status, link) and no log line holds a key or the payload; with `recordKeys: true` the key is
 * on the spans. The request id is recorded either way.
 */
import { context, propagation, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from '@opentelemetry/core';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { createRedisStore } from '@exactly-once/store-redis';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';
import { capturingLogger, runScenario } from './support.js';

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
const contextManager = new AsyncLocalStorageContextManager();
const redis = new Redis(env.redisUrl, { maxRetriesPerRequest: 3 });

beforeAll(() => {
  contextManager.enable();
  context.setGlobalContextManager(contextManager);
  trace.setGlobalTracerProvider(provider);
  propagation.setGlobalPropagator(
    new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] }),
  );
});
afterAll(async () => {
  await redis.quit();
  trace.disable();
  context.disable();
  propagation.disable();
});
beforeEach(() => exporter.reset());

/** Everything a span exports that a backend would show, as text. */
const exported = (spans: readonly ReadableSpan[]) =>
  spans.map((s) =>
    JSON.stringify({
      name: s.name,
      attributes: s.attributes,
      events: s.events.map((e) => ({ name: e.name, attributes: e.attributes })),
      status: s.status,
      links: s.links.map((l) => l.attributes ?? {}),
    }),
  );

async function scenario(recordKeys: boolean | undefined) {
  const keyMarker = uniqueName('KEYMARK');
  const payloadMarker = uniqueName('PAYLOADMARK');
  const logger = capturingLogger();
  const queue = uniqueName('eo-redact');
  const result = await runScenario({
    url: env.amqpUrl,
    adminUrl: env.amqpUrl,
    queue,
    store: createRedisStore({ client: redis, keyPrefix: uniqueName('eot-redact'), logger }),
    keyMarker,
    payloadMarker,
    logger,
    reusedPayload: true,
    ...(recordKeys === undefined ? {} : { recordKeys }),
  });
  const spans = exporter.getFinishedSpans();
  return { result, spans, texts: exported(spans), lines: logger.lines, keyMarker, payloadMarker, queue };
}

describe('keys and payloads in telemetry', () => {
  it('by default no span and no log line carries a key or the payload', async () => {
    const { result, spans, texts, lines, keyMarker, payloadMarker, queue } = await scenario(undefined);
    // The scenario went through every path.
    expect(result.runs).toEqual({ ok: 2, retry: 2, dead: 1 });
    expect(result.consumer.stats.byOutcome.duplicate).toBe(1);
    expect(result.deadLetters).toHaveLength(2);
    const processes = spans.filter((s) => s.name === `process ${queue}`);
    expect(processes.length).toBeGreaterThanOrEqual(7);
    // The request id is kept (all but the message that could not be read have one).
    const read = processes.filter((s) => s.attributes['exactly_once.outcome'] !== 'invalid');
    expect(read.every((s) => typeof s.attributes['exactly_once.request_id'] === 'string')).toBe(true);
    expect(processes.some((s) => s.attributes['exactly_once.payload_reuse'] === true)).toBe(true);
    // Errors are still explained, without the key: the retry's and the dead letters' statuses.
    expect(texts.join('\n')).toContain('payment provider busy for \\"[redacted]\\"');
    expect(texts.join('\n')).toContain('MalformedMessageError');
    expect(lines.some((l) => l.includes('payload guard'))).toBe(true);
    for (const text of [...texts, ...lines]) {
      expect(text).not.toContain(keyMarker);
      expect(text).not.toContain(payloadMarker);
      expect(text).not.toContain('alice@example.com');
    }
  });

  it('with recordKeys: true the key is on the process spans and in the log lines', async () => {
    const { spans, lines, keyMarker, queue } = await scenario(true);
    const processes = spans.filter((s) => s.name === `process ${queue}`);
    expect(processes.map((s) => s.attributes['exactly_once.key'])).toContain(`${keyMarker}-ok`);
    expect(processes.map((s) => s.attributes['exactly_once.payload_reuse.first_key'])).toContain(
      `${keyMarker}-ok`,
    );
    expect(lines.find((l) => l.includes('payload guard'))).toContain(`${keyMarker}-again`);
  });
});
