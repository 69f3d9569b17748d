/**
 * Channels we own on a connection amqp-connection-manager keeps alive, and confirmed publishing on
 * them.
 *
 * The manager recovers the *connection*; a *channel* can also die alone (the broker closes it for
 * an unknown delivery tag, a `consumer_timeout`, a failed declare, a publish to a missing
 * exchange), and the manager's own channel wrapper then waits for the next connection loss before
 * it opens another. So we open channels ourselves, on the manager's current connection, and
 * reopen them after any close. Each channel gets a generation number and an `open` flag that
 * turns false the moment it closes: deliveries remember the channel they came on and are never
 * settled on another one.
 */
import { type Logger, toErrorInfo } from '@exactly-once/core';
import { doublingBackoff } from '@exactly-once/core/spi';
import type { AmqpConnectionManager } from 'amqp-connection-manager';
import type { ConfirmChannel, ConsumeMessage, Options } from 'amqplib';

/** One channel we opened, as deliveries and publishes see it. */
export interface KeptChannel {
  readonly channel: ConfirmChannel;
  /** 1 for the first channel of a keeper, one more for each reopen. */
  readonly generation: number;
  /** False from the moment the channel closed; its delivery tags mean nothing any more. */
  readonly open: boolean;
  /** The broker's reason, when the broker closed the channel. */
  readonly closeError?: Error;
  /**
   * Gives the channel up at once (`open` false, no longer handed out) and closes it; the keeper
   * opens the next. For a channel whose confirms can no longer be trusted.
   */
  discard(): void;
}

export interface ChannelKeeperOptions {
  manager: AmqpConnectionManager;
  /** Runs on each new channel before it is handed out (topology, prefetch, consume). */
  setup?: (kept: KeptChannel) => Promise<void>;
  logger: Logger;
  /** For log messages. */
  name: string;
  /**
   * Log the connection's loss and return (once each). Off where another keeper on the same
   * connection says it already (the consumer's own publisher), so a drop is one line, not two.
   */
  reportConnection: boolean;
}

export interface ChannelKeeper {
  /** The open, set-up channel, if there is one now. */
  current(): KeptChannel | undefined;
  /** The open, set-up channel, waiting up to `timeoutMs` (may be Infinity) for one. */
  get(timeoutMs: number): Promise<KeptChannel>;
  /**
   * Settles on the first successful setup; rejects if the broker refused the first setup
   * (403/404/406: missing or differently declared queues, permissions), which retrying will not
   * fix. An unreachable broker is waited for.
   */
  readonly firstSetup: Promise<void>;
  /** Closes the channel (the broker requeues its unacked deliveries) and stops reopening. */
  close(): Promise<void>;
}

/** A publish or settle that cannot complete because its channel closed; safe to redo elsewhere. */
export class ChannelClosedError extends Error {
  override name = 'ChannelClosedError';
}

/** The broker refused a confirmed publish: nacked, or returned as unroutable. */
export class NotConfirmedError extends Error {
  override name = 'NotConfirmedError';
}

/** The broker returned the message: no queue took it (NO_ROUTE: the queue does not exist). */
export class UnroutableError extends NotConfirmedError {
  override name = 'UnroutableError';
}

/** amqplib cannot encode the message (a property over 255 bytes, a header it cannot type): never sent. */
export class UnencodableMessageError extends NotConfirmedError {
  override name = 'UnencodableMessageError';
}

/** The part of amqplib's confirm channel that orders confirms: one callback per publish, in order. */
interface ConfirmWindow {
  unconfirmed?: unknown[];
}

/**
 * After amqplib's `publish` threw (it could not encode the message), nothing was sent, but amqplib
 * 0.10 has already given the message a place in the confirm order (1.x and 2.x take it only after
 * a publish that did not throw). Gives that place back, so later confirms answer the right
 * publishes; true when the order is right again (also when no place was taken), false where it
 * cannot tell (the channel must then be closed, its confirms no longer line up: the next publish
 * would wait for ever).
 */
