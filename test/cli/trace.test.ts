/**
 * `exactly-once trace <request-id>` on a real trace: a publisher's send and a RabbitMQ consumer's
 * process span (with a journaled step under it) exported over OTLP to Jaeger, read back through
 * Jaeger's query API and printed as a span tree.
 */

import { createHash } from 'node:crypto';
import { createConsumer, createPublisher } from '@exactly-once/rabbitmq';
import { createRedisStore } from '@exactly-once/store-redis';
import { context, propagation, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeRedis, newRedis, queuesOf, rawChannel, storePrefix } from '../rabbitmq/helpers.js';
import { env, uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';
import { cli, cliText } from './helpers.js';

interface Node {
  name: string;
  service: string;
  outcome?: string;
  links?: { traceId: string; spanId: string }[];
  children: Node[];
}

const service = uniqueName('cli-trace');
const provider = new BasicTracerProvider({
  resource: resourceFromAttributes({ 'service.name': service }),
  spanProcessors: [new SimpleSpanProcessor(new OTLPTraceExporter({ url: `${env.otlpUrl}/v1/traces` }))],
});
const contextManager = new AsyncLocalStorageContextManager();
const redis = newRedis();
const queue = uniqueName('cli-trace');
const requestId = uniqueName('req');
/** A request sent twice: its copy is a duplicate in a trace of its own, linked to the first. */
const twiceId = uniqueName('twice');
/** A request id over 255 bytes: recorded in its sha256:<hex> form. */
const longId = `${uniqueName('long')}-${'x'.repeat(300)}`;

beforeAll(async () => {
  contextManager.enable();
  context.setGlobalContextManager(contextManager);
  trace.setGlobalTracerProvider(provider);
  propagation.setGlobalPropagator(
    new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] }),
  );
  const raw = await rawChannel();
  let done = 0;
  const consumer = createConsumer<{ id: string }>({
    connection: env.amqpUrl,
    queue,
    consumer: 'cli-trace',
    store: createRedisStore({ client: redis, keyPrefix: storePrefix(queue) }),
    retryDelaysMs: [100],
    retentionCheck: 'off',
    handler: async (_p, ctx) => {
      await ctx.step('charge', async () => ({ chargeId: 'ch_1' }));
      done++;
    },
  });
  const publisher = createPublisher({ connection: env.amqpUrl });
  try {
    await consumer.start();
    await publisher.send(queue, { id: '1' }, { requestId, idempotencyKey: `key-${requestId}` });
    await publisher.send(queue, { id: '2' }, { requestId: longId, idempotencyKey: `key-long-${requestId}` });
    await waitUntil(() => done === 2, { message: 'the messages processed' });
    for (let copy = 0; copy < 2; copy++) {
      await publisher.send(queue, { id: '3' }, { requestId: twiceId, idempotencyKey: `key-${twiceId}` });
      await waitUntil(() => consumer.stats.acked === 3 + copy, { message: `copy ${copy} acked` });
    }
  } finally {
    await consumer.stop();
    await publisher.close();
    await raw.deleteQueues(queuesOf(queue, [100]));
    await raw.close();
  }
  await provider.forceFlush();
}, 120_000);

afterAll(async () => {
  await provider.shutdown();
  await closeRedis(redis);
  trace.disable();
  context.disable();
  propagation.disable();
});

const flatten = (nodes: Node[]): Node[] => nodes.flatMap((n) => [n, ...flatten(n.children)]);

