/** The settler's choice of `multiple` acks, against a channel that records what it was told. */
import type { ConfirmChannel, ConsumeMessage } from 'amqplib';
import { describe, expect, it } from 'vitest';
import { createSettler } from '../src/acks.js';

function recorder() {
  const frames: string[] = [];
  const channel = {
    ack: (m: ConsumeMessage, multiple = false) =>
      frames.push(`ack ${m.fields.deliveryTag}${multiple ? '+' : ''}`),
    nack: (m: ConsumeMessage) => frames.push(`nack ${m.fields.deliveryTag}`),
  } as unknown as ConfirmChannel;
  return { channel, frames };
}
const msg = (tag: number) => ({ fields: { deliveryTag: tag } }) as ConsumeMessage;
const turn = () => new Promise((r) => setImmediate(r));

describe('settler', () => {
  it('acks a run of the oldest outstanding deliveries with one multiple ack', async () => {
    const { channel, frames } = recorder();
    const s = createSettler(channel);
    for (let t = 1; t <= 6; t++) s.received(msg(t));
    for (const t of [3, 1, 2, 5]) s.ack(msg(t));
    await turn();
    // 1..3 together; 5 alone because 4 is still being processed.
    expect(frames).toEqual(['ack 3+', 'ack 5']);
    s.ack(msg(4));
    s.ack(msg(6));
    await turn();
    expect(frames.slice(2)).toEqual(['ack 6+']);
  });

  it('never covers a requeued or unsettled delivery with a multiple ack', async () => {
    const { channel, frames } = recorder();
    const s = createSettler(channel);
    for (let t = 1; t <= 4; t++) s.received(msg(t));
    s.requeue(msg(1));
    s.ack(msg(2));
    s.ack(msg(4));
    await turn();
    expect(frames).toEqual(['nack 1', 'ack 2', 'ack 4']);
  });

  it('a single ack is not multiple; flush sends at once', () => {
    const { channel, frames } = recorder();
    const s = createSettler(channel);
    s.received(msg(7));
    s.received(msg(8));
    s.ack(msg(8));
    s.flush();
    expect(frames).toEqual(['ack 8']);
  });

  it('tells each ack once it was written, and never one the closed channel refused', async () => {
    const { channel } = recorder();
    const s = createSettler(channel);
    const sent: number[] = [];
    for (let t = 1; t <= 3; t++) s.received(msg(t));
    s.ack(msg(1), () => sent.push(1));
    s.ack(msg(2), () => sent.push(2));
    await turn();
    expect(sent).toEqual([1, 2]);
    (channel as unknown as { ack: () => void }).ack = () => {
      throw new Error('Channel closed');
    };
    s.ack(msg(3), () => sent.push(3));
    await turn();
    expect(sent).toEqual([1, 2]);
  });
});
