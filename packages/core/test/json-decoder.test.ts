/** jsonDecoder: size and content-type limits on the default JSON decoding, dead-lettered with why. */
import { describe, expect, expectTypeOf, it } from 'vitest';
import { z } from 'zod';
import { jsonDecoder } from '../src/codec.js';
import { ConfigError } from '../src/errors.js';
import { createProcessor } from '../src/processor.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import { delivery } from './helpers.js';

const enc = new TextEncoder();

function processor(decode: ReturnType<typeof jsonDecoder>) {
  const seen: unknown[] = [];
  const p = createProcessor({
    consumer: 'c',
    store: createMemoryStore(),
    retentionCheck: 'off',
    decode,
    handler: (payload) => {
      seen.push(payload);
    },
  });
  return { p, seen };
}

async function refusal(
  decode: ReturnType<typeof jsonDecoder>,
  body: unknown,
  headers: Record<string, unknown>,
) {
  const { p, seen } = processor(decode);
  const d = await p.process(delivery(body, { 'x-idempotency-key': 'k', ...headers } as never));
  expect(seen).toEqual([]);
  if (d.action !== 'dead-letter') throw new Error(`not dead-lettered: ${d.action}`);
  expect(d.reason.error.code).toBe('MALFORMED_MESSAGE');
  return d.reason.error.message;
}

describe('jsonDecoder', () => {
  const json = { 'content-type': 'application/json' };

  it('refuses a body over maxBytes before reading it, and takes one of exactly maxBytes', async () => {
    const body = { pad: 'x'.repeat(100) };
    const size = enc.encode(JSON.stringify(body)).byteLength;
    expect(await refusal(jsonDecoder({ maxBytes: size - 1 }), body, {})).toBe(
      `message body of ${size} bytes is over maxBytes ${size - 1}`,
    );
    const { p, seen } = processor(jsonDecoder({ maxBytes: size }));
    expect(await p.process(delivery(body, { 'x-idempotency-key': 'k' }))).toMatchObject({ action: 'ack' });
    expect(seen).toEqual([body]);
  });

  it('takes the listed media types whatever their parameters and case, as strings or bytes', async () => {
    const { p, seen } = processor(jsonDecoder({ contentTypes: ['application/json'] }));
    const headers: Record<string, string | Uint8Array>[] = [
      { 'content-type': 'application/json' },
      { 'content-type': 'Application/JSON; charset=utf-8' },
      // Kafka headers arrive as bytes.
      { 'content-type': enc.encode('application/json') },
      // No content-type at all: passes unless requireContentType.
      {},
    ];
    for (const [i, h] of headers.entries()) {
      const d = await p.process(delivery({ i }, { 'x-idempotency-key': `k${i}`, ...h }));
      expect(d).toMatchObject({ action: 'ack' });
    }
    expect(seen).toHaveLength(4);
  });

  it('refuses other content types, and a missing one with requireContentType', async () => {
    const only = jsonDecoder({ contentTypes: ['application/json'] });
    expect(await refusal(only, { a: 1 }, { 'content-type': 'text/plain' })).toBe(
      'message content-type "text/plain" is not accepted',
    );
    expect(await refusal(only, { a: 1 }, { 'content-type': 'application/octet-stream' })).toContain(
      'not accepted',
    );
    const strict = jsonDecoder({ contentTypes: ['application/json'], requireContentType: true });
    expect(await refusal(strict, { a: 1 }, {})).toBe('message has no content-type, and one is required');
    const { p } = processor(strict);
    expect(await p.process(delivery({ a: 1 }, { 'x-idempotency-key': 'k', ...json }))).toMatchObject({
      action: 'ack',
    });
  });

  it('still refuses a body that is not JSON', async () => {
    expect(await refusal(jsonDecoder({ maxBytes: 1000 }), 'not json', json)).toContain('not valid JSON');
  });

  it('refuses options that would limit nothing or everything', () => {
    expect(() => jsonDecoder({ maxBytes: 0 })).toThrow(ConfigError);
    expect(() => jsonDecoder({ maxBytes: 1.5 })).toThrow(ConfigError);
    expect(() => jsonDecoder({ contentTypes: [] })).toThrow(ConfigError);
    expect(() => jsonDecoder({ contentTypes: [' ; charset=utf-8'] })).toThrow(ConfigError);
    expect(() => jsonDecoder({ requireContentType: true })).toThrow(ConfigError);
  });
});

describe('jsonDecoder types', () => {
  it('gives the payload the type of the schema or of the processor', async () => {
    const Order = z.object({ orderId: z.string(), amount: z.number() });
    const seen: string[] = [];
    const withSchema = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      retentionCheck: 'off',
      decode: jsonDecoder({ maxBytes: 1000 }),
      schema: Order,
      handler: (order) => {
        expectTypeOf(order).toEqualTypeOf<{ orderId: string; amount: number }>();
        seen.push(order.orderId);
      },
    });
    const typed = createProcessor<{ orderId: string }>({
      consumer: 'c',
      store: createMemoryStore(),
      retentionCheck: 'off',
      decode: jsonDecoder({ contentTypes: ['application/json'] }),
      handler: (order) => {
        seen.push(order.orderId);
      },
    });
    const order = { orderId: 'o1', amount: 5 };
    await withSchema.process(delivery(order, { 'x-idempotency-key': 'k1' }));
    await typed.process(delivery(order, { 'x-idempotency-key': 'k2' }));
    expect(seen).toEqual(['o1', 'o1']);
  });
});
