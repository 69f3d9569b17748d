/** Kafka record -> core `Delivery`, and the headers the adapter adds to copies it produces. */

import { Headers } from '@exactly-once/core';
import { type DeadLetterReason, type Delivery, deadLetterHeaders, setOwn } from '@exactly-once/core/spi';
import type { KafkaHeaders, KafkaMessageLike, ProducerRecordMessageLike } from './client.js';

/** Headers the Kafka adapter adds to dead-lettered and retried copies, besides core's `x-eo-*`. */
export const KafkaHeaderNames = {
  /** Topic/partition/offset the copy was made from: finds the original, identifies repeats. */
  OriginalTopic: 'x-eo-original-topic',
  OriginalPartition: 'x-eo-original-partition',
  OriginalOffset: 'x-eo-original-offset',
  OriginalTimestamp: 'x-eo-original-timestamp',
  /** Retry topic: earliest time (ms since epoch) the copy may be processed. */
  RetryAt: 'x-eo-retry-at',
  /**
   * Retry topic: the original record's broker id, so the `broker-id` missing-key policy keys a
   * retried copy like the original (its own topic/partition/offset differ).
   */
  BrokerId: 'x-eo-broker-id',
} as const;

/** Span attribute names (OpenTelemetry messaging conventions). */
export const KafkaAttributes = {
  Offset: 'messaging.kafka.offset',
  Partition: 'messaging.destination.partition.id',
  MessageKey: 'messaging.kafka.message.key',
  Tombstone: 'messaging.kafka.message.tombstone',
  ConsumerGroup: 'messaging.consumer.group.name',
} as const;

const EMPTY = new Uint8Array(0);
// ignoreBOM: a leading U+FEFF is part of the value (by default the decoder drops it, and two
// different keys would read as one).
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** `kafka:<topic>:<partition>:<offset>`: stable across redeliveries of the same record. */
export function brokerIdOf(topic: string, partition: number, offset: string): string {
  return `kafka:${topic}:${partition}:${offset}`;
}

/**
 * Maps a record. A null value (tombstone) becomes an empty body flagged with the tombstone
 * attribute, which the consumer's decode wrapper turns into a malformed message.
 */
export function toDelivery(
  topic: string,
  partition: number,
  message: KafkaMessageLike,
  groupId: string,
  trustBrokerIdHeader: boolean,
): Delivery {
  const headers = cleanHeaders(message.headers);
  const attributes: Record<string, string | number | boolean> = {
    [KafkaAttributes.Offset]: Number(message.offset),
    [KafkaAttributes.Partition]: String(partition),
    [KafkaAttributes.ConsumerGroup]: groupId,
  };
  const key = textOf(message.key);
  if (key !== undefined) attributes[KafkaAttributes.MessageKey] = key;
  if (message.value === null) attributes[KafkaAttributes.Tombstone] = true;
  // Only a retry topic this consumer writes itself may carry the original's identity.
  const carried = trustBrokerIdHeader ? textOf(headers[KafkaHeaderNames.BrokerId]) : undefined;
  return {
    body: message.value ?? EMPTY,
    headers,
    destination: topic,
    system: 'kafka',
    brokerId: carried ?? brokerIdOf(topic, partition, message.offset),
    attributes,
  };
}

export function isTombstone(delivery: Delivery): boolean {
  return delivery.attributes?.[KafkaAttributes.Tombstone] === true;
}

/**
 * The original headers as strings or bytes, as a producer accepts them. A repeated header stays
 * repeated (every value, in order): collapsing it would turn a record core refused for an
 * ambiguous `x-idempotency-key` into a valid one with a guessed key for whoever replays the copy.
 */
export function copyHeaders(headers: KafkaHeaders | undefined): ProducerHeaders {
  const out: ProducerHeaders = {};
  // A null value cannot be produced (kafkajs refuses it): it goes out empty, still present, so
  // the copy stays as ambiguous as the record was. Empty bytes go out as an empty string: the
  // librdkafka client writes an empty Buffer as a null value, which the copy's readers (the
  // CLI's replay among them) would meet as a header without a value.
  const one = (v: HeaderValue | null) =>
    typeof v === 'string' ? v : v === null || v.byteLength === 0 ? '' : toBuffer(v);
  for (const [name, value] of Object.entries(cleanHeaders(headers))) {
    setOwn(out, name, Array.isArray(value) ? value.map(one) : one(value as HeaderValue | null));
  }
  return out;
}

type HeaderValue = string | Uint8Array;
type CleanValue = HeaderValue | null | HeaderValue[];

