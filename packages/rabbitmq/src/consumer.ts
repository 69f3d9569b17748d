/** `createConsumer`: a RabbitMQ consumer that runs every delivery through core's pipeline. */
import {
  ConfigError,
  type Logger,
  type Outcome,
  type ProcessorOptions,
  silentLogger,
  toErrorInfo,
} from '@exactly-once/core';
import { createProcessor, type Disposition, type Processor, sleep } from '@exactly-once/core/spi';
import type { ConfirmChannel, ConsumeMessage } from 'amqplib';
import type { ChannelWrapper } from 'amqp-connection-manager';
import { type ConnectionInput, resolveConnection } from './connection.js';
import { deadLetterCopyOptions, retryCopyOptions, toDelivery } from './delivery.js';
import { createPublisher, type RabbitPublisher } from './publisher.js';
import {
  declareTopology,
  retryQueueFor,
  type Topology,
  type TopologyOptions,
  topologyFor,
} from './topology.js';

export interface RabbitConsumerOptions<T = unknown, R = unknown>
  extends Omit<ProcessorOptions<T, R>, 'publisher'>,
    Omit<TopologyOptions, 'queue'> {
  connection: ConnectionInput;
  queue: string;
  /** Unacked deliveries at once; bounds concurrency. @defaultValue 16 */
  prefetch?: number;
  /**
   * `declare`: assert the work, retry and dead-letter queues at start (idempotent).
   * `assume`: they exist already (e.g. declared by infrastructure code). @defaultValue 'declare'
   */
  topology?: 'declare' | 'assume';
  /**
   * Publisher for the handler's `ctx.publish` messages (any core OutgoingPublisher, e.g. a Kafka
   * producer). @defaultValue a RabbitMQ publisher on the same connection
   */
  publisher?: import('@exactly-once/core').OutgoingPublisher;
}

export interface ConsumerStats {
  received: number;
  byOutcome: Partial<Record<Outcome, number>>;
  acked: number;
  retried: number;
  deadLettered: number;
  deferred: number;
  inFlight: number;
}

export interface RabbitConsumer {
  /** Connects (retrying until the broker is reachable), declares the topology and consumes. */
  start(): Promise<void>;
  /**
   * Cancels the subscription, lets in-flight deliveries finish within `timeoutMs`, then closes.
   * Unfinished deliveries are not acked: the broker redelivers them.
   */
  stop(options?: { timeoutMs?: number }): Promise<void>;
  readonly processor: Processor;
  readonly topology: Topology;
  readonly stats: Readonly<ConsumerStats>;
}

/**
 * @example
 * ```ts
 * const consumer = createConsumer({
 *   connection: 'amqp://127.0.0.1', queue: 'orders', consumer: 'billing',
 *   store: createRedisStore({ client: new Redis() }),
 *   handler: async (order, ctx) => chargeCard(order, { idempotencyKey: ctx.keyFor('charge') }),
 * });
 * await consumer.start();
 * ```
 */
