/** Encoding of payloads, results and outgoing bodies. JSON by default; bytes pass through. */
import { MalformedMessageError, UnencodableValueError } from './errors.js';

const decoder = new TextDecoder('utf-8', { fatal: true });

/**
 * Encodes a value for a message body or a stored result; `what` names it in the error.
 * @throws UnencodableValueError when JSON cannot hold it (a BigInt, a cycle, a function).
 */
export function encodeValue(
  value: unknown,
  what = 'a message body',
): { bytes: Uint8Array; contentType: string } {
  if (value instanceof Uint8Array) return { bytes: value, contentType: 'application/octet-stream' };
  if (typeof value === 'string') return { bytes: utf8Bytes(value), contentType: 'text/plain; charset=utf-8' };
  return { bytes: utf8Bytes(json(value ?? null, what)), contentType: 'application/json' };
}

/** JSON text of `value`, or an {@link UnencodableValueError} naming `what` it is. */
function json(value: unknown, what: string): string {
  // JSON.stringify turns these into `{}` (or an object of indexes) without a word: a duplicate
  // would be answered something else than the first run returned.
  if (
    value instanceof Map ||
    value instanceof Set ||
    (ArrayBuffer.isView(value) && !Buffer.isBuffer(value))
  ) {
    throw new UnencodableValueError(
      what,
      `a ${value.constructor.name} is not JSON (convert it: Object.fromEntries(map), [...set], bytes as base64 or a stream)`,
    );
  }
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch (cause) {
    throw new UnencodableValueError(what, cause);
  }
  // A function or a symbol stringifies to nothing at all.
  if (typeof text !== 'string') throw new UnencodableValueError(what, `a ${typeof value} is not JSON`);
  return text;
}

/** Default message decoder: UTF-8 JSON. */
export function decodeJson(body: Uint8Array): unknown {
  let text: string;
  try {
    text = decoder.decode(body);
  } catch (cause) {
    throw new MalformedMessageError('message body is not valid UTF-8', { cause });
  }
  try {
    return JSON.parse(text);
  } catch (cause) {
    throw new MalformedMessageError(`message body is not valid JSON: ${(cause as Error).message}`, { cause });
  }
}

/** Stored results are JSON; `undefined` round-trips as an absent result. */
export function encodeResult(value: unknown, what = 'a result'): Uint8Array | undefined {
  if (value === undefined) return undefined;
  return utf8Bytes(json(value, what));
}

/**
 * UTF-8 bytes of a text. `Buffer.from` takes small texts from Node's shared pool instead of a new
 * ArrayBuffer each (a third of `TextEncoder`'s cost): readers must honour `byteOffset`.
 */
function utf8Bytes(text: string): Uint8Array {
  return Buffer.from(text, 'utf8');
}

export function decodeResult<R>(bytes: Uint8Array): R {
  return JSON.parse(decoder.decode(bytes)) as R;
}
