/**
 * Idempotency keys: validation, scoping, child-key derivation and payload fingerprints.
 * Nothing here ever interprets a key: it is hashed or stored verbatim.
 */
import * as crypto from 'node:crypto';
import { ConfigError, InvalidKeyError } from './errors.js';
import { setOwn } from './own.js';

/** Keys longer than this many UTF-8 bytes are replaced by their sha256. */
export const MAX_KEY_BYTES = 255;
const HASHED_PREFIX = 'sha256:';
const NAME_PATTERN = /^[A-Za-z0-9._-]{1,100}$/;

/** Payloads nested deeper than this are refused by {@link canonicalJson} (and so by fingerprints). */
export const MAX_PAYLOAD_DEPTH = 1000;

/**
 * Validates a key as received and returns the form the store sees: the key itself, or
 * `sha256:<hex>` when it is longer than {@link MAX_KEY_BYTES}. A key that itself starts with
 * `sha256:` is hashed too, so a literal key can never collide with the hashed form of another.
 */
export function normalizeKey(raw: string): string {
  checkIdentity(raw, 'idempotency key');
  return raw.startsWith(HASHED_PREFIX) || tooLong(raw) ? HASHED_PREFIX + sha256Hex(raw) : raw;
}

/**
 * Validates a request id as strictly as a key and returns the form that travels on: the id
 * itself, or `sha256:<hex>` when it is longer than {@link MAX_KEY_BYTES}. Unlike a key, an id that
 * starts with `sha256:` is kept: a request id only correlates (no record is found by it), and the
 * next service must read the same id as this one, so a hashed long id is carried on unchanged.
 */
export function normalizeRequestId(raw: string): string {
  checkIdentity(raw, 'request id');
  return tooLong(raw) ? HASHED_PREFIX + sha256Hex(raw) : raw;
}

/**
 * The identity a first service's `send` gives a message: its request id (a new UUID when none is
 * given; one past {@link MAX_KEY_BYTES} as the `sha256:<hex>` every consumer reads it as, so what
 * the sender answers, traces and logs names the same id) and its key (the request id as given
 * when none is; consumers hash a long key themselves). Throws InvalidKeyError for either that the
 * consumers would refuse (empty, not UTF-8): the sender learns of it, rather than a dead letter
 * downstream.
 */
export function sendIdentity(given: { requestId?: string; idempotencyKey?: string }): {
  requestId: string;
  idempotencyKey: string;
} {
  const requestId = given.requestId === undefined ? crypto.randomUUID() : normalizeRequestId(given.requestId);
  if (given.idempotencyKey !== undefined) normalizeKey(given.idempotencyKey);
  return { requestId, idempotencyKey: given.idempotencyKey ?? given.requestId ?? requestId };
}

function checkIdentity(raw: string, what: 'idempotency key' | 'request id'): void {
  if (typeof raw !== 'string') throw new InvalidKeyError(`${what} must be a string`, 'type');
  if (raw.length === 0) throw new InvalidKeyError(`${what} is empty`, 'empty');
  if (!raw.isWellFormed())
    throw new InvalidKeyError(`${what} contains an unpaired UTF-16 surrogate`, 'encoding');
  // U+FFFD is what a lenient decoder (amqplib's, for AMQP strings) leaves for bytes that were not
  // UTF-8: two different ids sent as such bytes would read as one. Refused, never guessed at.
  if (raw.includes('\uFFFD')) {
    throw new InvalidKeyError(
      `${what} holds U+FFFD, which stands for bytes that were not valid UTF-8: two different ids would read as one`,
      'encoding',
    );
  }
}

const tooLong = (raw: string) => Buffer.byteLength(raw, 'utf8') > MAX_KEY_BYTES;

/** Checks a namespace or consumer name: they become part of every store key. */
export function validateName(kind: 'namespace' | 'consumer', name: string): string {
  if (typeof name !== 'string' || !NAME_PATTERN.test(name)) {
    throw new ConfigError(`${kind} must match ${NAME_PATTERN} (got ${JSON.stringify(name)})`);
  }
  return name;
}

/** `namespace:consumer:key`: two services (or two consumers of one service) never share records. */
export function scopeKey(namespace: string, consumer: string, key: string): string {
  return `${namespace}:${consumer}:${key}`;
}

/**
 * The store key the pipeline uses for a message key: `namespace:consumer:normalizeKey(key)`. Use
 * it to look a message's record up (`store.get`) or to forget it before replaying a dead letter
 * (`store.clear`).
 *
 * @example
 * ```ts
 * const storeKey = recordKeyFor({ consumer: 'billing', key: 'order-42' });
 * console.log(await store.get(storeKey)); // state, attempt, fence, lease, result, outgoing
 * const record = await store.get(storeKey);
 * if (record?.state === 'FAILED') await store.clear(storeKey, { failedFence: record.fence });
 * ```
 */
export function recordKeyFor(message: { consumer: string; key: string; namespace?: string }): string {
  const namespace = validateName('namespace', message.namespace ?? 'default');
  return scopeKey(namespace, validateName('consumer', message.consumer), normalizeKey(message.key));
}

/**
 * A child key derived from a parent key, the namespace and consumer that derive it, and a name
 * the handler gives. Deterministic, so a re-run derives the same key; fixed length and URL-safe,
 * so it fits an external API's `Idempotency-Key` header. The namespace is part of it, so two
 * tenants with the same consumer name and business key never emit the same child key.
 *
 * The `eo2-` prefix names the derivation: `eo1-` keys (0.1, without the namespace) are never
 * produced again, so a message re-run after an upgrade publishes a new child key once.
 */
