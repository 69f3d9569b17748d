/**
 * Matching `basic.return` to the publish it belongs to, on a scripted channel that hands events
 * over in an order RabbitMQ allows and a test cannot force on a live broker: two publishes of one
 * route pending (retry copies of messages without an id share one), the first routed, the queue
 * deleted, the second returned NO_ROUTE and confirmed at once, the first confirmed after it.
 */
import { EventEmitter } from 'node:events';
import type { ConfirmChannel } from 'amqplib';
import { describe, expect, it } from 'vitest';
import { type KeptChannel, publishConfirmed } from '../src/channel.js';

function scriptedChannel() {
  const channel = new EventEmitter() as EventEmitter & { publish: unknown };
  const published: { headers: Record<string, unknown>; confirm: (error: Error | null) => void }[] = [];
  channel.publish = (
    _exchange: string,
    _key: string,
    _content: Buffer,
    options: { headers?: Record<string, unknown> },
    confirm: (error: Error | null) => void,
  ) => {
    published.push({ headers: options.headers ?? {}, confirm });
    return true;
  };
  const kept = { channel: channel as unknown as ConfirmChannel, generation: 1, open: true, discard() {} };
  return { channel, kept: kept as unknown as KeptChannel, published };
}

const outcome = (p: Promise<void>) =>
  p.then(
    () => 'confirmed',
    (e: Error) => `rejected: ${e.message}`,
  );

describe('publishConfirmed: returns', () => {
  it('a return is pinned on the publish it belongs to when two of one route are pending', async () => {
    const { channel, kept, published } = scriptedChannel();
    const a = outcome(
      publishConfirmed(kept, '', 'orders.retry.1000', Buffer.from('A'), { persistent: true }),
    );
    const b = outcome(
      publishConfirmed(kept, '', 'orders.retry.1000', Buffer.from('B'), { persistent: true }),
    );
    // B is unroutable: its return (with B's headers), then its ack; A's ack comes later.
    channel.emit('return', {
      fields: { exchange: '', routingKey: 'orders.retry.1000', replyCode: 312, replyText: 'NO_ROUTE' },
      properties: { headers: published[1]?.headers },
      content: Buffer.from('B'),
    });
    published[1]?.confirm(null);
    published[0]?.confirm(null);
    expect(await a).toBe('confirmed');
    expect(await b).toMatch(/rejected: unroutable/);
  });

  it('a lone publish carries no marker, and its return is matched by route', async () => {
    const { channel, kept, published } = scriptedChannel();
    const a = outcome(
      publishConfirmed(kept, '', 'q', Buffer.from('A'), { persistent: true, headers: { h: 1 } }),
    );
    expect(published[0]?.headers).toEqual({ h: 1 });
    channel.emit('return', {
      fields: { exchange: '', routingKey: 'q', replyCode: 312, replyText: 'NO_ROUTE' },
      properties: { headers: { h: 1 } },
      content: Buffer.from('A'),
    });
    published[0]?.confirm(null);
    expect(await a).toMatch(/rejected: unroutable/);
  });
});
