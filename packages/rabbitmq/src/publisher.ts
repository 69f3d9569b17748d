/**
 * The publisher: confirmed, persistent publishes over a channel that is reopened after any close.
 * `send` is for a first service (it mints the request id); `publish` is core's OutgoingPublisher,
 * used by consumers for the handler's outgoing messages.
 */
import {
  ClosedError,
  ConfigError,
  Headers,
  type Logger,
  type OutgoingMessage,
  PublishError,
  sha256Hex,
  defaultLogger,
} from '@exactly-once/core';
import {
  encodeValue,
  extraHeaders,
  type OptionNames,
  type OutgoingPublisher,
  refuseUnknownOptions,
  sendIdentity,
  tracer,
} from '@exactly-once/core/spi';
import { context, propagation, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { ChannelClosedError, keepChannel, publishConfirmed } from './channel.js';
import { type ConnectionInput, resolveConnection } from './connection.js';

export interface PublisherOptions {
  connection: ConnectionInput;
  /**
   * How long a publish may wait for a channel and the broker's confirm (e.g. while the broker
   * restarts) before it rejects. @defaultValue 30000
   */
  publishTimeoutMs?: number;
  /**
   * Treat a message no queue took (no such queue, no binding) as a failed publish instead of
   * letting the broker drop it. @defaultValue true
   */
  mandatory?: boolean;
  /**
   * Record the idempotency key on `send` spans (`exactly_once.key`). Keys are customer data; the
   * request id is always recorded. @defaultValue false
   */
  recordKeys?: boolean;
  logger?: Logger;
}

export interface SendOptions {
  /** @defaultValue a random UUID (a first hop starts a request) */
  requestId?: string;
  /** @defaultValue the request id */
  idempotencyKey?: string;
  /** When set, `destination` is an exchange and this its routing key. */
  routingKey?: string;
  headers?: Readonly<Record<string, string>>;
  /** @defaultValue the idempotency key, so a re-sent message keeps its id */
  messageId?: string;
}

const SEND_OPTIONS = {
  requestId: true,
  idempotencyKey: true,
  routingKey: true,
  headers: true,
  messageId: true,
} as const satisfies OptionNames<SendOptions>;

export interface RabbitPublisher extends OutgoingPublisher {
  /**
   * Publishes one message as the start (or a hop) of a request and resolves when the broker
   * confirmed it. Destination convention: without `routingKey`, `destination` is a queue reached
   * through the default exchange; with it, `destination` is an exchange.
   *
   * @throws PublishError when it was not confirmed within `publishTimeoutMs`, was nacked, or
   * (with `mandatory`) no queue took it. Sending again with the same idempotency key (and
   * message id) is safe; without one, each call is a new key.
   * @throws ClosedError after {@link RabbitPublisher.close} (also for a send still waiting then).
   */
  send(
    destination: string,
    message: unknown,
    options?: SendOptions,
  ): Promise<{ requestId: string; idempotencyKey: string }>;
  /** Waits until a channel is open. @throws ClosedError after close. */
  ready(): Promise<void>;
  /**
   * Closes the channel (and the connection, when the publisher created it). Final: every call
   * after it, and every publish still waiting for a channel or a confirm, rejects with a
   * `ClosedError` at once. Safe to call twice.
   */
  close(): Promise<void>;
}

/** True when an OpenTelemetry instrumentation wrapped the client's publish (shimmer marks it). */
const wrapped = (fn: unknown) => (fn as { __wrapped?: unknown } | undefined)?.__wrapped === true;

/**
 * @example
 * ```ts
 * const publisher = createPublisher({ connection: 'amqp://127.0.0.1' });
 * await publisher.send('orders', { orderId: 'o-1' }, { requestId: req.headers['idempotency-key'] });
 * ```
 */
export function createPublisher(options: PublisherOptions): RabbitPublisher {
  if (!options?.connection) {
    throw new ConfigError('connection (an AMQP URL or connection manager) is required');
  }
  refuseUnknownOptions(options, {
    connection: true,
    publishTimeoutMs: true,
    mandatory: true,
    recordKeys: true,
    logger: true,
  } satisfies OptionNames<PublisherOptions>);
  const { manager, owned } = resolveConnection(options.connection);
  const timeoutMs = options.publishTimeoutMs ?? 30_000;
  const mandatory = options.mandatory ?? true;
  const logger = options.logger ?? defaultLogger;
  let instrumented = false;
  // Set by close(): from then on nothing looks for a channel again (the keeper's get() would
  // reject at once, and a retry loop around it would spin until its deadline).
  let closed = false;
  let closing: Promise<void> | undefined;
  const closedError = () => new ClosedError('publisher');
  const keeper = keepChannel({
    manager,
    logger,
    name: 'publisher',
    // A consumer's own publisher shares its connection, whose drops the consumer reports.
    reportConnection: owned,
    setup: async (kept) => {
      instrumented = wrapped(kept.channel.publish);
    },
  });
  // Exchanges seen to exist. A publish to a missing exchange makes the broker close the channel,
  // which would fail every other publish on it; a passive check on a throwaway channel does not.
  const exchanges = new Set<string>();

  const checkExchange = async (exchange: string) => {
    if (exchange === '' || exchanges.has(exchange) || !manager.connection) return;
    const ch = await manager.connection.createChannel();
    ch.on('error', () => {});
    try {
      await ch.checkExchange(exchange);
      exchanges.add(exchange);
    } catch (error) {
      if ((error as { code?: unknown }).code === 404) {
        throw new PublishError(`exchange "${exchange}" does not exist`, { cause: error });
      }
      // Anything else (a connection going down) is for the publish itself to run into.
    } finally {
      await ch.close().catch(() => {});
    }
  };

  const publishOne = async (m: OutgoingMessage, deadline: number) => {
    const [exchange, key] = m.routingKey === undefined ? ['', m.destination] : [m.destination, m.routingKey];
    const content = Buffer.from(m.body.buffer, m.body.byteOffset, m.body.byteLength);
    const publishOptions = {
      persistent: true,
      mandatory,
      messageId: amqpMessageId(m.id),
      ...(m.headers['content-type'] ? { contentType: m.headers['content-type'] } : {}),
      headers: { ...m.headers },
    };
    for (;;) {
      if (closed) throw closedError();
      try {
        await checkExchange(exchange);
        const kept = await keeper.get(Math.max(1, deadline - Date.now()));
        await withDeadline(
          publishConfirmed(kept, exchange, key, content, publishOptions),
          deadline,
          m.destination,
        );
        return;
      } catch (error) {
        if (closed) throw closedError();
        // A channel that closed before the confirm: the message may or may not be in the queue.
        // Sending it again (same message id and key) is safe; the consumer deduplicates.
        if (error instanceof ChannelClosedError && Date.now() < deadline) {
          exchanges.clear();
          // A turn for I/O first: the channel's close event, which hands out the next one, must
          // run before this looks for a channel again (otherwise it spins on the closing one).
          await new Promise<void>((resolve) => setImmediate(resolve));
          continue;
        }
        if (error instanceof PublishError) throw error;
        if (error instanceof ChannelClosedError) {
          // The wait for a channel was cut to what was left of the deadline: say the whole wait.
          throw new PublishError(
            `publish to ${m.destination} was not confirmed within publishTimeoutMs (${timeoutMs} ms): no channel to the broker opened in that time`,
            { cause: error },
          );
        }
        throw new PublishError(`publish to ${m.destination} was not confirmed: ${(error as Error).message}`, {
          cause: error,
        });
      }
    }
  };

  return {
    async publish(messages) {
      if (closed) throw closedError();
      // Confirms are per message: send them all, then wait for all.
      const deadline = Date.now() + timeoutMs;
      await Promise.all(messages.map((m) => publishOne(m, deadline)));
    },

    async send(destination, message, opts = {}) {
      if (closed) throw closedError();
      // A misspelt idempotencyKey would send under a random key: the receivers' deduplication lost.
      refuseUnknownOptions(opts, SEND_OPTIONS, 'send options');
      // Refused here if a consumer would refuse it; a long request id as consumers read it.
      const { requestId, idempotencyKey } = sendIdentity(opts);
      const { bytes, contentType } = encodeValue(message);
      const deadline = Date.now() + timeoutMs;
      const build = (traceHeaders: Record<string, string>): OutgoingMessage => ({
        id: opts.messageId ?? idempotencyKey,
        destination,
        ...(opts.routingKey === undefined ? {} : { routingKey: opts.routingKey }),
        body: bytes,
        headers: {
          'content-type': contentType,
          ...extraHeaders(opts.headers),
          ...traceHeaders,
          [Headers.RequestId]: requestId,
          [Headers.IdempotencyKey]: idempotencyKey,
        },
      });
      // Whether an instrumentation wraps publish is known once a channel exists; a send needs
      // one anyway (if none comes in time, publishOne reports it).
      if (!keeper.current()) await keeper.get(Math.max(1, deadline - Date.now())).catch(() => {});
      if (instrumented) {
        // @opentelemetry/instrumentation-amqplib already makes a PRODUCER span per publish and
        // injects its context into the headers; a second span would double every send.
        await publishOne(build({}), deadline);
        return { requestId, idempotencyKey };
      }
      const span = tracer().startSpan(`send ${destination}`, {
        kind: SpanKind.PRODUCER,
        attributes: {
          'messaging.system': 'rabbitmq',
          'messaging.operation.type': 'send',
          'messaging.operation.name': 'send',
          'messaging.destination.name': destination,
          ...(opts.routingKey === undefined
            ? {}
            : { 'messaging.rabbitmq.destination.routing_key': opts.routingKey }),
          'exactly_once.request_id': requestId,
          ...(options.recordKeys ? { 'exactly_once.key': idempotencyKey } : {}),
        },
      });
      const traceHeaders: Record<string, string> = {};
      const bag = (propagation.getBaggage(context.active()) ?? propagation.createBaggage()).setEntry(
        'exactly_once.request_id',
        { value: requestId },
      );
      propagation.inject(propagation.setBaggage(trace.setSpan(context.active(), span), bag), traceHeaders);
      try {
        await publishOne(build(traceHeaders), deadline);
      } catch (error) {
        span.recordException(error as Error);
        span.setStatus({ code: SpanStatusCode.ERROR, message: (error as Error).message });
        throw error;
      } finally {
        span.end();
      }
      return { requestId, idempotencyKey };
    },

    async ready() {
      if (closed) throw closedError();
      try {
        await keeper.get(Number.POSITIVE_INFINITY);
      } catch (error) {
        throw closed ? closedError() : error;
      }
    },

    close() {
      closed = true;
      closing ??= (async () => {
        await keeper.close();
        if (owned) await manager.close();
      })();
      return closing;
    },
  };
}

/** `p`, or a PublishError if it has not settled by `deadline` (the broker never confirmed). */
function withDeadline<T>(p: Promise<T>, deadline: number, destination: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new PublishError(`publish to ${destination}: the broker did not confirm in time`)),
      Math.max(0, deadline - Date.now()),
    );
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

/**
 * The AMQP `message-id` of an outgoing message: its id, or, over the protocol's 255 bytes, a
 * digest of it (the id itself travels whole in `x-idempotency-key`).
 */
function amqpMessageId(id: string): string {
  return Buffer.byteLength(id) <= 255 ? id : `sha256:${sha256Hex(id)}`;
}
