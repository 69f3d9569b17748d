/**
 * Outbox drain on RabbitMQ: a backlog of K messages published with broker confirms, at most W
 * unconfirmed at a time, three ways, interleaved per round:
 *
 * - `raw-confirm`: amqplib confirm channel, `sendToQueue` with a confirm callback per message.
 * - `sdk-publisher`: the SDK's RabbitMQ publisher (`createPublisher().publish`), one message each.
 * - `sdk-drain`: the SDK's own recovery path. K COMPLETED records whose outgoing message was never
 *   confirmed are first written through the pipeline (a handler that `ctx.publish`es, with a
 *   publisher that fails, as when the broker is unreachable after `complete`). Then the same K
 *   deliveries come back: each `begin` answers `duplicate`, the pipeline re-publishes the stored
 *   message through the SDK publisher, waits for the confirm, `markPublished`es it and acks.
 *
 * "Max in-flight" is the most messages handed to the publisher and not yet confirmed at once.
 */
import { createProcessor, type OutgoingMessage, PROCESSOR_DEFAULTS } from '@exactly-once/core';
import type { Delivery, OutgoingPublisher } from '@exactly-once/core/spi';
import { createPublisher } from '@exactly-once/rabbitmq';
import { env, sampleLoad, uniqueName } from './env.js';
import type { Progress } from './progress.js';
import { connect, publishConfirmed, type QueueType } from './rabbitmq.js';
import { retried } from './consume.js';
import { median, rotate } from './stats.js';
import type { StoreKit } from './stores.js';
import { message, type Order, quietLogger } from './workload.js';

export const OUTBOX_VARIANTS = ['raw-confirm', 'sdk-publisher', 'sdk-drain'] as const;
export type OutboxVariant = (typeof OUTBOX_VARIANTS)[number];

export interface OutboxRound {
  variant: OutboxVariant;
  round: number;
  messages: number;
  window: number;
  seconds: number;
  rate: number;
  maxInFlight: number;
  /** sdk-drain: store calls per drained message (begin + markPublished expected). */
  storeCallsPerMsg?: number;
  load: number;
}

export interface OutboxOptions {
  rounds: number;
  messages: number;
  window: number;
  queueType: QueueType;
  variants: readonly OutboxVariant[];
}

/** Runs `fn(i)` for i < count with at most `window` running; reports the running count. */
async function windowed(
  count: number,
  window: number,
  fn: (i: number) => Promise<void>,
  onInFlight: (n: number) => void = () => {},
): Promise<void> {
  let next = 0;
  let running = 0;
  const worker = async () => {
    for (let i = next++; i < count; i = next++) {
      onInFlight(++running);
      try {
        await fn(i);
      } finally {
        running--;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(window, count) }, worker));
}

/** The message a handler's `ctx.publish` would produce for message i, for the publisher variants. */
function outgoing(queue: string, batch: string, i: number): OutgoingMessage {
  const m = message(batch, i);
  return {
    id: m.key,
    destination: queue,
    body: Buffer.from(JSON.stringify({ orderId: `o-${i}` })),
    headers: m.headers,
  };
}

export async function runOutbox(options: OutboxOptions, stores: StoreKit, progress: Progress) {
  const rounds: OutboxRound[] = [];
  for (let round = 0; round < options.rounds; round++) {
    for (const variant of rotate(options.variants, round)) {
      const r = await retried(`outbox ${variant}`, progress, () =>
        withQueue(options.queueType, (queue) => runVariant(variant, queue, options, stores, progress)),
      );
      rounds.push({ ...r, variant, round: round + 1, messages: options.messages, window: options.window });
      progress.note(
        `outbox r${round + 1} ${variant.padEnd(13)} ${r.rate.toFixed(0).padStart(7)} msg/s, max in-flight ${r.maxInFlight}`,
      );
    }
  }
  return rounds;
}

/** A fresh durable queue for one run, deleted afterwards (100K messages are not kept around). */
async function withQueue<T>(queueType: QueueType, run: (queue: string) => Promise<T>): Promise<T> {
  const connection = await connect();
  try {
    const admin = await connection.createChannel();
    admin.on('error', () => {});
    const queue = uniqueName('eo-bench-outbox');
    await admin.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': queueType } });
    try {
      return await run(queue);
    } finally {
      // The broker may have closed the channel meanwhile; a new one deletes the queue anyway.
      const cleaner = await connection.createChannel().catch(() => undefined);
      cleaner?.on('error', () => {});
      await cleaner?.deleteQueue(queue).catch(() => {});
    }
  } finally {
    await connection.close().catch(() => {});
  }
}

