/** `createConsumer`: a RabbitMQ consumer that runs every delivery through core's pipeline. */
import { setMaxListeners } from 'node:events';
import {
  ClosedError,
  ConfigError,
  defaultLogger,
  type Logger,
  MalformedMessageError,
  type OutgoingPublisher,
  type ProcessorOptions,
  PublishError,
  toErrorInfo,
  validateName,
} from '@exactly-once/core';
import {
  settle as ackLast,
  createProcessor,
  type DeadLetterReason,
  type Delivery,
  type Disposition,
  doublingBackoff,
  keysGivenBack,
  type OptionNames,
  PROCESSOR_OPTIONS,
  type Processor,
  pause,
  refuseUnknownOptions,
  settledWithin,
} from '@exactly-once/core/spi';
import type { ConsumeMessage, Options } from 'amqplib';
import { createSettler, type Settler } from './acks.js';
import {
  type ChannelKeeper,
  type KeptChannel,
  keepChannel,
  publishConfirmed,
  UnencodableMessageError,
  UnroutableError,
} from './channel.js';
import { type ConnectionInput, resolveConnection } from './connection.js';
import {
  deadLetterCopyOptions,
  reducedDeadLetterCopyOptions,
  retryCopyOptions,
  toDelivery,
} from './delivery.js';
import { createPublisher, type RabbitPublisher } from './publisher.js';
import { redeliveryGate } from './redelivered.js';
import { type ConsumerStats, countOutcome, emptyStats } from './stats.js';
import {
  checkTopology,
  declareTopology,
  retryQueueFor,
  type Topology,
  type TopologyOptions,
  topologyFor,
} from './topology.js';

/** The consumer's default prefetch window. */
export const DEFAULT_PREFETCH = 100;
/** The most `basic.qos` can carry (a 16-bit field). */
const MAX_PREFETCH = 65_535;

export interface RabbitConsumerOptions<T = unknown, R = unknown>
  extends Omit<ProcessorOptions<T, R>, 'publisher' | 'consumer'>,
    Omit<TopologyOptions, 'queue'> {
  /** An AMQP URL (or several), or an amqp-connection-manager connection you own and close. */
  connection: ConnectionInput;
  /** The work queue. */
  queue: string;
  /**
   * The consumer's name in store keys (`<namespace>:<consumer>:<key>`) and in `x-eo-consumer`
   * on dead letters; `[A-Za-z0-9._-]{1,100}`. Changing it, or the `queue` while it is unset,
   * starts a new key space: records under the old name are no longer seen, so a message that
   * comes back is processed again. @defaultValue `queue`
   */
  consumer?: string;
  /**
   * Unacked deliveries at once; bounds concurrency. Deliveries that arrive together are begun in
   * one store round trip and completed in one, so a larger window means fewer round trips per
   * message (and more work repeated by a crash). @defaultValue 100
   */
  prefetch?: number;
  /**
   * `declare`: assert the work, retry and dead-letter queues on every (re)connect (idempotent).
   * `assume`: they exist already (declared by infrastructure code); checked at start.
   * @defaultValue 'declare'
   */
  topology?: 'declare' | 'assume';
  /**
   * Where the handler's `ctx.publish` messages go: any core `OutgoingPublisher`, e.g. a Kafka
   * producer. A publisher you pass is yours: `stop()` leaves it open.
   * @defaultValue a RabbitMQ publisher on the same connection, closed by `stop()`
   */
  publisher?: OutgoingPublisher;
}

/** Options of `stop()`; the same in `@exactly-once/kafka`. */
export interface StopOptions {
  /**
   * How long deliveries under way may still finish (and be acked) before the consumer closes
   * its channel; unfinished ones are redelivered by the broker. @defaultValue 10000
   */
  timeoutMs?: number;
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
   * Cancels the subscription, hands deferred deliveries back, lets the runs under way finish
   * within `timeoutMs` (default 10 s), then closes the channel (and the default publisher, and
   * the connection it created). Unfinished deliveries are not acked: the broker redelivers them,
   * and the next consumer waits for their lease and answers them as duplicates (or takes them
   * over). After `stop()` resolved the consumer sends nothing: a run still going publishes
   * nothing (a `ClosedError`, whichever the publisher) and acks nothing. Safe to call twice.
   */
  stop(options?: StopOptions): Promise<void>;
  /**
   * Resolves true once no run of this consumer is still going (a run `stop()` gave up on, with its
   * store writes), false after `timeoutMs` (default: no limit). Call it after `stop()` and before
   * closing the store client: a run still going when the store closes cannot record its
   * completion, so the next consumer takes its key over after the lease and runs the handler
   * again, as after a crash.
   */
  idle(timeoutMs?: number): Promise<boolean>;
  readonly processor: Processor;
  readonly topology: Topology;
  readonly stats: Readonly<ConsumerStats>;
}