export function giveBackConfirmSlot(channel: ConfirmChannel, callback: unknown): boolean {
  const window = (channel as unknown as ConfirmWindow).unconfirmed;
  if (window === undefined) return false;
  if (window.at(-1) === callback) {
    window.pop();
    return true;
  }
  return !window.includes(callback);
}

interface MutableKept {
  channel: ConfirmChannel;
  discard(): void;
  generation: number;
  open: boolean;
  closeError?: Error;
}

const REFUSALS = new Set([403, 404, 406]);
const codeOf = (error: unknown) => (error as { code?: unknown } | undefined)?.code;
const noop = () => {};
/** Before opening a channel again: 0.1 s, doubling with each failed setup in a row, at most 5 s. */
const reopenBackoff = doublingBackoff(100, 5_000);

/** Opens a confirm channel now (if connected) and after every close, until `close()`. */
export function keepChannel(options: ChannelKeeperOptions): ChannelKeeper {
  const { manager, logger, name } = options;
  let current: MutableKept | undefined;
  let generation = 0;
  let opening = false;
  let closed = false;
  let failures = 0;
  let timer: NodeJS.Timeout | undefined;
  let firstSettled = false;
  const waiters = new Set<() => void>();
  let resolveFirst!: () => void;
  let rejectFirst!: (error: unknown) => void;
  const firstSetup = new Promise<void>((resolve, reject) => {
    resolveFirst = resolve;
    rejectFirst = reject;
  });
  // Callers that only use get() must not see an unhandled rejection.
  firstSetup.catch(noop);

  const wake = () => {
    for (const w of [...waiters]) w();
  };

  const scheduleOpen = () => {
    if (closed || timer) return;
    // Back off on repeated failures so a refused setup does not spin; a plain reconnect is fast.
    const delay = reopenBackoff(failures + 1);
    timer = setTimeout(() => {
      timer = undefined;
      void open();
    }, delay);
  };

  const open = async () => {
    if (closed || opening || current?.open) return;
    const connection = manager.connection;
    if (!connection) return; // the manager's 'connect' event calls us again
    opening = true;
    let kept: MutableKept | undefined;
    try {
      const channel = await connection.createConfirmChannel();
      const k: MutableKept = {
        channel,
        generation: ++generation,
        open: true,
        discard() {
          k.open = false;
          if (current === k) current = undefined;
          channel.close().catch(noop); // its 'close' schedules the next channel
        },
      };
      kept = k;
      // The broker closing a channel is an 'error' event; without a listener it would throw.
      channel.on('error', (error: Error) => {
        k.closeError = error;
        logger.warn(`${name}: the broker closed the channel`, { error: toErrorInfo(error) });
      });
      channel.once('close', () => {
        k.open = false;
        if (current === k) current = undefined;
        scheduleOpen();
      });
      if (closed) {
        await channel.close().catch(noop);
        return;
      }
      await options.setup?.(k);
      if (!k.open) throw k.closeError ?? new ChannelClosedError('channel closed during setup');
      if (closed) {
        // close() ran while we were setting up; it found no channel to close.
        await channel.close().catch(noop);
        return;
      }
      current = k;
      failures = 0;
      if (!firstSettled) {
        firstSettled = true;
        resolveFirst();
      }
      wake();
    } catch (error) {
      failures++;
      const cause = kept?.closeError ?? error;
      const refused = REFUSALS.has(codeOf(cause) as number);
      // A refusal needs someone to fix the broker side; anything else is a connection going away.
      // Refused before any setup succeeded, it goes to whoever waits for the first (a consumer's
      // start() rejects and closes the keeper): no "trying again" then.
      const atStart = !firstSettled && refused;
      (refused ? logger.error : logger.warn).call(
        logger,
        atStart
          ? `${name}: channel setup refused by the broker`
          : `${name}: channel setup failed; trying again`,
        { error: toErrorInfo(cause) },
      );
      if (atStart) {
        firstSettled = true;
        rejectFirst(cause);
      }
      if (kept?.open)
        await kept.channel.close().catch(noop); // its 'close' schedules the reopen
      else scheduleOpen();
    } finally {
      opening = false;
    }
  };

  // A lost connection is said once, and once when it is back: the manager tries again every
  // `reconnectTimeInSeconds` meanwhile, and a line per attempt would flood the log. So is a
  // broker unreachable from the start (else a deploy during an outage looks like a silent hang).
  let lost = false;
  let connected = manager.isConnected();
  let unreachable = false;
  const onDisconnect = (event: { err?: unknown } | undefined) => {
    if (closed || lost || !options.reportConnection) return;
    lost = true;
    logger.warn(`${name}: connection to the broker lost; reconnecting`, { error: toErrorInfo(event?.err) });
  };
  const onConnectFailed = (event: { err?: unknown } | undefined) => {
    if (closed || connected || unreachable || !options.reportConnection) return;
    unreachable = true;
    logger.warn(`${name}: cannot reach the broker; trying again until it answers`, {
      error: toErrorInfo(event?.err),
    });
  };
  const onConnect = () => {
    connected = true;
    if (lost && !closed) {
      lost = false;
      logger.info(`${name}: connected to the broker again`);
    }
    if (unreachable && !closed) {
      unreachable = false;
      logger.info(`${name}: connected to the broker`);
    }
    void open();
  };
  manager.on('connect', onConnect);
  manager.on('disconnect', onDisconnect);
  manager.on('connectFailed', onConnectFailed);
  void open();

  return {
    current: () => (current?.open ? current : undefined),
    firstSetup,
    get(timeoutMs) {
      if (current?.open) return Promise.resolve(current);
      if (closed) return Promise.reject(new ChannelClosedError(`${name} is closed`));
      return new Promise((resolve, reject) => {
        const done = () => {
          if (current?.open) {
            finish();
            resolve(current);
          } else if (closed) {
            finish();
            reject(new ChannelClosedError(`${name} is closed`));
          }
        };
        const t = Number.isFinite(timeoutMs)
          ? setTimeout(() => {
              finish();
              reject(new ChannelClosedError(`${name}: no open channel within ${timeoutMs} ms`));
            }, timeoutMs)
          : undefined;
        const finish = () => {
          clearTimeout(t);
          waiters.delete(done);
        };
        waiters.add(done);
      });
    },
    async close() {
      if (closed) return;
      closed = true;
      manager.off('connect', onConnect);
      manager.off('disconnect', onDisconnect);
      manager.off('connectFailed', onConnectFailed);
      if (timer) clearTimeout(timer);
      wake();
      if (!firstSettled) {
        firstSettled = true;
        rejectFirst(new ChannelClosedError(`${name} closed before it was set up`));
      }
      const k = current;
      current = undefined;
      if (k?.open) await k.channel.close().catch(noop);
    },
  };
}

