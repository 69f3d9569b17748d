/** `createConsumer`: a RabbitMQ consumer that runs every delivery through core's pipeline. */
import { setMaxListeners } from 'node:events';
import {
  ConfigError,
  type Logger,
  type OutgoingPublisher,
  type Outcome,
  type ProcessorOptions,
  PublishError,
  silentLogger,
  toErrorInfo,
} from '@exactly-once/core';
import { createProcessor, type Disposition, type Processor } from '@exactly-once/core/spi';
import type { ConsumeMessage } from 'amqplib';
import { type ChannelKeeper, type KeptChannel, keepChannel, publishConfirmed } from './channel.js';
import { type ConnectionInput, resolveConnection } from './connection.js';
import { deadLetterCopyOptions, retryCopyOptions, toDelivery } from './delivery.js';
import { createPublisher, type RabbitPublisher } from './publisher.js';
import {
  checkTopology,
  declareTopology,
  retryQueueFor,
  type Topology,
  type TopologyOptions,
  topologyFor,
} from './topology.js';

export interface RabbitConsumerOptions<T = unknown, R = unknown>
  extends Omit<ProcessorOptions<T, R>, 'publisher'>,
    Omit<TopologyOptions, 'queue'> {
  /** An AMQP URL (or several), or an amqp-connection-manager connection you own and close. */
  connection: ConnectionInput;
  /** The work queue. */
  queue: string;
  /** Unacked deliveries at once; bounds concurrency. @defaultValue 16 */
  prefetch?: number;
  /**
   * `declare`: assert the work, retry and dead-letter queues on every (re)connect (idempotent).
   * `assume`: they exist already (declared by infrastructure code); checked at start.
   * @defaultValue 'declare'
   */
  topology?: 'declare' | 'assume';
  /**
   * Publisher for the handler's `ctx.publish` messages (any core OutgoingPublisher, e.g. a Kafka
   * producer). @defaultValue a RabbitMQ publisher on the same connection
   */
  publisher?: OutgoingPublisher;
}

/** Counters since start, for health checks and tests. */
export interface ConsumerStats {
  received: number;
  byOutcome: Partial<Record<Outcome, number>>;
  acked: number;
  retried: number;
  deadLettered: number;
  /** Pipeline runs that said "not now" (busy key, store down, publish unconfirmed). */
  deferred: number;
  /** Retry or dead-letter copies that could not be published yet, and were tried again. */
  settleFailures: number;
  /** Deliveries whose channel closed before they were settled; the broker redelivers them. */
  abandoned: number;
  /** Server-side consumer cancellations (queue deleted), each followed by a re-subscribe. */
  cancelled: number;
  /** Channels opened: 1, plus one per reconnect or channel loss. */
  channels: number;
  inFlight: number;
}