/**
 * The record's headers as strings, bytes and nulls only. A null value (a header written with no
 * value, which kafkajs reads as null) is kept: the header is still there, so an
 * `x-idempotency-key` with none beside an `X-Idempotency-Key` is two key headers, refused as
 * ambiguous, not a key read from the second. kafkajs collects a header named like a member of
 * `Object.prototype` (`toString`, `constructor`...) into `[<that member>, <value>]`: the member
 * is not a header and is dropped, and the header keeps its value. A header named `__proto__` stays
 * a header (setOwn).
 */
export function cleanHeaders(headers: KafkaHeaders | undefined): Record<string, CleanValue> {
  const out: Record<string, CleanValue> = {};
  if (headers === undefined) return out;
  // for-in, not Object.entries: no array of pairs made for each record.
  for (const name in headers) {
    if (!Object.hasOwn(headers, name)) continue;
    const value = headers[name];
    if (typeof value === 'string' || value instanceof Uint8Array || value === null) {
      setOwn(out, name, value); // the common case: one value
      continue;
    }
    // A null among repeated values stays a value (empty): the repeat is what core refuses.
    const values = (Array.isArray(value) ? value : [value])
      .map((v) => (v === null ? EMPTY : v))
      .filter((v): v is HeaderValue => typeof v === 'string' || v instanceof Uint8Array);
    if (values.length === 0) continue;
    setOwn(out, name, values.length === 1 && !Array.isArray(value) ? values[0] : values);
  }
  return out;
}

type ProducerHeaders = NonNullable<ProducerRecordMessageLike['headers']>;

function toBuffer(bytes: Uint8Array): Buffer;
function toBuffer(bytes: Uint8Array | null): Buffer | null;
function toBuffer(bytes: Uint8Array | null): Buffer | null {
  if (bytes === null) return null;
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** The record to produce to the dead-letter topic: same key and value, reason headers added. */
export function deadLetterRecord(
  topic: string,
  partition: number,
  message: KafkaMessageLike,
  reason: DeadLetterReason,
  fromRetryTopic: boolean,
): ProducerRecordMessageLike {
  return {
    key: toBuffer(message.key),
    value: toBuffer(message.value),
    headers: {
      ...copyHeaders(message.headers),
      ...deadLetterHeaders(reason),
      ...originHeaders(topic, partition, message, fromRetryTopic),
    },
  };
}

/** A copy for the retry topic, due `delayMs` from now, carrying the next attempt number. */
export function retryRecord(
  topic: string,
  partition: number,
  message: KafkaMessageLike,
  delivery: Delivery,
  retry: { delayMs: number; nextAttempt: number },
  now: number,
  fromRetryTopic: boolean,
): ProducerRecordMessageLike {
  return {
    key: toBuffer(message.key),
    value: toBuffer(message.value),
    headers: {
      ...copyHeaders(message.headers),
      ...originHeaders(topic, partition, message, fromRetryTopic),
      [Headers.Attempt]: String(retry.nextAttempt),
      [KafkaHeaderNames.RetryAt]: String(now + retry.delayMs),
      ...(delivery.brokerId ? { [KafkaHeaderNames.BrokerId]: delivery.brokerId } : {}),
    },
  };
}

function originHeaders(
  topic: string,
  partition: number,
  message: KafkaMessageLike,
  fromRetryTopic: boolean,
): Record<string, string> {
  // A copy of a copy keeps pointing at the first record. Only this consumer's retry topic holds
  // copies: on any other topic such headers are a producer's, and would point the copy elsewhere.
  const h = fromRetryTopic ? (message.headers ?? {}) : {};
  const keep = (name: string, value: string) => textOf(h[name]) ?? value;
  return {
    [KafkaHeaderNames.OriginalTopic]: keep(KafkaHeaderNames.OriginalTopic, topic),
    [KafkaHeaderNames.OriginalPartition]: keep(KafkaHeaderNames.OriginalPartition, String(partition)),
    [KafkaHeaderNames.OriginalOffset]: keep(KafkaHeaderNames.OriginalOffset, message.offset),
    [KafkaHeaderNames.OriginalTimestamp]: keep(KafkaHeaderNames.OriginalTimestamp, message.timestamp),
  };
}

/** Due time of a retry-topic copy, or undefined when it carries none. */
export function retryAtOf(message: KafkaMessageLike): number | undefined {
  const raw = textOf(message.headers?.[KafkaHeaderNames.RetryAt]);
  const at = raw === undefined ? Number.NaN : Number(raw);
  return Number.isFinite(at) ? at : undefined;
}

function textOf(value: KafkaHeaderValue | Uint8Array | null | undefined): string | undefined {
  if (value === null || value === undefined) return undefined;
  const last = Array.isArray(value) ? value[value.length - 1] : value;
  if (last === undefined || last === null) return undefined;
  if (typeof last === 'string') return last;
  try {
    return utf8.decode(last as Uint8Array);
  } catch {
    return undefined;
  }
}

type KafkaHeaderValue = KafkaHeaders[string];
