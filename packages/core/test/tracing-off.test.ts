/**
 * No OpenTelemetry SDK registered in this file (each test file has its own globals): the
 * pipeline records nothing, and passes its producer's trace headers on to what it publishes.
 */
import { describe, expect, it } from 'vitest';
import { Headers, type MessageHeaders } from '../src/headers.js';
import { createProcessor } from '../src/processor.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import { tracingEnabled } from '../src/tracing.js';
import { delivery, recordingPublisher } from './helpers.js';

const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';

async function publishedHeaders(incoming: MessageHeaders): Promise<Record<string, string>> {
  const publisher = recordingPublisher();
  const p = createProcessor({
    consumer: 'b',
    store: createMemoryStore(),
    publisher,
    retentionCheck: 'off',
    handler: (_, ctx) => ctx.publish('c', { ok: true }, { name: 'next' }),
  });
  const d = await p.process(delivery({}, { [Headers.IdempotencyKey]: 'k', ...incoming } as never));
  expect(d).toMatchObject({ action: 'ack' });
  return publisher.sent[0]?.headers ?? {};
}

describe('tracing without an SDK', () => {
  it('records nothing', () => {
    expect(tracingEnabled()).toBe(false);
  });

  it('passes the producer trace headers on, so the next service continues that trace', async () => {
    // Before: the messages a service without an SDK published carried no trace headers, and the
    // next service started a new trace.
    const headers = await publishedHeaders({
      traceparent,
      tracestate: 'vendor=abc',
      baggage: 'tenant=t1',
      [Headers.RequestId]: 'req-1',
    });
    expect(headers).toMatchObject({ traceparent, tracestate: 'vendor=abc', baggage: 'tenant=t1' });
    expect(headers[Headers.RequestId]).toBe('req-1');
  });

  it.each([
    ['a malformed traceparent', { traceparent: 'not-a-traceparent' }, 'traceparent'],
    ['a tracestate over 512 characters', { traceparent, tracestate: `v=${'a'.repeat(600)}` }, 'tracestate'],
    ['a baggage over 8 KB', { traceparent, baggage: `k=${'b'.repeat(9_000)}` }, 'baggage'],
    ['a traceparent that is not UTF-8', { traceparent: Uint8Array.of(0xff) }, 'traceparent'],
  ])('leaves out %s and processes the message', async (_, incoming, left) => {
    const headers = await publishedHeaders(incoming);
    expect(headers[left]).toBeUndefined();
  });
});
