/** Reading a delivery: decode, validate, fingerprint, key and request id. */
import { decodeJson } from './codec.js';
import { describeThrown, ExactlyOnceError, KeyMissingError, MalformedMessageError } from './errors.js';
import { Headers, readIdentityHeader } from './headers.js';
import { fingerprint, normalizeKey, normalizeRequestId, scopeKey } from './keys.js';
import type { ResolvedProcessorOptions } from './options.js';
import { parseWith } from './schema.js';
import type { Delivery } from './spi.js';

/** The `system` of an idempotent executor's call (executor.ts): a request, not a message. */
export const REQUEST_SYSTEM = 'http';

/**
 * Whether `delivery` is an executor's call: its words are a request's and its header name the HTTP
 * one, and its refusals go to the caller, never to a dead-letter destination.
 */
export function isRequest(delivery: Delivery): boolean {
  return delivery.system === REQUEST_SYSTEM;
}

/**
 * The reason a delivery that could not be read is dead-lettered with: a library error as it is,
 * anything else (a user hook or a hostile payload may throw anything) as MALFORMED_MESSAGE.
 */
export function unreadable(error: unknown): ExactlyOnceError {
  return error instanceof ExactlyOnceError
    ? error
    : new MalformedMessageError(`message could not be read: ${describeThrown(error)}`, { cause: error });
}

export interface Prepared<T> {
  payload: T;
  key: string;
  storeKey: string;
  requestId: string;
  fingerprint: string;
}

/**
 * Reads `delivery`; throws what it is dead-lettered with. A promise only when the consumer's
 * `schema` answers asynchronously.
 */
export function prepare<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  delivery: Delivery,
): Prepared<T> | Promise<Prepared<T>> {
  let payload: T;
  try {
    payload = o.decode ? o.decode(delivery.body, delivery) : (decodeJson(delivery.body) as T);
  } catch (error) {
    throw malformed('could not be decoded', error);
  }
  if (o.schema === undefined) return identify(o, delivery, payload);
  let parsed: T | Promise<T>;
  try {
    parsed = parseWith(o.schema, payload);
  } catch (error) {
    throw malformed('failed validation', error);
  }
  return parsed instanceof Promise
    ? parsed.then(
        (output) => identify(o, delivery, output),
        (error: unknown) => {
          throw malformed('failed validation', error);
        },
      )
    : identify(o, delivery, parsed);
}

/** The payload's validation (the `validate` hook), fingerprint, key and request id. */
function identify<T, R>(o: ResolvedProcessorOptions<T, R>, delivery: Delivery, payload: T): Prepared<T> {
  try {
    o.validate?.(payload);
  } catch (error) {
    throw malformed('failed validation', error);
  }
  const fp = fingerprint(o.fingerprint ? o.fingerprint(payload) : payload);
  let raw = readIdentityHeader(delivery.headers, Headers.IdempotencyKey);
  if (raw === undefined || raw === '') raw = keyFromPolicy(o, payload, delivery, fp);
  const key = normalizeKey(raw);
  const requestId = requestIdHeader(delivery) ?? key;
  return { payload, key, storeKey: scopeKey(o.namespace, o.consumer, key), requestId, fingerprint: fp };
}

/**
 * The request id header of a delivery that could not be read (a payload, key or hook refused), or
 * undefined when it is absent or unusable itself: its span still carries the id a trace is found by.
 */
export function readableRequestId(delivery: Delivery): string | undefined {
  try {
    return requestIdHeader(delivery);
  } catch {
    return undefined;
  }
}

/**
 * The delivery's request id header, normalized, or undefined when absent or empty. Validated as
 * strictly as the key (it throws the same errors): it is copied onto every downstream message.
 */
function requestIdHeader(delivery: Delivery): string | undefined {
  const header = readIdentityHeader(delivery.headers, Headers.RequestId);
  return header ? normalizeRequestId(header) : undefined;
}

export function keyFromPolicy<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  payload: T,
  delivery: Delivery,
  fp: string,
): string {
  const policy = o.missingKey;
  if (policy === 'broker-id') {
    if (delivery.brokerId) return delivery.brokerId;
    throw new KeyMissingError(
      'message has no idempotency key and the broker gave it no stable id (missingKey: broker-id)',
    );
  }
  if (policy === 'payload-hash') return `payload:${fp}`;
  if (typeof policy === 'function') {
    const k = policy(payload, delivery);
    if (k) return k;
  }
  // An executor's call (see executor.ts) names its key as the HTTP header, not the broker one.
  if (isRequest(delivery)) {
    throw new KeyMissingError(
      'request has no idempotency key (Idempotency-Key) and missingKey policy is "reject"',
    );
  }
  throw new KeyMissingError();
}

/** `error` of decode or validate as the MalformedMessageError it is dead-lettered with. */
function malformed(what: string, error: unknown): MalformedMessageError {
  if (error instanceof MalformedMessageError) return error;
  return new MalformedMessageError(`message ${what}: ${(error as Error)?.message ?? error}`, {
    cause: error,
  });
}
