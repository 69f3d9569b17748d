import { Headers } from '@exactly-once/core';
import type { ConsumeMessage } from 'amqplib';
import { describe, expect, it } from 'vitest';
import { deadLetterCopyOptions, retryCopyOptions, toDelivery } from '../src/delivery.js';

const message = (headers: Record<string, unknown>, messageId?: string): ConsumeMessage =>
  ({
    content: Buffer.from('{"a":1}'),
    fields: { deliveryTag: 7, redelivered: true, exchange: 'ex', routingKey: 'rk', consumerTag: 'c' },
    properties: { headers, contentType: 'application/json', ...(messageId ? { messageId } : {}) },
  }) as unknown as ConsumeMessage;

describe('delivery mapping', () => {
  it('maps headers, the message id and span attributes', () => {
    const d = toDelivery(
      message({ 'x-idempotency-key': 'k1', n: 3, b: Buffer.from('x'), 'x-death': [{ count: 1 }] }, 'm-1'),
      'orders',
    );
    expect(d.system).toBe('rabbitmq');
    expect(d.destination).toBe('orders');
    expect(d.brokerId).toBe('amqp:m-1');
    // Nested tables (x-death) are not core header values; scalars and bytes are kept.
    expect(Object.keys(d.headers).sort()).toEqual([
      'b',
      'content-type',
      'message-id',
      'n',
      'x-idempotency-key',
    ]);
    expect(d.attributes).toMatchObject({
      'messaging.rabbitmq.destination.routing_key': 'rk',
      'messaging.rabbitmq.message.delivery_tag': 7,
      'messaging.message.id': 'm-1',
      'exactly_once.redelivered': true,
    });
    expect(toDelivery(message({}), 'orders').brokerId).toBeUndefined();
  });

  it('hands the content type and encoding properties to decode as headers, a sent header first', () => {
    const gzip = {
      ...message({}),
      properties: { headers: {}, contentType: 'text/plain', contentEncoding: 'gzip' },
    } as unknown as ConsumeMessage;
    expect(toDelivery(gzip, 'orders').headers).toEqual({
      'content-type': 'text/plain',
      'content-encoding': 'gzip',
    });
    const both = message({ 'content-type': 'application/xml' });
    expect(toDelivery(both, 'orders').headers['content-type']).toBe('application/xml');
  });

  it('hands the identity headers to core exactly as decoded, whatever their type, for core to refuse', () => {
    const raw = {
      'x-idempotency-key': [1, 'a'],
      'X-Idempotency-Key': 'b',
      'x-request-id': { nested: true },
      other: { nested: true },
    };
    const d = toDelivery(message(raw), 'orders');
    expect(d.headers['x-idempotency-key']).toEqual([1, 'a']);
    expect(d.headers['X-Idempotency-Key']).toBe('b');
    expect(d.headers['x-request-id']).toEqual({ nested: true });
    expect(d.headers.other).toBeUndefined(); // other tables are still left out
  });

  it('copies keep every original header and add the attempt or the reason', () => {
    const original = message({ 'x-idempotency-key': 'k1', 'x-death': [{ count: 1 }] }, 'm-1');
    const retry = retryCopyOptions(original, 3);
    expect(retry).toMatchObject({ persistent: true, messageId: 'm-1', contentType: 'application/json' });
    expect(retry.headers).toMatchObject({ 'x-idempotency-key': 'k1', [Headers.Attempt]: '3' });
    // Nested tables go to amqplib stated as tables (a field named `!` would read as a type marker).
    expect(retry.headers?.['x-death']).toEqual([{ '!': 'object', value: { count: 1 } }]);
    const dead = deadLetterCopyOptions(original, {
      error: { name: 'PermanentError', code: 'PERMANENT', message: 'no' },
      attempts: 2,
      consumer: 'billing',
      originalDestination: 'orders',
      at: 0,
    });
    expect(dead.headers).toMatchObject({
      'x-idempotency-key': 'k1',
      [Headers.ErrorCode]: 'PERMANENT',
      [Headers.Attempts]: '2',
      [Headers.OriginalDestination]: 'orders',
      'x-eo-original-exchange': 'ex',
      'x-eo-original-routing-key': 'rk',
    });
  });
});