/** The consumer's own option names; the rest are core's. */
const RABBIT_OPTIONS = {
  connection: true,
  queue: true,
  consumer: true,
  prefetch: true,
  topology: true,
  publisher: true,
  retryDelaysMs: true,
  deadLetter: true,
  queueType: true,
} as const satisfies OptionNames<
  Omit<RabbitConsumerOptions, Exclude<keyof ProcessorOptions, 'consumer' | 'publisher'>>
>;

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
    prefetch = DEFAULT_PREFETCH,
    topology: topologyMode = 'declare',
    consumer: consumerName,
    retryDelaysMs,
    deadLetter,
    queueType,
    publisher: givenPublisher,
    ...rest
  } = options;
  if (!connection) throw new ConfigError('connection (an AMQP URL or connection manager) is required');
  if (typeof queue !== 'string' || queue.length === 0) throw new ConfigError('queue is required');
  if ('deadLetterQueue' in rest) {
    throw new ConfigError('deadLetterQueue was renamed: use deadLetter: { queue: "<name>" }');
  }
  refuseUnknownOptions(options, { ...PROCESSOR_OPTIONS, ...RABBIT_OPTIONS });
  // AMQP carries prefetch in 16 bits: amqplib refuses more on every channel opened.
  if (!Number.isInteger(prefetch) || prefetch < 1 || prefetch > MAX_PREFETCH) {
    throw new ConfigError(`prefetch must be an integer from 1 to ${MAX_PREFETCH}`);
  }
  if (queueType !== undefined && queueType !== 'quorum' && queueType !== 'classic') {
    throw new ConfigError("queueType must be 'quorum' or 'classic'");
  }
  if (topologyMode !== 'declare' && topologyMode !== 'assume') {
    throw new ConfigError("topology must be 'declare' or 'assume'");
  }
  const topologyOptions: TopologyOptions = {
    queue,
    ...(retryDelaysMs ? { retryDelaysMs } : {}),
    ...(deadLetter ? { deadLetter } : {}),
    ...(queueType ? { queueType } : {}),
  };
  const topology = topologyFor(topologyOptions);
  const name = consumerName ?? defaultName(queue);
  const logger: Logger = rest.logger ?? defaultLogger;
  let ownPublisher: RabbitPublisher | undefined;
  // Set once stop() is over: a run that outlived it publishes nothing more, through any
  // publisher (its message was not acked; the next consumer publishes its outgoing messages).
  let finished = false;
  const publisher: OutgoingPublisher = {
    publish: async (messages) => {
      if (finished) throw new ClosedError('consumer', `the consumer of queue "${queue}" is stopped`);
      if (givenPublisher) return givenPublisher.publish(messages);
      // The default publisher is created at start, on the consumer's connection.
      if (!ownPublisher) throw new PublishError('the consumer is not started');
      await ownPublisher.publish(messages);
    },
  };
  const processor = createProcessor<T, R>({ ...rest, consumer: name, publisher });
  const stats = emptyStats();
  // Deliveries under way are counted (stats.inFlight), not kept: stop() and idle() wait for the
  // count to reach 0, and no promise or closure is made per delivery to track it.
  let noneInFlight: { readonly reached: Promise<void>; readonly resolve: () => void } | undefined;
  const allSettled = (): Promise<void> => {
    if (stats.inFlight === 0) return Promise.resolve();
    if (noneInFlight === undefined) {
      let resolve!: () => void;
      const reached = new Promise<void>((r) => {
        resolve = r;
      });
      noneInFlight = { reached, resolve };
    }
    return noneInFlight.reached;
  };
  const gate = redeliveryGate();
  const consumerTags = new Map<KeptChannel, string>();
  // Aborted by stop(): wakes deliveries waiting to run again, so shutdown does not wait them out.
  const stopping = new AbortController();
  // Every waiting delivery listens on it (up to prefetch of them), plus settle retries.
  setMaxListeners(0, stopping.signal);
  let keeper: ChannelKeeper | undefined;
  let manager: ReturnType<typeof resolveConnection> | undefined;
  let stopped: Promise<void> | undefined;

  // One settler per channel: acks of one turn become one `multiple` ack where they can.
  const settlers = new Map<KeptChannel, Settler>();
  const settlerOf = (kept: KeptChannel): Settler => {
    let settler = settlers.get(kept);
    if (settler === undefined) {
      settler = createSettler(kept.channel);
      settlers.set(kept, settler);
      kept.channel.once('close', () => settlers.delete(kept));
    }
    return settler;
  };

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
      settlerOf(kept).received(msg);
      if (stopping.signal.aborted) {
        // Arrived after stop() began: hand it back at once rather than start new work.
        try {
          settlerOf(kept).requeue(msg);
        } catch {
          // the channel is closing: the broker requeues it anyway
        }
        return;
      }
      void handle(kept, msg);
    });
    if (stopping.signal.aborted) {
      // stop() ran while this subscription was on its way and found no tag to cancel: without
      // this, every delivery would be handed back and redelivered to it until the channel closed.
      await kept.channel.cancel(consumerTag).catch(() => {});
      return;
    }
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
        if (!(await pause(backoff(failures + 1), stopping.signal))) return;
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

  // Counted once the ack is written: one lost with its channel is redelivered, not done.
  const countAcked = () => {
    stats.acked++;
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
        const d = await runGated(kept, msg, delivery);
        if (d === undefined) return; // handed back while it waited its turn
        countOutcome(stats, d);
        if (d.action === 'ack') {
          // Nothing to copy first (see settle for the copies' order): the ack goes at once.
          if (kept.open) settlerOf(kept).ack(msg, countAcked);
          else stats.abandoned++; // its channel is gone; the broker redelivers it on a live one
          return;
        }
        if (d.action !== 'defer') {
          await settle(kept, msg, d);
          return;
        }
        stats.deferred++;
        // Keeping the delivery and running it again in place (instead of nack + requeue) keeps
        // its prefetch slot, so a store outage throttles consumption instead of spinning, and
        // does not count against a quorum queue's delivery limit.
        if (!(await pause(d.delayMs, stopping.signal))) {
          handBack(kept, msg); // stopping: now
          return;
        }
      }
    } catch (error) {
      // Only a closed channel gets here (nack/ack on it); the broker redelivers.
      stats.abandoned++;
      logger.warn('delivery not settled; the broker will redeliver it', { queue, error: toErrorInfo(error) });
    } finally {
      if (--stats.inFlight === 0 && noneInFlight !== undefined) {
        noneInFlight.resolve();
        noneInFlight = undefined;
      }
    }
  };

  /** A delivery that is not run: the broker redelivers it (on this channel while it is open). */
  const handBack = (kept: KeptChannel, msg: ConsumeMessage) => {
    stats.abandoned++;
    // After stop() its channel is closing, and the broker requeues whatever it did not ack.
    if (kept.open && !finished) settlerOf(kept).requeue(msg);
  };

  /**
   * Runs the pipeline once its turn has come (see redelivered.ts); a delivery that waited for it
   * and meanwhile lost its channel, or saw stop() begin, is handed back unrun (undefined).
   */
  const runGated = (
    kept: KeptChannel,
    msg: ConsumeMessage,
    delivery: Delivery,
  ): Promise<Disposition | undefined> => {
    // Only a redelivered message whose last run may have died with its worker runs alone: one
    // handed back unrun or given back at a stop is not a suspect, and runs as a new one does.
    if (msg.fields.redelivered) return runRedelivered(kept, msg, delivery);
    const turn = gate.enter(false);
    // Nothing runs alone (nearly always): the run starts now, with no async frame of its own.
    if (turn === undefined) return processor.process(delivery).then(leftGate, leftGateFailing);
    return runEntered(kept, msg, delivery, false, turn);
  };
  // Made once rather than per delivery: the gate's leave after a run that entered it as new.
  const leftGate = (d: Disposition) => {
    gate.leave(false);
    return d;
  };
  const leftGateFailing = (error: unknown): never => {
    gate.leave(false);
    throw error;
  };

  const runRedelivered = async (kept: KeptChannel, msg: ConsumeMessage, delivery: Delivery) => {
    const alone = await processor.lastRunMayHaveDied(delivery);
    if (!kept.open || stopping.signal.aborted) {
      handBack(kept, msg);
      return undefined;
    }
    return runEntered(kept, msg, delivery, alone, gate.enter(alone));
  };

  /** The run once the gate lets it start (`turn`: what `gate.enter(alone)` answered), then its leave. */
  const runEntered = async (
    kept: KeptChannel,
    msg: ConsumeMessage,
    delivery: Delivery,
    alone: boolean,
    turn: Promise<void> | undefined,
  ) => {
    try {
      if (turn !== undefined) {
        await turn;
        if (!kept.open || stopping.signal.aborted) {
          handBack(kept, msg);
          return undefined;
        }
      }
      return await processor.process(delivery);
    } finally {
      gate.leave(alone);
    }
  };

  /** Carries out a retry or dead letter on the delivering channel: the copy confirmed, then the ack. */
  const settle = async (
    kept: KeptChannel,
    msg: ConsumeMessage,
    d: Extract<Disposition, { action: 'retry' | 'dead-letter' }>,
  ) => {
    // A copy of the message, on the channel that delivered it.
    const copyTo = (copyQueue: string, copyOptions: Options.Publish) =>
      publishConfirmed(kept, '', copyQueue, msg.content, copyOptions);
    // A dead letter instead of the retry whose copy could not be encoded.
    let deadLetteredInstead = false;
    const deadLetterCopy = async (reason: DeadLetterReason) => {
      try {
        await copyTo(topology.deadLetterQueue, deadLetterCopyOptions(msg, reason));
      } catch (error) {
        if (!(error instanceof UnencodableMessageError)) throw error;
        await copyTo(topology.deadLetterQueue, reducedDeadLetterCopyOptions(msg, reason, error.message));
      }
    };
    for (let failures = 0; ; failures++) {
      if (!kept.open) {
        stats.abandoned++;
        return;
      }
      try {
        await ackLast(d, {
          retryCopy: async (r) => {
            try {
              await copyTo(retryQueueFor(topology, r.delayMs), retryCopyOptions(msg, r.nextAttempt));
            } catch (error) {
              if (!(error instanceof UnencodableMessageError)) throw error;
              // It could never come back from a retry queue: it is dead-lettered with the reason.
              const reason = new MalformedMessageError(`its retry copy cannot be sent: ${error.message}`);
              await deadLetterCopy({
                error: toErrorInfo(reason),
                attempts: r.nextAttempt - 1,
                consumer: name,
                originalDestination: queue,
                at: Date.now(),
              });
              deadLetteredInstead = true;
            }
          },
          deadLetterCopy: (dl) => deadLetterCopy(dl.reason),
          // Counted once the ack is written: one lost with its channel is redelivered, not done.
          ack: () =>
            settlerOf(kept).ack(msg, () => {
              if (d.action === 'retry' && !deadLetteredInstead) stats.retried++;
              else stats.deadLettered++;
            }),
        });
      } catch (error) {
        if (!kept.open) {
          stats.abandoned++;
          return;
        }
        // The copy was nacked or had no queue to go to: never ack without it. Keep the delivery
        // (its slot stays taken) and try again until it works, the channel closes, or we stop.
        stats.settleFailures++;
        logger.error(`could not ${d.action} the message; trying again`, { queue, error: toErrorInfo(error) });
        if (!(await pause(backoff(failures + 1), stopping.signal))) {
          stats.abandoned++; // stopping: left unacked, the broker redelivers it
          return;
        }
        // Its queue was deleted while the consumer runs: under 'declare', declared again (as a
        // reconnect would), so the copy lands at the next try rather than at the next restart.
        if (error instanceof UnroutableError && topologyMode === 'declare' && kept.open) {
          await declareTopology(kept.channel, topologyOptions).catch((cause: unknown) =>
            logger.warn('could not declare the queues again', { queue, error: toErrorInfo(cause) }),
          );
        }
        continue;
      }
      return;
    }
  };

  const stop = ({ timeoutMs = 10_000 }: StopOptions = {}) => {
    stopped ??= (async () => {
      stopping.abort();
      // Every broker call here is bounded: a broker that keeps the socket open and answers
      // nothing (frozen, or a link that drops replies) must not hold stop() until the heartbeat
      // gives the connection up. The cancels and the runs share timeoutMs.
      const cancels: Promise<unknown>[] = [];
      for (const [kept, tag] of consumerTags) {
        if (kept.open) cancels.push(kept.channel.cancel(tag).catch(() => {}));
      }
      await settledWithin([...cancels, allSettled()], timeoutMs);
      finished = true;
      if (stats.inFlight > 0) {
        // Their handlers are asked to end (ctx.signal); one that then fails gives its key back...
        processor.abortRuns();
        // ...before the channel closes and the broker redelivers: a key not yet given back is
        // busy for the next consumer, which takes it for a suspect and runs it alone after its
        // lease.
        await keysGivenBack(processor, allSettled());
        // Said once the wait is over: runs that completed in it were acked, not redelivered.
        if (stats.inFlight > 0) {
          logger.warn('stopping with deliveries in flight; the broker will redeliver them', {
            queue,
            inFlight: stats.inFlight,
          });
        }
      }
      for (const settler of settlers.values()) settler.flush();
      // Each close is begun (so nothing reopens or reconnects), and waited for within one budget.
      const closeBy = performance.now() + CLOSE_WAIT_MS;
      const closedInTime = (closing: Promise<unknown> | undefined) =>
        closing === undefined
          ? Promise.resolve(true)
          : settledWithin([closing], Math.max(0, closeBy - performance.now()));
      const answered = [
        await closedInTime(keeper?.close()),
        await closedInTime(ownPublisher?.close()),
        await closedInTime(manager?.owned ? manager.manager.close() : undefined),
      ];
      if (answered.includes(false)) {
        logger.warn('stopped without the broker confirming the close; the connection closes on its own', {
          queue,
        });
      }
    })();
    return stopped;
  };

  return {
    processor,
    topology,
    stats,
    stop,
    idle: (timeoutMs = Number.POSITIVE_INFINITY) => settledWithin([allSettled()], timeoutMs),
    async start() {
      if (keeper || stopped) throw new ConfigError('a consumer can be started once');
      manager = resolveConnection(connection);
      // One connection for consuming and publishing; settling needs no second socket.
      if (!givenPublisher) ownPublisher = createPublisher({ connection: manager.manager, logger });
      keeper = keepChannel({
        manager: manager.manager,
        setup,
        logger,
        name: `consumer of ${queue}`,
        reportConnection: true,
      });
      try {
        await keeper.firstSetup;
      } catch (error) {
        const stoppedFirst = stopping.signal.aborted;
        await stop({ timeoutMs: 0 });
        if (stoppedFirst)
          throw new ClosedError('consumer', `consumer of "${queue}" was stopped before it started`);
        throw new ConfigError(`RabbitMQ refused the setup of queue "${queue}": ${(error as Error).message}`);
      }
    },
  };
}

/** How long stop() waits, after its timeoutMs, for the broker to close the channel and connection. */
const CLOSE_WAIT_MS = 2_000;

/** The wait before setting the channel up again, or re-sending a copy the broker refused. */
const backoff = doublingBackoff(200, 30_000);

/** The queue as the consumer name, or a ConfigError saying how to set one. */
function defaultName(queue: string): string {
  try {
    return validateName('consumer', queue);
  } catch {
    throw new ConfigError(
      `consumer defaults to the queue ("${queue}"), which is not a valid consumer name ` +
        '([A-Za-z0-9._-]{1,100}); set consumer explicitly',
    );
  }
}
