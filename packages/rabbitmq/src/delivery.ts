/** Mapping between amqplib messages and core's deliveries, and the copies we publish of them. */

import { Headers } from '@exactly-once/core';
import {
  type DeadLetterReason,
  type Delivery,
  deadLetterHeaders,
  type HeaderValue,
} from '@exactly-once/core/spi';
import type { ConsumeMessage, MessageProperties, Options } from 'amqplib';

/** Headers that identify a message; core validates them strictly (see `readIdentityHeader`). */
const IDENTITY_HEADERS = new Set<string>([Headers.IdempotencyKey, Headers.RequestId]);

/**
 * AMQP header tables can hold values core has no use for (nested tables such as `x-death`,
 * timestamps, decimals); the delivery keeps the scalar, text and byte ones. The identity headers
 * are the exception: they go to core exactly as amqplib decoded them, whatever their type (an
 * array, a number, a table), under every letter case they were sent with, so that core refuses
 * an ambiguous key instead of this mapping silently dropping it (a dropped key would fall back
 * to the `missingKey` policy and be processed under another key). Copies we publish keep every
 * original header.
 */
function scalarHeaders(headers: Record<string, unknown> | undefined): Record<string, HeaderValue> {
  const out: Record<string, HeaderValue> = {};
  if (headers === undefined) return out;
  // for-in, not Object.entries: no array of pairs made for each message.
  for (const name in headers) {
    if (!Object.hasOwn(headers, name)) continue;
    const v = headers[name];
    if (IDENTITY_HEADERS.has(name.toLowerCase())) {
      out[name] = v as HeaderValue; // raw: core decides
    } else if (
      typeof v === 'string' ||
      typeof v === 'number' ||
      typeof v === 'boolean' ||
      v instanceof Uint8Array
    ) {
      out[name] = v;
    } else if (Array.isArray(v) && v.every((x) => typeof x === 'string' || x instanceof Uint8Array)) {
      out[name] = v as (string | Uint8Array)[];
    }
  }
  return out;
}

export function toDelivery(msg: ConsumeMessage, queue: string): Delivery {
  const props = msg.properties;
  const messageId =
    props.messageId === undefined || props.messageId === null ? undefined : String(props.messageId);
  const headers = scalarHeaders(props.headers);
  if (messageId !== undefined && headers['message-id'] === undefined) headers['message-id'] = messageId;
  // AMQP carries these as properties, Kafka as headers: a `decode` finds them in one place.
  if (props.contentType && headers['content-type'] === undefined) {
    headers['content-type'] = String(props.contentType);
  }
  if (props.contentEncoding && headers['content-encoding'] === undefined) {
    headers['content-encoding'] = String(props.contentEncoding);
  }
  return {
    body: msg.content,
    headers,
    destination: queue,
    system: 'rabbitmq',
    // A publisher-set message id survives redeliveries and our retry copies; the delivery tag
    // does not.
    ...(messageId !== undefined ? { brokerId: `amqp:${messageId}` } : {}),
    attributes: {
      'messaging.rabbitmq.destination.routing_key': msg.fields.routingKey,
      'messaging.rabbitmq.message.delivery_tag': msg.fields.deliveryTag,
      'exactly_once.redelivered': msg.fields.redelivered,
      ...(messageId !== undefined ? { 'messaging.message.id': messageId } : {}),
    },
  };
}

/** Below this amqplib encodes an integer-valued number as a 64-bit integer, and fails. */
const MIN_INT64 = -0x8000000000000000;

/**
 * A header value as amqplib can encode it again. amqplib decodes every AMQP number to a JS number
 * and, encoding, guesses the type from the value: a whole number below -2^63 (an AMQP double such
 * as -1e20) becomes a 64-bit integer and the publish throws, so the copy could never be sent. Such
 * numbers go back as doubles; nested tables and arrays likewise.
 */
