/**
 * The publisher: confirmed publishes over a reconnecting confirm channel. `send` is for a first
 * service (it mints the request id); `publish` is core's OutgoingPublisher, used by consumers for
 * the handler's outgoing messages.
 */
import { randomUUID } from 'node:crypto';
import { context, propagation, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { ConfigError, Headers, PublishError, type OutgoingMessage } from '@exactly-once/core';
import { encodeValue, type OutgoingPublisher, tracer } from '@exactly-once/core/spi';
import type { ChannelWrapper } from 'amqp-connection-manager';
import { type ConnectionInput, resolveConnection } from './connection.js';

export interface PublisherOptions {
  connection: ConnectionInput;
  /** A publish not confirmed within this time (e.g. broker down) rejects. @defaultValue 30000 */
  publishTimeoutMs?: number;
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

export interface RabbitPublisher extends OutgoingPublisher {
  /**
   * Publishes one message as the start (or a hop) of a request and resolves when the broker
   * confirmed it. Destination convention: without `routingKey`, `destination` is a queue reached
   * through the default exchange; with it, `destination` is an exchange.
   */
  send(
    destination: string,
    message: unknown,
    options?: SendOptions,
  ): Promise<{ requestId: string; idempotencyKey: string }>;
  /** Waits until connected. */
  ready(): Promise<void>;
  close(): Promise<void>;
}

/**
 * @example
 * ```ts
 * const publisher = createPublisher({ connection: 'amqp://127.0.0.1' });
 * await publisher.send('orders', { orderId: 'o-1' }, { requestId: req.headers['idempotency-key'] });
 * ```
 */
export function createPublisher(options: PublisherOptions): RabbitPublisher {
  if (!options?.connection)
    throw new ConfigError('connection (an AMQP URL or connection manager) is required');
  const { manager, owned } = resolveConnection(options.connection);
  const timeout = options.publishTimeoutMs ?? 30_000;
  const channel: ChannelWrapper = manager.createChannel({
    json: false,
    confirm: true,
    publishTimeout: timeout,
  });

  const route = (destination: string, routingKey: string | undefined) =>
    routingKey === undefined
      ? { exchange: '', key: destination }
      : { exchange: destination, key: routingKey };

  const publishOne = async (m: OutgoingMessage) => {
    const { exchange, key } = route(m.destination, m.routingKey);
    try {
      await channel.publish(exchange, key, Buffer.from(m.body), {
        persistent: true,
        messageId: m.id,
        contentType: m.headers['content-type'],
        headers: { ...m.headers },
      });
    } catch (cause) {
      throw new PublishError(`publish to ${m.destination} was not confirmed`, { cause });
    }
  };

  return {
    async publish(messages) {
      // Confirms are per message; send them all, then wait for all.
      await Promise.all(messages.map(publishOne));
    },
    async send(destination, message, opts = {}) {
      const requestId = opts.requestId ?? randomUUID();
      const idempotencyKey = opts.idempotencyKey ?? requestId;
      const span = tracer().startSpan(`send ${destination}`, {
        kind: SpanKind.PRODUCER,
        attributes: {
          'messaging.system': 'rabbitmq',
          'messaging.operation.type': 'send',
          'messaging.destination.name': destination,
          'exactly_once.request_id': requestId,
          'exactly_once.key': idempotencyKey,
        },
      });
      const headers: Record<string, string> = { ...opts.headers };
      const bag = (propagation.getBaggage(context.active()) ?? propagation.createBaggage()).setEntry(
        'exactly_once.request_id',
        { value: requestId },
      );
      propagation.inject(propagation.setBaggage(trace.setSpan(context.active(), span), bag), headers);
      const { bytes, contentType } = encodeValue(message);
      try {
        await publishOne({
          id: opts.messageId ?? idempotencyKey,
          destination,
          ...(opts.routingKey === undefined ? {} : { routingKey: opts.routingKey }),
          body: bytes,
          headers: {
            'content-type': contentType,
            ...headers,
            [Headers.RequestId]: requestId,
            [Headers.IdempotencyKey]: idempotencyKey,
          },
        });
      } catch (error) {
        span.recordException(error as Error);
        span.setStatus({ code: SpanStatusCode.ERROR, message: (error as Error).message });
        throw error;
      } finally {
        span.end();
      }
      return { requestId, idempotencyKey };
    },
    ready: () => channel.waitForConnect(),
    async close() {
      await channel.close();
      if (owned) await manager.close();
    },
  };
}
