/** Header names the SDK reads and writes, and helpers to read them from any transport. */
import { InvalidKeyError } from './errors.js';

export const Headers = {
  /** End-to-end request id: set once by the first service, copied unchanged onto every message. */
  RequestId: 'x-request-id',
  /** Dedup key of this message. */
  IdempotencyKey: 'x-idempotency-key',
  Traceparent: 'traceparent',
  Tracestate: 'tracestate',
  Baggage: 'baggage',
  /** Retry attempt that produced this copy of the message (1 = first delivery). */
  Attempt: 'x-eo-attempt',
  /** Dead-letter and retry reason headers. */
  ErrorClass: 'x-eo-error-class',
  ErrorCode: 'x-eo-error-code',
  ErrorMessage: 'x-eo-error-message',
  /** `PREVIOUSLY_FAILED` letters: the code of the failure that made the key FAILED. */
  OriginalErrorCode: 'x-eo-original-error-code',
  Attempts: 'x-eo-attempts',
  OriginalDestination: 'x-eo-original-destination',
  Consumer: 'x-eo-consumer',
  FailedAt: 'x-eo-failed-at',
  Outcome: 'x-eo-outcome',
} as const;

/** A header value as transports hand it over: amqplib gives strings/numbers, kafkajs Buffers. */
export type HeaderValue =
  | string
  | number
  | boolean
  | Uint8Array
  | readonly (string | Uint8Array)[]
  | null
  | undefined;
export type MessageHeaders = Readonly<Record<string, HeaderValue>>;

// ignoreBOM: a leading U+FEFF is part of the value (by default the decoder drops it, and two
// different keys would read as one).
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * Reads a header as a string, leniently: for trace and informational headers only. Byte values
 * must be valid UTF-8; for a repeated header the last value wins. Never use it for a header that
 * identifies a message: see {@link readIdentityHeader}.
 *
 * @throws InvalidKeyError when the bytes are not valid UTF-8.
 */
export function readHeader(headers: MessageHeaders | undefined, name: string): string | undefined {
  if (!headers) return undefined;
  let value = headers[name];
  if (value === undefined) {
    // Header names are case-insensitive in HTTP and some bridges upper-case them.
    const lower = name.toLowerCase();
    for (const k of Object.keys(headers)) {
      if (k.toLowerCase() === lower) {
        value = headers[k];
        break;
      }
    }
  }
  if (Array.isArray(value)) value = value[value.length - 1];
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  try {
    return utf8.decode(value as Uint8Array);
  } catch {
    throw new InvalidKeyError(`header ${name} is not valid UTF-8`, 'encoding');
  }
}

/** Text form of every header that has one; binary values that are not UTF-8 are left out. */
export function textHeaders(headers: MessageHeaders | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (!headers) return out;
  for (const name of Object.keys(headers)) {
    try {
      const v = readHeader(headers, name);
      if (v !== undefined) out[name] = v;
    } catch {
      // not text: a payload-specific header we have no reason to interpret
    }
  }
  return out;
}

/**
 * Reads a header that identifies a message (`x-idempotency-key`, `x-request-id`) strictly: it
 * must be present once, as a string or UTF-8 bytes. Anything else is ambiguous and is never
 * guessed at: picking one of several values would collapse different messages onto one key.
 *
 * @returns the value, or undefined when the header is absent (or null).
 * @throws InvalidKeyError for a multi-valued header (an AMQP array, a repeated Kafka header), the
 * same name present twice in different letter case, a non-string value (number, boolean, table)
 * or bytes that are not valid UTF-8.
 */
export function readIdentityHeader(headers: MessageHeaders | undefined, name: string): string | undefined {
  if (!headers) return undefined;
  const lower = name.toLowerCase();
  let found: string | undefined;
  let all: string[] | undefined;
  // for-in, not Object.keys: no array of names made for each header read of each message.
  for (const k in headers) {
    // Names are ASCII: a key of another length cannot be the same name in another case.
    if (k.length !== lower.length || (k !== lower && k.toLowerCase() !== lower)) continue;
    if (!Object.hasOwn(headers, k)) continue;
    if (found === undefined) found = k;
    else {
      all ??= [found];
      all.push(k);
    }
  }
  if (all !== undefined) {
    throw new InvalidKeyError(
      `header ${name} is present ${all.length} times (${all.join(', ')})`,
      'multiple',
    );
  }
  const value = found === undefined ? undefined : headers[found];
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) {
    throw new InvalidKeyError(
      `header ${name} is a list of ${value.length} value${value.length === 1 ? '' : 's'}; it must be one string`,
      'multiple',
    );
  }
  if (value instanceof Uint8Array) {
    try {
      return utf8.decode(value);
    } catch {
      throw new InvalidKeyError(`header ${name} is not valid UTF-8`, 'encoding');
    }
  }
  throw new InvalidKeyError(`header ${name} must be a string, not ${describeType(value)}`, 'type');
}

function describeType(value: unknown): string {
  if (typeof value === 'object') return value === null ? 'null' : 'an object';
  return `a ${typeof value}`;
}

/** Headers the SDK sets on a message it sends and consumers read strictly (see readIdentityHeader). */
const OWN_HEADERS: ReadonlySet<string> = new Set([Headers.RequestId, Headers.IdempotencyKey]);

/**
 * A sender's extra headers without the ones the SDK sets itself, in any letter case: the SDK's
 * own win, and an `X-Request-Id` beside the SDK's `x-request-id` would make every consumer refuse
 * the message (the name present twice).
 */
export function extraHeaders(headers: Readonly<Record<string, string>> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (headers === undefined) return out;
  for (const [name, value] of Object.entries(headers)) {
    if (!OWN_HEADERS.has(name.toLowerCase())) out[name] = value;
  }
  return out;
}