async function runVariant(
  variant: OutboxVariant,
  queue: string,
  options: OutboxOptions,
  stores: StoreKit,
  progress: Progress,
): Promise<Omit<OutboxRound, 'variant' | 'round' | 'messages' | 'window'>> {
  const { messages: k, window } = options;
  const batch = `ob-${uniqueName('x')}`;
  let done = 0;
  let maxInFlight = 0;
  const seen = (n: number) => {
    if (n > maxInFlight) maxInFlight = n;
  };
  const load = sampleLoad().load1;

  if (variant === 'raw-confirm') {
    const connection = await connect();
    const channel = await connection.createConfirmChannel();
    channel.on('error', () => {});
    const task = progress.track(`outbox raw-confirm`, k, () => done);
    const started = performance.now();
    try {
      await publishConfirmed(
        channel,
        k,
        window,
        (i, settled) => {
          const m = outgoing(queue, batch, i);
          return channel.sendToQueue(
            queue,
            Buffer.from(m.body),
            { persistent: true, messageId: m.id, contentType: 'application/json', headers: m.headers },
            (err) => {
              done++;
              settled(err);
            },
          );
        },
        seen,
      );
      const seconds = (performance.now() - started) / 1000;
      return { seconds, rate: k / seconds, maxInFlight, load };
    } finally {
      task.stop();
      await channel.close().catch(() => {});
      await connection.close().catch(() => {});
    }
  }

  const publisher = createPublisher({ connection: env.amqpUrl });
  await publisher.ready();
  try {
    if (variant === 'sdk-publisher') {
      const task = progress.track('outbox sdk-publisher', k, () => done);
      const started = performance.now();
      await windowed(
        k,
        window,
        async (i) => {
          await publisher.publish([outgoing(queue, batch, i)]);
          done++;
        },
        seen,
      ).finally(() => task.stop());
      const seconds = (performance.now() - started) / 1000;
      return { seconds, rate: k / seconds, maxInFlight, load };
    }
    return await drain(queue, batch, options, stores, publisher, progress);
  } finally {
    await publisher.close();
  }
}

async function drain(
  queue: string,
  batch: string,
  options: OutboxOptions,
  stores: StoreKit,
  publisher: OutgoingPublisher,
  progress: Progress,
): Promise<Omit<OutboxRound, 'variant' | 'round' | 'messages' | 'window'>> {
  const { messages: k, window } = options;
  const store = await stores.make('redis');
  const deliveries: Delivery[] = Array.from({ length: k }, (_, i) => {
    const m = message(batch, i);
    return { body: m.body, headers: m.headers, destination: 'bench-in', system: 'rabbitmq' };
  });
  const common = {
    consumer: 'bench-outbox',
    store: store.store,
    retentionMs: 3_600_000,
    retentionCheck: 'off' as const,
    handler: async (order: Order, ctx: import('@exactly-once/core').HandlerContext) => {
      ctx.publish(queue, { orderId: order.orderId });
      return { ok: true };
    },
  };
  try {
    // 1. The backlog: COMPLETED records whose outgoing message the broker never confirmed.
    const unreachable: OutgoingPublisher = {
      publish: async () => {
        throw new Error('broker unreachable (simulated)');
      },
    };
    const writer = createProcessor<Order>({ ...common, publisher: unreachable, logger: quietLogger });
    let written = 0;
    const writing = progress.track('outbox: writing backlog', k, () => written);
    await windowed(k, 256, async (i) => {
      const d = await writer.process(deliveries[i] as Delivery);
      if (d.outcome !== 'publish-failed') throw new Error(`backlog write: ${d.outcome}`);
      written++;
    }).finally(() => writing.stop());

    // 2. The drain: redeliveries find COMPLETED records and publish what was never confirmed.
    // Another worker drains them (the writer died): its copies leave a record's messages to the
    // worker that completed it for `publishWaitMs` after the completion, so the timed drain starts
    // once the newest record is that old.
    await new Promise((r) => setTimeout(r, PROCESSOR_DEFAULTS.publishWaitMs));
    let inFlight = 0;
    let maxInFlight = 0;
    const counting: OutgoingPublisher = {
      async publish(messages) {
        inFlight += messages.length;
        if (inFlight > maxInFlight) maxInFlight = inFlight;
        try {
          await publisher.publish(messages);
        } finally {
          inFlight -= messages.length;
        }
      },
    };
    const drainer = createProcessor<Order>({ ...common, publisher: counting });
    const callsBefore = store.total();
    let done = 0;
    const task = progress.track('outbox sdk-drain', k, () => done);
    const load = sampleLoad().load1;
    const started = performance.now();
    await windowed(k, window, async (i) => {
      const d = await drainer.process(deliveries[i] as Delivery);
      if (d.action !== 'ack' || d.outcome !== 'duplicate') throw new Error(`drain: ${d.outcome}`);
      done++;
    }).finally(() => task.stop());
    const seconds = (performance.now() - started) / 1000;
    return {
      seconds,
      rate: k / seconds,
      maxInFlight,
      storeCallsPerMsg: (store.total() - callsBefore) / k,
      load,
    };
  } finally {
    await store.cleanup();
  }
}

export interface OutboxSummary {
  variant: OutboxVariant;
  messages: number;
  window: number;
  rate: number;
  vsRaw: number;
  maxInFlight: number;
  storeCallsPerMsg: number;
  load: number;
}

export function summarizeOutbox(rounds: readonly OutboxRound[]): OutboxSummary[] {
  const raw = (round: number) => rounds.find((r) => r.variant === 'raw-confirm' && r.round === round);
  return OUTBOX_VARIANTS.flatMap((variant) => {
    const rs = rounds.filter((r) => r.variant === variant);
    if (rs.length === 0) return [];
    return [
      {
        variant,
        messages: rs[0]?.messages ?? 0,
        window: rs[0]?.window ?? 0,
        rate: median(rs.map((r) => r.rate)),
        vsRaw: median(rs.map((r) => r.rate / (raw(r.round)?.rate ?? Number.NaN))),
        maxInFlight: Math.max(...rs.map((r) => r.maxInFlight)),
        storeCallsPerMsg: median(rs.map((r) => r.storeCallsPerMsg ?? Number.NaN)),
        load: median(rs.map((r) => r.load)),
      },
    ];
  });
}
