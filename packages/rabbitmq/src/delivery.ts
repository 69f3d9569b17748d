/** Mapping between amqplib messages and core's deliveries and copies. */
import type { ConsumeMessage, MessageProperties, Options } from 'amqplib';
import { type DeadLetterReason, type Delivery, deadLetterHeaders } from '@exactly-once/core/spi';
import { Headers } from '@exactly-once/core';

export function toDelivery(msg: ConsumeMessage, queue: string): Delivery {
  const props = msg.properties;
  const headers = { ...(props.headers ?? {}) };
  return {
    body: msg.content,
    headers,
    destination: queue,
    system: 'rabbitmq',
    // A publisher-set message id is stable across redeliveries; the delivery tag is not.
    ...(props.messageId ? { brokerId: `amqp:${queue}:${String(props.messageId)}` } : {}),
    attributes: {
      'messaging.rabbitmq.destination.routing_key': msg.fields.routingKey,
      'messaging.rabbitmq.message.delivery_tag': msg.fields.deliveryTag,
      'exactly_once.redelivered': msg.fields.redelivered,
      ...(props.messageId ? { 'messaging.message.id': String(props.messageId) } : {}),
    },
  };
}

/** Publish options that keep the original's identity and content description. */
function copyOptions(props: MessageProperties, headers: Record<string, unknown>): Options.Publish {
  return {
    persistent: true,
    headers,
    ...(props.messageId ? { messageId: String(props.messageId) } : {}),
    ...(props.contentType ? { contentType: String(props.contentType) } : {}),
    ...(props.contentEncoding ? { contentEncoding: String(props.contentEncoding) } : {}),
    ...(props.correlationId ? { correlationId: String(props.correlationId) } : {}),
    ...(props.type ? { type: String(props.type) } : {}),
    ...(props.appId ? { appId: String(props.appId) } : {}),
    ...(props.timestamp ? { timestamp: Number(props.timestamp) } : {}),
  };
}

export function retryCopyOptions(msg: ConsumeMessage, nextAttempt: number): Options.Publish {
  return copyOptions(msg.properties, {
    ...(msg.properties.headers ?? {}),
    [Headers.Attempt]: String(nextAttempt),
  });
}

export function deadLetterCopyOptions(msg: ConsumeMessage, reason: DeadLetterReason): Options.Publish {
  return copyOptions(msg.properties, {
    ...(msg.properties.headers ?? {}),
    ...deadLetterHeaders(reason),
    'x-eo-original-exchange': msg.fields.exchange,
    'x-eo-original-routing-key': msg.fields.routingKey,
  });
}
