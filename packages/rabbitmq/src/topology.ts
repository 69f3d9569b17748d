/**
 * Queue topology for retries and dead letters:
 *
 *   work queue ──(retry copy, confirmed)──▶ <queue>.retry.<delay>  (x-message-ttl = delay)
 *        ▲                                        │ expires
 *        └────────── default exchange, routing key <queue> ◀──┘
 *   work queue ──(dead-letter copy, confirmed)──▶ <queue>.dlq
 *
 * One queue per delay tier (not per-message expiration): RabbitMQ only expires messages at the
 * head of a queue, so mixed delays in one queue would hold short ones behind long ones.
 */
import { ConfigError } from '@exactly-once/core';
import { refuseUnknownOptions } from '@exactly-once/core/spi';
import type { Channel } from 'amqplib';

export interface TopologyOptions {
  /** The work queue. */
  queue: string;
  /** Delay tiers for retries, ascending. @defaultValue [1000, 5000, 30000, 120000, 600000] */
  retryDelaysMs?: readonly number[];
  /**
   * Where dead letters go: `queue`, declared with the other queues. Must not be the work queue
   * or a retry queue. @defaultValue `{ queue: '<queue>.dlq' }`
   */
  deadLetter?: { queue?: string };
  /**
   * `quorum` survives node loss in a cluster and is RabbitMQ's recommendation for durable work;
   * `classic` for brokers where quorum queues are unavailable. Must match an existing queue.
   * @defaultValue 'quorum'
   */
  queueType?: 'quorum' | 'classic';
}

export interface Topology {
  readonly queue: string;
  /** The resolved dead-letter queue (`deadLetter.queue`, or `<queue>.dlq`). */
  readonly deadLetterQueue: string;
  /** `[delayMs, queueName]`, ascending. */
  readonly retryQueues: readonly (readonly [number, string])[];
}

export const DEFAULT_RETRY_DELAYS_MS: readonly number[] = Object.freeze([
  1_000, 5_000, 30_000, 120_000, 600_000,
]);

export function topologyFor(options: TopologyOptions): Topology {
  if ((options as { deadLetterQueue?: unknown }).deadLetterQueue !== undefined) {
    // Renamed to match the Kafka consumer's deadLetter: { topic }; silently ignoring the old
    // name would send dead letters to the default queue instead.
    throw new ConfigError('deadLetterQueue was renamed: use deadLetter: { queue: "<name>" }');
  }
  if (typeof options.deadLetter === 'object' && options.deadLetter !== null) {
    refuseUnknownOptions(options.deadLetter, { queue: true }, 'deadLetter');
  }
  const given = options.retryDelaysMs ?? DEFAULT_RETRY_DELAYS_MS;
  if (given.length === 0 || !given.every((d) => Number.isInteger(d) && d > 0)) {
    // x-message-ttl must be a positive integer; the broker would refuse the declare.
    throw new ConfigError('retryDelaysMs must be a non-empty list of positive integers (ms)');
  }
  const delays = [...new Set(given)].sort((a, b) => a - b);
  const retryQueues = delays.map((d) => [d, `${options.queue}.retry.${d}`] as const);
  const deadLetterQueue = options.deadLetter?.queue ?? `${options.queue}.dlq`;
  if (typeof deadLetterQueue !== 'string' || deadLetterQueue.length === 0) {
    throw new ConfigError('deadLetter.queue must be a queue name (or unset for "<queue>.dlq")');
  }
  if (deadLetterQueue === options.queue || retryQueues.some(([, name]) => name === deadLetterQueue)) {
    throw new ConfigError(
      `deadLetter.queue "${deadLetterQueue}" is the work queue or one of its retry queues: dead letters ` +
        'would be consumed and fail again, in a loop. Use a queue of its own.',
    );
  }
  return { queue: options.queue, deadLetterQueue, retryQueues };
}

/** The retry queue whose delay is the smallest one at least `delayMs` (or the longest). */
export function retryQueueFor(topology: Topology, delayMs: number): string {
  const tier = topology.retryQueues.find(([d]) => d >= delayMs) ?? topology.retryQueues.at(-1);
  if (!tier) throw new Error('topology has no retry queues');
  return tier[1];
}

/**
 * Declares the work queue, its retry tiers and its dead-letter queue (idempotent).
 *
 * @example
 * ```ts
 * await declareTopology(channel, { queue: 'orders', retryDelaysMs: [1000, 10000], deadLetter: { queue: 'orders.dead' } });
 * ```
 */
export async function declareTopology(channel: Channel, options: TopologyOptions): Promise<Topology> {
  const topology = topologyFor(options);
  const type = options.queueType ?? 'quorum';
  const typeArgs = { 'x-queue-type': type };
  await channel.assertQueue(topology.queue, { durable: true, arguments: typeArgs });
  await channel.assertQueue(topology.deadLetterQueue, { durable: true, arguments: typeArgs });
  for (const [delay, name] of topology.retryQueues) {
    await channel.assertQueue(name, {
      durable: true,
      arguments: {
        ...typeArgs,
        'x-message-ttl': delay,
        'x-dead-letter-exchange': '',
        'x-dead-letter-routing-key': topology.queue,
        // Quorum queues dead-letter at most once by default; expiry is our delivery path.
        ...(type === 'quorum'
          ? { 'x-dead-letter-strategy': 'at-least-once', 'x-overflow': 'reject-publish' }
          : {}),
      },
    });
  }
  return topology;
}

/**
 * Checks that the work, retry and dead-letter queues exist (for `topology: 'assume'`). A missing
 * one fails here, at start, rather than as retry copies the broker has nowhere to put.
 */
export async function checkTopology(channel: Channel, topology: Topology): Promise<void> {
  for (const name of [topology.queue, topology.deadLetterQueue, ...topology.retryQueues.map(([, n]) => n)]) {
    await channel.checkQueue(name);
  }
}
