/**
 * Record -> delivery mapping of headers kafkajs hands over as `null`: a header written without a
 * value (length -1 on the wire, which Java producers write for a null header). kafkajs itself
 * cannot produce one, so this is checked on the mapping, with core's key reading on top.
 */
import { InvalidKeyError, readIdentityHeader } from '@exactly-once/core';
import { describe, expect, it } from 'vitest';
import type { KafkaMessageLike } from '../src/client.js';
import { copyHeaders, deadLetterRecord, toDelivery } from '../src/delivery.js';

function record(headers: KafkaMessageLike['headers']): KafkaMessageLike {
  return { key: null, value: Buffer.from('{}'), offset: '7', timestamp: '0', headers };
}

describe('kafka delivery: null-valued headers', () => {
  it('a null key header beside the key in another case is two key headers: refused, not read from the second', () => {
    const delivery = toDelivery(
      't',
      0,
      record({ 'x-idempotency-key': null, 'X-Idempotency-Key': Buffer.from('k') }),
      'g',
      false,
    );
    expect(() => readIdentityHeader(delivery.headers, 'x-idempotency-key')).toThrow(InvalidKeyError);
  });

  it('a null key header alone reads as no key', () => {
    const delivery = toDelivery('t', 0, record({ 'x-idempotency-key': null }), 'g', false);
    expect(readIdentityHeader(delivery.headers, 'x-idempotency-key')).toBeUndefined();
  });

  it('a copy keeps a null header as an empty one (kafkajs cannot produce null), so it stays as ambiguous', () => {
    const headers = copyHeaders({
      'x-idempotency-key': null,
      'X-Idempotency-Key': Buffer.from('k'),
      other: [null, 'v'],
    });
    expect(headers).toEqual({
      'x-idempotency-key': '',
      'X-Idempotency-Key': Buffer.from('k'),
      other: ['', 'v'],
    });
    expect(() => readIdentityHeader(headers, 'x-idempotency-key')).toThrow(InvalidKeyError);
  });
});

describe('kafka copies: headers', () => {
  const reason = {
    error: { name: 'PermanentError', code: 'PERMANENT', message: 'no' },
    attempts: 1,
    consumer: 'c',
    originalDestination: 't',
    at: 0,
  };

  it('a header named __proto__ is kept on the copy', () => {
    const headers = JSON.parse('{"__proto__": "p", "x-idempotency-key": "k"}') as Record<string, string>;
    const copy = deadLetterRecord('t', 0, record(headers), reason, false);
    expect(Object.keys(copy.headers ?? {})).toContain('__proto__');
    expect(Object.getOwnPropertyDescriptor(copy.headers, '__proto__')?.value).toBe('p');
  });

  it("origin headers a producer set on a source topic are replaced by the record's own; a retry copy keeps them", () => {
    const forged = { 'x-eo-original-topic': 'elsewhere', 'x-eo-original-offset': '999' };
    const fromSource = deadLetterRecord('orders', 3, record(forged), reason, false);
    expect(fromSource.headers).toMatchObject({
      'x-eo-original-topic': 'orders',
      'x-eo-original-partition': '3',
      'x-eo-original-offset': '7',
    });
    const fromRetry = deadLetterRecord('orders.retry', 0, record(forged), reason, true);
    expect(fromRetry.headers).toMatchObject({
      'x-eo-original-topic': 'elsewhere',
      'x-eo-original-offset': '999',
    });
  });
});