export interface RabbitConsumer {
  /**
   * Connects (waiting for the broker as long as it takes), sets up the topology and consumes.
   *
   * @throws ConfigError when the broker refuses the setup: a queue declared with other arguments
   * (e.g. classic vs quorum), a missing queue under `topology: 'assume'`, no permission.
   */
  start(): Promise<void>;
  /**
   * Cancels the subscription, lets in-flight deliveries finish within `timeoutMs`, then closes.
   * Unfinished deliveries are not acked: the broker redelivers them. @defaultValue timeoutMs 10000
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
  if (topologyMode !== 'declare' && topologyMode !== 'assume') {
    throw new ConfigError("topology must be 'declare' or 'assume'");
  }
  const topologyOptions: TopologyOptions = {
    queue,
    ...(retryDelaysMs ? { retryDelaysMs } : {}),
    ...(deadLetterQueue ? { deadLetterQueue } : {}),
    ...(queueType ? { queueType } : {}),
  };
  const topology = topologyFor(topologyOptions);
  const logger: Logger = rest.logger ?? silentLogger;
  let ownPublisher: RabbitPublisher | undefined;
  // The default publisher is created at start, on the consumer's connection.
  const publisher: OutgoingPublisher = givenPublisher ?? {
    publish: async (messages) => {
      if (!ownPublisher) throw new PublishError('the consumer is not started');
      await ownPublisher.publish(messages);
    },
  };
  const processor = createProcessor<T, R>({ ...rest, publisher });
  const stats: ConsumerStats = {
    received: 0,
    byOutcome: {},
    acked: 0,
    retried: 0,
    deadLettered: 0,
    deferred: 0,
    settleFailures: 0,
    abandoned: 0,
    cancelled: 0,
    channels: 0,
    inFlight: 0,
  };
  const inFlight = new Set<Promise<void>>();
  const consumerTags = new Map<KeptChannel, string>();
  // Aborted by stop(): wakes deliveries waiting to run again, so shutdown does not wait them out.
  const stopping = new AbortController();
  // Every waiting delivery listens on it (up to prefetch of them), plus settle retries.
  setMaxListeners(0, stopping.signal);
  let keeper: ChannelKeeper | undefined;
  let manager: ReturnType<typeof resolveConnection> | undefined;
  let stopped: Promise<void> | undefined;

  const setup = async (kept: KeptChannel) => {
    stats.channels++;
    kept.channel.once('close', () => consumerTags.delete(kept));
    if (topologyMode === 'declare') await declareTopology(kept.channel, topologyOptions);
    else await checkTopology(kept.channel, topology);
    await kept.channel.prefetch(prefetch);
    await subscribe(kept);
  };

  const subscribe = async (kept: KeptChannel) => {
    if (stopping.signal.aborted) return;
    const { consumerTag } = await kept.channel.consume(queue, (msg) => {
      if (msg === null) {
        onCancelled(kept);
        return;
      }
      if (stopping.signal.aborted) {
        // Arrived after stop() began: hand it back at once rather than start new work.
        try {
          kept.channel.nack(msg, false, true);
        } catch {
          // the channel is closing: the broker requeues it anyway
        }
        return;
      }
      const run = handle(kept, msg).finally(() => inFlight.delete(run));
      inFlight.add(run);
    });
    consumerTags.set(kept, consumerTag);
  };

  // The server cancels a consumer when its queue is deleted. Subscribe again (re-declaring under
  // 'declare'), with backoff; if that closes the channel, the keeper reopens it and runs setup.
  const onCancelled = (kept: KeptChannel) => {
    consumerTags.delete(kept);
    stats.cancelled++;
    logger.warn('consumer cancelled by the broker (queue deleted?); re-subscribing', { queue });
    void (async () => {
      for (let failures = 0; kept.open && !stopping.signal.aborted; failures++) {
        if (!(await pause(backoff(failures), stopping.signal))) return;
        try {
          if (topologyMode === 'declare') await declareTopology(kept.channel, topologyOptions);
          await subscribe(kept);
          logger.info('re-subscribed', { queue });
          return;
        } catch (error) {
          logger.warn('re-subscribe failed', { queue, error: toErrorInfo(error) });
        }
      }
    })();
  };

  const handle = async (kept: KeptChannel, msg: ConsumeMessage) => {
    stats.received++;
    stats.inFlight++;
    try {
      const delivery = toDelivery(msg, queue);
      for (;;) {
        if (!kept.open) {
          stats.abandoned++; // its channel is gone; the broker redelivers it on a live one
          return;
        }
        const d = await processor.process(delivery);
        stats.byOutcome[d.outcome] = (stats.byOutcome[d.outcome] ?? 0) + 1;
        if (d.action !== 'defer') {
          await settle(kept, msg, d);
          return;
        }
        stats.deferred++;
        // Keeping the delivery and running it again in place (instead of nack + requeue) keeps
        // its prefetch slot, so a store outage throttles consumption instead of spinning, and
        // does not count against a quorum queue's delivery limit.
        if (!(await pause(d.delayMs, stopping.signal))) {
          if (kept.open) kept.channel.nack(msg, false, true); // stopping: hand it back now
          return;
        }
      }
    } catch (error) {
      // Only a closed channel gets here (nack/ack on it); the broker redelivers.
      stats.abandoned++;
      logger.warn('delivery not settled; the broker will redeliver it', { queue, error: toErrorInfo(error) });
    } finally {
      stats.inFlight--;
    }
  };

  /** Carries out a disposition on the delivering channel; a copy is confirmed before the ack. */
  const settle = async (
    kept: KeptChannel,
    msg: ConsumeMessage,
    d: Exclude<Disposition, { action: 'defer' }>,
  ) => {
    for (let failures = 0; ; failures++) {
      if (!kept.open) {
        stats.abandoned++;
        return;
      }
      try {
        // A crash between the copy's confirm and the ack leaves two copies, never none; the
        // store answers the second one as a duplicate.
        if (d.action === 'retry') {
          const to = retryQueueFor(topology, d.delayMs);
          await publishConfirmed(kept, '', to, msg.content, retryCopyOptions(msg, d.nextAttempt));
        } else if (d.action === 'dead-letter') {
          await publishConfirmed(
            kept,
            '',
            topology.deadLetterQueue,
            msg.content,
            deadLetterCopyOptions(msg, d.reason),
          );
        }
        kept.channel.ack(msg);
      } catch (error) {
        if (!kept.open) {
          stats.abandoned++;
          return;
        }
        // The copy was nacked or had no queue to go to: never ack without it. Keep the delivery
        // (its slot stays taken) and try again until it works, the channel closes, or we stop.
        stats.settleFailures++;
        logger.error(`could not ${d.action} the message; trying again`, { queue, error: toErrorInfo(error) });
        if (!(await pause(backoff(failures), stopping.signal))) return;
        continue;
      }
      stats.acked++;
      if (d.action === 'retry') stats.retried++;
      if (d.action === 'dead-letter') stats.deadLettered++;
      return;
    }
  };