export function deriveChildKey(namespace: string, consumer: string, name: string, parentKey: string): string {
  // Namespace and consumer are validated names without newlines; the handler's name is length
  // prefixed, so no choice of name and key can reproduce another pair's input.
  const digest = crypto
    .createHash('sha256')
    .update(`eo2\n${namespace}\n${consumer}\n${name.length}:${name}\n${parentKey}`)
    .digest('base64url');
  return `eo2-${digest.slice(0, 32)}`;
}

/**
 * Canonical JSON: object keys sorted, no whitespace, `undefined` members dropped. Two payloads
 * that mean the same thing give the same text whatever their key order.
 */
export function canonicalJson(value: unknown): string {
  try {
    return JSON.stringify(canonicalize(value, undefined, 0));
  } catch (error) {
    // The fast walk keeps no path: walk again with it to tell a cycle from a deep value.
    if (error instanceof RangeError) return JSON.stringify(canonicalize(value, new Set(), 0));
    throw error;
  }
}

/** What a payload nested past MAX_PAYLOAD_DEPTH is refused with (as MALFORMED_MESSAGE, see `unreadable`). */
export function tooDeep(): RangeError {
  return new RangeError(`value nests deeper than ${MAX_PAYLOAD_DEPTH} levels`);
}

/** `seen`: the objects on the path, to name a cycle; without it a cycle ends at the depth limit. */
function canonicalize(value: unknown, seen: Set<object> | undefined, depth: number): unknown {
  if (value === null || typeof value !== 'object') {
    if (typeof value === 'bigint') return `${value}n`;
    if (typeof value === 'number' && !Number.isFinite(value)) {
      throw new TypeError(`cannot fingerprint non-finite number ${value}`);
    }
    return value;
  }
  if (seen?.has(value)) throw new TypeError('cannot fingerprint a cyclic value');
  // A walk this deep would overflow the stack; a real payload never nests like this.
  if (depth >= MAX_PAYLOAD_DEPTH) throw tooDeep();
  seen?.add(value);
  try {
    if (value instanceof Uint8Array) return { $bytes: Buffer.from(value).toString('base64') };
    if (Array.isArray(value))
      return value.map((v) => (v === undefined ? null : canonicalize(v, seen, depth + 1)));
    if (value instanceof Date) return value.toISOString();
    const out: Record<string, unknown> = {};
    for (const k of sortedKeys(value)) {
      const v = (value as Record<string, unknown>)[k];
      // setOwn: a member named `__proto__` stays in the fingerprint. (`Object.create(null)`
      // instead slows every payload's fingerprint.)
      if (v !== undefined && typeof v !== 'function') setOwn(out, k, canonicalize(v, seen, depth + 1));
    }
    return out;
  } finally {
    seen?.delete(value);
  }
}

/**
 * The object's keys in sort order (UTF-16 code units, as `Array.prototype.sort`). Most payloads
 * have a few keys, often already in order: an insertion sort in place, which allocates nothing
 * (`sort()` allocated ~0.9 kB for a payload of two keys, on every message).
 */
function sortedKeys(value: object): string[] {
  const keys = Object.keys(value);
  if (keys.length > 32) return keys.sort();
  for (let i = 1; i < keys.length; i++) {
    const key = keys[i] as string;
    let j = i - 1;
    while (j >= 0 && (keys[j] as string) > key) {
      keys[j + 1] = keys[j] as string;
      j--;
    }
    keys[j + 1] = key;
  }
  return keys;
}

/** sha256 (hex) of the canonical JSON of `value`; raw bytes are hashed as they are. */
export function fingerprint(value: unknown): string {
  if (value instanceof Uint8Array) return sha256Hex(value);
  return sha256Hex(canonicalJson(value));
}

/** A value allowed in {@link stableKey}: immutable request data, never a clock reading. */
export type StableKeyField = string | number | boolean | bigint | null;

/**
 * Builds an idempotency key from immutable request fields, e.g. a client's order id and amount.
 * Dates are refused on purpose: a key must not contain a time bucket (a retry that crosses a
 * minute boundary would get a new key and be processed twice). Pass a timestamp that is itself
 * part of the request, as a string, if it really identifies the request.
 *
 * @example
 * ```ts
 * const key = stableKey('charge', { customerId: 'c_42', cartId: 'cart_9', amountCents: 1999 });
 * ```
 */
export function stableKey(purpose: string, fields: Readonly<Record<string, StableKeyField>>): string {
  for (const [name, v] of Object.entries(fields)) {
    const t = typeof v;
    if (!(v === null || t === 'string' || t === 'number' || t === 'boolean' || t === 'bigint')) {
      throw new ConfigError(
        `stableKey field "${name}" must be a string, number, boolean, bigint or null: ` +
          'keys are built from immutable request data, never from dates or clock buckets',
      );
    }
  }
  return `${purpose}-${crypto.createHash('sha256').update(canonicalJson(fields)).digest('base64url').slice(0, 32)}`;
}

// One-shot hashing (Node >= 20.12) skips the Hash object: a third of the cost for a short input.
const oneShot = (
  crypto as {
    hash?: {
      (algorithm: string, data: string | Uint8Array, encoding: 'hex' | 'latin1'): string;
    };
  }
).hash;

export function sha256Hex(data: string | Uint8Array): string {
  return oneShot ? oneShot('sha256', data, 'hex') : crypto.createHash('sha256').update(data).digest('hex');
}

/** sha256 of `data` as bytes (for stores that derive names from a key's hash). */
export function sha256(data: string | Uint8Array): Buffer {
  // Through a latin1 string (one char a byte, exact both ways): crypto.hash's 'buffer' output
  // measured 1.1-1.2 us a call on Node 20, this 0.5, for a store key's name on every new key.
  return oneShot
    ? Buffer.from(oneShot('sha256', data, 'latin1'), 'latin1')
    : crypto.createHash('sha256').update(data).digest();
}