// ---------------------------------------------------------------- confirmed publishing

interface Pending {
  /** Exchange, routing key and message id (see routeOf). */
  readonly route: string;
  /** The marker header's value, when another publish of the route was pending (see below). */
  readonly mark?: string;
  returned?: string;
}
const pendingByChannel = new WeakMap<ConfirmChannel, Pending[]>();

const routeOf = (exchange: string, routingKey: string, messageId: unknown) =>
  `${exchange}\u0000${routingKey}\u0000${messageId === undefined ? '' : String(messageId)}`;

/**
 * Marks a publish whose route another pending publish of the channel shares: returns carry the
 * message's headers, so the return is matched to the publish it belongs to. Unique per process
 * (a header left on a message by an earlier publish never matches).
 */
const MARKER_HEADER = 'x-eo-publish-mark';
const markerPrefix = `${process.pid.toString(36)}.${Math.random().toString(36).slice(2, 8)}.`;
let markers = 0;

/**
 * With `mandatory`, the broker returns a message no queue accepted (`basic.return`) before it
 * confirms it; without this, a publish to a missing queue is "confirmed" and silently dropped.
 * A return names exchange, routing key and message id, and is matched to the oldest pending
 * publish with the same route; where two publishes of one route are pending at once (retry copies
 * of messages without an id, a repeated `messageId`), the later ones carry a marker header and
 * are matched by it: confirms may come out of order (an unroutable message is confirmed at once),
 * and the return of the second must not be pinned on the first.
 */
