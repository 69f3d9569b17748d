/**
 * RabbitMQ (amqplib) driver. Every queue is declared with the SDK's own `declareTopology` (work,
 * retry and dead-letter queues, same queue type) whether the raw or the SDK consumer reads it, and
 * both consume with the same prefetch and ack each message after its handler.
 */
import type { ProcessedStore } from '@exactly-once/core';
import { createConsumer, declareTopology, topologyFor } from '@exactly-once/rabbitmq';
import amqplib, { type ChannelModel, type ConfirmChannel } from 'amqplib';
import type { Driver, Handle, Running, Source } from './consume.js';
import { instrument } from './consume.js';
import { env, uniqueName } from './env.js';
import type { Meter } from './stats.js';
import { handler, message, type Order } from './workload.js';

export type QueueType = 'quorum' | 'classic';
const RETENTION = { retentionMs: 3_600_000, retentionCheck: 'off' } as const;

/** Publishes with confirms, at most `window` unconfirmed; resolves when all are confirmed. */
export async function publishConfirmed(
  channel: ConfirmChannel,
  count: number,
  window: number,
  publish: (i: number, done: (err: unknown) => void) => boolean,
  onInFlight?: (n: number) => void,
): Promise<void> {
  let inFlight = 0;
  let failure: unknown;
  let wake: (() => void) | undefined;
  const settled = (err: unknown) => {
    inFlight--;
    if (err) failure ??= err;
    wake?.();
  };
  for (let i = 0; i < count; i++) {
    while (inFlight >= window && failure === undefined) await new Promise<void>((r) => (wake = r));
    if (failure !== undefined) break;
    inFlight++;
    onInFlight?.(inFlight);
    // A full socket buffer: wait for it to drain rather than queue unbounded bytes in memory.
    if (!publish(i, settled)) await new Promise<void>((r) => channel.once('drain', () => r()));
  }
  while (inFlight > 0 && failure === undefined) await new Promise<void>((r) => (wake = r));
  if (failure !== undefined) throw failure;
}

/** An amqplib connection whose `error` events are reported through the failing calls instead. */
export async function connect(): Promise<ChannelModel> {
  const connection = await amqplib.connect(env.amqpUrl);
  connection.on('error', () => {});
  return connection;
}

export class RabbitDriver implements Driver {
  readonly broker = 'rabbitmq' as const;
  private connection: ChannelModel | undefined;
  private channel: ConfirmChannel | undefined;

  constructor(
    private readonly prefetch: number,
    readonly queueType: QueueType,
  ) {}

  /**
   * A confirm channel for declaring, pre-loading and deleting queues; opened again after the
   * broker closed it (other work on a shared machine may restart the broker).
   */
  async admin(): Promise<ConfirmChannel> {
    if (!this.channel) {
      const connection = await connect();
      const channel = await connection.createConfirmChannel();
      channel.on('error', () => {});
      const reset = () => {
        if (this.channel === channel) this.channel = undefined;
      };
      channel.once('close', reset);
      connection.once('close', reset);
      this.connection = connection;
      this.channel = channel;
    }
    return this.channel;
  }

  async prepare(batch: string, messages: number): Promise<Source> {
    const channel = await this.admin();
    const queue = uniqueName(`eo-bench-${batch}`);
    await declareTopology(channel, { queue, queueType: this.queueType });
    await publishConfirmed(channel, messages, 2000, (i, done) => {
      const m = message(batch, i);
      return channel.sendToQueue(
        queue,
        m.body,
        { persistent: true, messageId: m.key, contentType: 'application/json', headers: m.headers },
        done,
      );
    });
    return new RabbitSource(this, queue, this.prefetch);
  }

  async deleteQueues(queue: string): Promise<void> {
    const topology = topologyFor({ queue });
    for (const q of [queue, topology.deadLetterQueue, ...topology.retryQueues.map(([, name]) => name)]) {
      const channel = await this.admin();
      try {
        await channel.deleteQueue(q);
      } catch {
        // The broker closed the channel (a restart, say): once more on a fresh one.
        if (this.channel === channel) this.channel = undefined;
        await (await this.admin()).deleteQueue(q);
      }
    }
  }

  async close(): Promise<void> {
    await this.channel?.close().catch(() => {});
    await this.connection?.close().catch(() => {});
  }
}

class RabbitSource implements Source {
  constructor(
    private readonly driver: RabbitDriver,
    private readonly queue: string,
    private readonly prefetch: number,
  ) {}

  async startRaw(meter: Meter, handle: Handle, onError: (error: unknown) => void): Promise<Running> {
    const connection = await connect();
    const channel = await connection.createChannel();
    channel.on('error', () => {});
    await channel.prefetch(this.prefetch);
    await channel.consume(this.queue, (msg) => {
      if (msg === null) return;
      const startedAt = meter.start();
      const payload = JSON.parse(msg.content.toString()) as Order;
      const key = String(msg.properties.headers?.['x-idempotency-key']);
      handle(payload, key).then(
        () => {
          channel.ack(msg);
          meter.settle(startedAt);
        },
        (error: unknown) => {
          onError(error);
          channel.nack(msg, false, true); // back to the queue, as a real consumer would
        },
      );
    });
    return {
      async stop() {
        await channel.close().catch(() => {});
        await connection.close().catch(() => {});
      },
    };
  }

  async startSdk(meter: Meter, store: ProcessedStore, outcomes: Record<string, number>): Promise<Running> {
    const consumer = createConsumer<Order>({
      connection: env.amqpUrl,
      queue: this.queue,
      consumer: 'bench',
      queueType: this.driver.queueType,
      prefetch: this.prefetch,
      store,
      handler,
      ...RETENTION,
    });
    instrument(consumer.processor, meter, outcomes);
    await consumer.start();
    return { stop: () => consumer.stop({ timeoutMs: 5_000 }) };
  }

  remove(): Promise<void> {
    return this.driver.deleteQueues(this.queue);
  }
}