describe('trace', () => {
  it('prints the span tree of a request found by its request id', async () => {
    // Jaeger indexes spans shortly after they arrive: ask until the process span is there.
    const found = await waitUntil(
      async () => {
        const r = await cli(['trace', requestId, '--service', service, '--json']);
        if (r.code !== 0) return undefined;
        const out = JSON.parse(r.stdout) as {
          traces: { traceId: string; services: string[]; spans: number; tree: Node[] }[];
        };
        const spans = flatten(out.traces[0]?.tree ?? []);
        return spans.some((s) => s.outcome === 'acquired') && spans.some((s) => s.name.includes('charge'))
          ? out
          : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 1_000, message: `trace of ${requestId} in Jaeger` },
    );
    expect(found.traces).toHaveLength(1);
    const [t] = found.traces;
    expect(t?.services).toEqual([service]);
    // One root (the publisher's send), the process span under it, the step under that.
    expect(t?.tree).toHaveLength(1);
    const root = t?.tree[0] as Node;
    expect(root.name).toBe(`send ${queue}`);
    const process = flatten([root]).find((n) => n.outcome === 'acquired') as Node;
    expect(flatten(process.children).some((n) => n.name.includes('charge'))).toBe(true);

    const text = await cliText(['trace', requestId, '--service', service]);
    const lines = text.split('\n');
    expect(lines[0]).toMatch(
      new RegExp(`^trace ${t?.traceId}  request ${requestId}  ${t?.spans} span\\(s\\)  ${service}`),
    );
    expect(text).toMatch(/offset\s+duration\s+service\s+span/);
    expect(text).toMatch(new RegExp(`ms  ${service}\\s+send ${queue}`));
    expect(text).toMatch(/[└├]─ .*\[acquired\]/);
    expect(text).toMatch(/ {3}[└├]─ .*charge/);
    expect(text).toContain(`/api/traces/${t?.traceId}`);
    // Without --service it asks Jaeger for every service it knows.
    expect(await cliText(['trace', requestId])).toContain(`trace ${t?.traceId}`);
  }, 120_000);

  it("shows a duplicate's link to the run that completed its record, in another trace", async () => {
    const found = await waitUntil(
      async () => {
        const r = await cli(['trace', twiceId, '--service', service, '--json']);
        if (r.code !== 0) return undefined;
        const out = JSON.parse(r.stdout) as { traces: { traceId: string; tree: Node[] }[] };
        const outcomes = out.traces.flatMap((t) => flatten(t.tree).map((n) => n.outcome));
        return outcomes.includes('acquired') && outcomes.includes('duplicate') ? out : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 1_000, message: `both traces of ${twiceId} in Jaeger` },
    );
    const [first, second] = found.traces;
    const completed = flatten(first?.tree ?? []).find((n) => n.outcome === 'acquired');
    const duplicate = flatten(second?.tree ?? []).find((n) => n.outcome === 'duplicate');
    expect(duplicate?.links).toEqual([{ traceId: first?.traceId, spanId: expect.any(String) }]);
    expect(completed).toBeDefined();
    // Before: nothing said where the first run was (Zipkin drops links; Jaeger keeps them).
    expect(await cliText(['trace', twiceId, '--service', service])).toMatch(
      new RegExp(`\\[duplicate\\] \\(linked to trace ${first?.traceId}\\)`),
    );
  }, 120_000);

  it('finds a request id over 255 bytes as sent and in its sha256: form', async () => {
    const hashed = `sha256:${createHash('sha256').update(longId).digest('hex')}`;
    const traceIds = async (id: string) => {
      const r = await cli(['trace', id, '--service', service, '--json']);
      if (r.code !== 0) return undefined;
      const out = JSON.parse(r.stdout) as { requestId: string; traces: { traceId: string }[] };
      return { requestId: out.requestId, traceIds: out.traces.map((t) => t.traceId) };
    };
    const asSent = await waitUntil(() => traceIds(longId), {
      timeoutMs: 60_000,
      intervalMs: 1_000,
      message: 'the long request id in Jaeger',
    });
    expect(asSent.requestId).toBe(hashed);
    expect(await traceIds(hashed)).toEqual(asSent);
    const empty = await cli(['trace', '']);
    expect(empty.code).toBe(2);
    expect(empty.stderr).toMatch(/<request-id>: request id is empty/);
  }, 120_000);

  it('an unknown request id or an unreachable Jaeger exits 1', async () => {
    const none = await cli(['trace', uniqueName('nothing'), '--service', service]);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/no trace with exactly_once\.request_id=nothing-/);
    const down = await cli(['trace', requestId, '--jaeger', 'http://127.0.0.1:9']);
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/cannot reach Jaeger at http:\/\/127\.0\.0\.1:9/);
    const bad = await cli(['trace', requestId, '--jaeger', 'jaeger']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/--jaeger: "jaeger" is not a URL/);
  });
});