function pendingOf(channel: ConfirmChannel): Pending[] {
  let pending = pendingByChannel.get(channel);
  if (!pending) {
    const list: Pending[] = [];
    pending = list;
    pendingByChannel.set(channel, list);
    channel.on('return', (msg: ConsumeMessage) => {
      const route = routeOf(msg.fields.exchange, msg.fields.routingKey, msg.properties.messageId);
      const header = msg.properties.headers?.[MARKER_HEADER];
      const open = (mark: unknown) =>
        list.find((x) => x.route === route && x.mark === mark && x.returned === undefined);
      const p = (typeof header === 'string' ? open(header) : undefined) ?? open(undefined);
      // A basic.return's fields (amqplib 0.10's types have them, 2.x's do not name them).
      const { replyCode, replyText } = msg.fields as { replyCode?: number; replyText?: string };
      if (p) p.returned = `${replyCode} ${replyText}`;
    });
  }
  return pending;
}

/**
 * Publishes on `kept` and resolves when the broker confirmed the message into at least one queue.
 *
 * @throws ChannelClosedError when the channel closed first (publish again on another channel).
 * @throws NotConfirmedError when the broker nacked or (with `mandatory`) returned it.
 */
export function publishConfirmed(
  kept: KeptChannel,
  exchange: string,
  routingKey: string,
  content: Buffer,
  options: Options.Publish & { mandatory?: boolean },
): Promise<void> {
  if (!kept.open) return Promise.reject(new ChannelClosedError('channel closed'));
  const mandatory = options.mandatory !== false;
  const list = pendingOf(kept.channel);
  const route = routeOf(exchange, routingKey, options.messageId);
  let publishOptions: Options.Publish = options;
  let entry: Pending = { route };
  if (mandatory && list.some((x) => x.route === route)) {
    const mark = `${markerPrefix}${++markers}`;
    entry = { route, mark };
    publishOptions = { ...options, headers: { ...options.headers, [MARKER_HEADER]: mark } };
  }
  if (mandatory) list.push(entry);
  const forget = () => {
    const i = list.indexOf(entry);
    if (i >= 0) list.splice(i, 1);
  };
  return new Promise<void>((resolve, reject) => {
    const confirmed = (error: Error | null | undefined) => {
      forget();
      // amqplib fails unconfirmed publishes with 'channel closed' (before our close listener
      // runs) and nacks with 'message nacked'.
      if (error && error.message !== 'message nacked') {
        reject(new ChannelClosedError('channel closed before the confirm'));
      } else if (error) {
        reject(new NotConfirmedError(`the broker nacked the message (${exchange}/${routingKey})`));
      } else if (entry.returned !== undefined) {
        const where =
          exchange === '' ? `queue "${routingKey}"` : `exchange "${exchange}" key "${routingKey}"`;
        reject(new UnroutableError(`unroutable: no queue took the message for ${where} (${entry.returned})`));
      } else resolve();
    };
    try {
      kept.channel.publish(exchange, routingKey, content, { ...publishOptions, mandatory }, confirmed);
    } catch (error) {
      forget();
      // amqplib throws synchronously on a closing or closed channel ...
      if (!kept.open || (error as Error).name === 'IllegalOperationError') {
        reject(new ChannelClosedError((error as Error).message));
        return;
      }
      // ... and when it cannot encode the message (a property over 255 bytes, a header it cannot
      // type), after it has taken the message's place in the confirm order, before anything was
      // written. Its place is given back, so later confirms answer the right publishes and the
      // channel (with the deliveries it carries) stays open. Where that cannot be done, the
      // channel is closed instead: its pending publishes fail as closed and are sent again.
      if (!giveBackConfirmSlot(kept.channel, confirmed)) kept.discard();
      reject(new UnencodableMessageError(`the message cannot be encoded: ${(error as Error).message}`));
    }
  });
}