  const stop = ({ timeoutMs = 10_000 }: { timeoutMs?: number } = {}) => {
    stopped ??= (async () => {
      stopping.abort();
      for (const [kept, tag] of consumerTags) {
        if (kept.open) await kept.channel.cancel(tag).catch(() => {});
      }
      const drained = Promise.allSettled([...inFlight]);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([drained, new Promise((r) => (timer = setTimeout(r, timeoutMs)))]);
      clearTimeout(timer);
      if (inFlight.size > 0) {
        logger.warn('stopping with deliveries in flight; the broker will redeliver them', {
          queue,
          inFlight: inFlight.size,
        });
      }
      await keeper?.close();
      await ownPublisher?.close();
      if (manager?.owned) await manager.manager.close();
    })();
    return stopped;
  };

  return {
    processor,
    topology,
    stats,
    stop,
    async start() {
      if (keeper || stopped) throw new ConfigError('a consumer can be started once');
      manager = resolveConnection(connection);
      // One connection for consuming and publishing; settling needs no second socket.
      if (!givenPublisher) ownPublisher = createPublisher({ connection: manager.manager, logger });
      keeper = keepChannel({ manager: manager.manager, setup, logger, name: `consumer of ${queue}` });
      try {
        await keeper.firstSetup;
      } catch (error) {
        const stoppedFirst = stopping.signal.aborted;
        await stop({ timeoutMs: 0 });
        if (stoppedFirst) throw new Error(`consumer of "${queue}" was stopped before it started`);
        throw new ConfigError(`RabbitMQ refused the setup of queue "${queue}": ${(error as Error).message}`);
      }
    },
  };
}

const backoff = (failures: number) => Math.min(200 * 2 ** failures, 30_000);

/** Waits `ms`; false if `signal` aborted first. */
function pause(ms: number, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve(true);
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      resolve(false);
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