function reencodable(value: unknown): unknown {
  if (typeof value === 'number') return value < MIN_INT64 ? { '!': 'double', value } : value;
  if (Array.isArray(value)) return value.map(reencodable);
  if (value === null || typeof value !== 'object' || Buffer.isBuffer(value) || value instanceof Date)
    return value;
  if (isTyped(value)) return value;
  // A nested table, stated as one: a table a client sent with a field named `!` would otherwise
  // read to amqplib as a type marker and fail to encode, and its copy could never be sent.
  return { '!': 'object', value: tableOf(value as Record<string, unknown>) };
}

/** Typed values as amqplib decodes them: `{ '!': 'decimal' | 'timestamp', value }`. */
function isTyped(value: object): boolean {
  const typed = value as { '!'?: unknown };
  return (typed['!'] === 'decimal' || typed['!'] === 'timestamp') && Object.keys(value).length === 2;
}

function tableOf(table: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(table).map(([k, v]) => [k, reencodable(v)]));
}

/**
 * Publish options that keep the original's identity, content description, reply address and
 * priority. Not `expiration` (a copy must not expire in the dead-letter queue) nor `userId` (the
 * broker refuses one that is not the publishing connection's user).
 */
export function copyOptions(props: MessageProperties, headers: Record<string, unknown>): Options.Publish {
  return {
    persistent: true,
    headers: tableOf(headers),
    ...(props.messageId ? { messageId: String(props.messageId) } : {}),
    ...(props.contentType ? { contentType: String(props.contentType) } : {}),
    ...(props.contentEncoding ? { contentEncoding: String(props.contentEncoding) } : {}),
    ...(props.correlationId ? { correlationId: String(props.correlationId) } : {}),
    ...(props.replyTo ? { replyTo: String(props.replyTo) } : {}),
    ...(typeof props.priority === 'number' ? { priority: props.priority } : {}),
    ...(props.type ? { type: String(props.type) } : {}),
    ...(props.appId ? { appId: String(props.appId) } : {}),
    ...(props.timestamp ? { timestamp: Number(props.timestamp) } : {}),
  };
}

/** The retry copy: every original header, and the attempt it will be. */
export function retryCopyOptions(msg: ConsumeMessage, nextAttempt: number): Options.Publish {
  return copyOptions(msg.properties, {
    ...(msg.properties.headers ?? {}),
    [Headers.Attempt]: String(nextAttempt),
  });
}

/** The dead-letter copy: every original header, the reason headers, and where it came from. */
export function deadLetterCopyOptions(msg: ConsumeMessage, reason: DeadLetterReason): Options.Publish {
  return copyOptions(msg.properties, { ...(msg.properties.headers ?? {}), ...reasonHeaders(msg, reason) });
}

/** What every dead letter carries: the reason headers, and the exchange and key it came through. */
function reasonHeaders(msg: ConsumeMessage, reason: DeadLetterReason): Record<string, string> {
  return {
    ...deadLetterHeaders(reason),
    'x-eo-original-exchange': msg.fields.exchange,
    'x-eo-original-routing-key': msg.fields.routingKey,
  };
}

/** Identity headers longer than this are left out of a reduced copy (see below). */
const MAX_KEPT_IDENTITY = 1024;

/**
 * The dead-letter copy of a message whose own headers or properties amqplib cannot encode again
 * (a header table over its 64 KiB buffer once the reason headers are added, a table that reads
 * as one of its typed values, a message id that grew past 255 bytes when bytes that were not
 * UTF-8 were decoded): the body as it was, the reason headers, where it came from, the identity
 * headers when they are plain strings, and `x-eo-copy-reduced` saying why the rest is missing.
 * Without it such a message could never leave the queue.
 */
export function reducedDeadLetterCopyOptions(
  msg: ConsumeMessage,
  reason: DeadLetterReason,
  why: string,
): Options.Publish {
  const identity: Record<string, string> = {};
  for (const [name, v] of Object.entries(msg.properties.headers ?? {})) {
    if (IDENTITY_HEADERS.has(name.toLowerCase()) && typeof v === 'string' && v.length <= MAX_KEPT_IDENTITY) {
      identity[name] = v;
    }
  }
  return {
    persistent: true,
    headers: {
      ...identity,
      ...reasonHeaders(msg, reason),
      'x-eo-copy-reduced': `original headers and properties left out: ${why}`,
    },
  };
}