export function createConsumer<T = unknown, R = unknown>(
  options: RabbitConsumerOptions<T, R>,
): RabbitConsumer {
  const {
    connection,
    queue,
    prefetch = 16,
    topology: topologyMode = 'declare',
    retryDelaysMs,
    deadLetterQueue,
    queueType,
    publisher: givenPublisher,
    ...rest
  } = options;
  if (!connection) throw new ConfigError('connection (an AMQP URL or connection manager) is required');
  if (typeof queue !== 'string' || queue.length === 0) throw new ConfigError('queue is required');
  if (!Number.isInteger(prefetch) || prefetch < 1) throw new ConfigError('prefetch must be an integer >= 1');
  const topologyOptions: TopologyOptions = {
    queue,
    ...(retryDelaysMs ? { retryDelaysMs } : {}),
    ...(deadLetterQueue ? { deadLetterQueue } : {}),
    ...(queueType ? { queueType } : {}),
  };
  const topology = topologyFor(topologyOptions);
  const logger: Logger = rest.logger ?? silentLogger;
  const { manager, owned } = resolveConnection(connection);
  const ownPublisher: RabbitPublisher | undefined = givenPublisher
    ? undefined
    : createPublisher({ connection: manager });
  const publisher = givenPublisher ?? (ownPublisher as RabbitPublisher);
  const processor = createProcessor<T, R>({ ...rest, publisher });
  const stats: ConsumerStats = {
    received: 0,
    byOutcome: {},
    acked: 0,
    retried: 0,
    deadLettered: 0,
    deferred: 0,
    inFlight: 0,
  };
  const inFlight = new Set<Promise<void>>();
  const closed = new WeakSet<ConfirmChannel>();
  const consumerTags = new Map<ConfirmChannel, string>();
  let stopping = false;
  let wrapper: ChannelWrapper | undefined;

  // Each setup run gets a fresh raw channel; deliveries remember theirs. A delivery tag is only
  // meaningful on its own channel, so a channel that closed is never used to settle anything.
  const setup = async (channel: ConfirmChannel) => {
    channel.once('close', () => closed.add(channel));
    if (topologyMode === 'declare') await declareTopology(channel, topologyOptions);
    await channel.prefetch(prefetch);
    await subscribe(channel);
  };

  const subscribe = async (channel: ConfirmChannel) => {
    if (stopping) return;
    const { consumerTag } = await channel.consume(queue, (msg) => {
      if (msg === null) {
        // The server cancelled us (queue deleted or failed over): subscribe again when it is back.
        consumerTags.delete(channel);
        logger.warn('consumer cancelled by the broker; re-subscribing', { queue });
        void resubscribe(channel);
        return;
      }
      const run = handle(channel, msg).finally(() => inFlight.delete(run));
      inFlight.add(run);
    });
    consumerTags.set(channel, consumerTag);
  };

  const resubscribe = async (channel: ConfirmChannel) => {
    for (let delay = 500; !stopping && !closed.has(channel); delay = Math.min(delay * 2, 10_000)) {
      await sleep(delay);
      try {
        if (topologyMode === 'declare') await declareTopology(channel, topologyOptions);
        await subscribe(channel);
        return;
      } catch (error) {
        logger.warn('re-subscribe failed', { queue, error: toErrorInfo(error) });
      }
    }
  };

  const handle = async (channel: ConfirmChannel, msg: ConsumeMessage) => {
    stats.received++;
    stats.inFlight++;
    try {
      const delivery = toDelivery(msg, queue);
      for (;;) {
        if (closed.has(channel)) return; // the broker redelivers it to a live channel
        const d = await processor.process(delivery);
        stats.byOutcome[d.outcome] = (stats.byOutcome[d.outcome] ?? 0) + 1;
        if (d.action !== 'defer') {
          await settle(channel, msg, d);
          return;
        }
        stats.deferred++;
        if (stopping) {
          // Hand it back rather than hold it through shutdown; the store decides who runs it.
          if (!closed.has(channel)) channel.nack(msg, false, true);
          return;
        }
        // Waiting in place keeps the prefetch slot and avoids a requeue storm.
        await sleep(d.delayMs);
      }
    } catch (error) {
      // Settling failed (channel closed mid-way): not acked, so the broker redelivers.
      logger.warn('delivery not settled; it will be redelivered', { queue, error: toErrorInfo(error) });
    } finally {
      stats.inFlight--;
    }
  };

  const settle = async (
    channel: ConfirmChannel,
    msg: ConsumeMessage,
    d: Exclude<Disposition, { action: 'defer' }>,
  ) => {
    if (d.action === 'retry') {
      // The copy is confirmed before the original is acked: a crash in between leaves two
      // copies, and the store resolves them; never zero.
      channel.sendToQueue(
        retryQueueFor(topology, d.delayMs),
        msg.content,
        retryCopyOptions(msg, d.nextAttempt),
      );
      await channel.waitForConfirms();
      stats.retried++;
    } else if (d.action === 'dead-letter') {
      channel.sendToQueue(topology.deadLetterQueue, msg.content, deadLetterCopyOptions(msg, d.reason));
      await channel.waitForConfirms();
      stats.deadLettered++;
    }
    if (closed.has(channel)) return;
    channel.ack(msg);
    stats.acked++;
  };

  return {
    processor,
    topology,
    stats,
    async start() {
      if (wrapper) throw new ConfigError('a consumer can be started once');
      wrapper = manager.createChannel({ json: false, confirm: true, setup });
      await wrapper.waitForConnect();
    },
    async stop({ timeoutMs = 10_000 } = {}) {
      if (stopping) return;
      stopping = true;
      for (const [channel, tag] of consumerTags) {
        if (!closed.has(channel)) await channel.cancel(tag).catch(() => {});
      }
      const drained = Promise.allSettled([...inFlight]);
      await Promise.race([drained, sleep(timeoutMs)]);
      if (inFlight.size > 0)
        logger.warn('stopping with deliveries in flight; they will be redelivered', { queue });
      await wrapper?.close();
      await ownPublisher?.close();
      if (owned) await manager.close();
    },
  };
}
