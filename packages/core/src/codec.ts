/** Encoding of payloads, results and outgoing bodies. JSON by default; bytes pass through. */
import { ConfigError, MalformedMessageError, UnencodableValueError } from './errors.js';
import { readHeader } from './headers.js';
import type { Delivery } from './spi.js';

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

export interface JsonDecoderOptions {
  /** The largest body accepted, in bytes; a larger one is refused before it is read. */
  readonly maxBytes?: number;
  /**
   * The media types accepted (`application/json`), compared without their parameters
   * (`; charset=utf-8`) and letter case. A message with another `content-type` is refused; one
   * without any passes, unless `requireContentType`.
   */
  readonly contentTypes?: readonly string[];
  /** Refuse a message that carries no `content-type` (with `contentTypes`). Default false. */
  readonly requireContentType?: boolean;
}

/**
 * A `decode` for UTF-8 JSON that first refuses bodies over `maxBytes` and content types other than
 * `contentTypes`: what a consumer open to producers it does not control usually wants. A refused
 * message is dead-lettered `MALFORMED_MESSAGE` with the reason, like a body that is not JSON.
 */
export function jsonDecoder<T = unknown>(
  options: JsonDecoderOptions = {},
): (body: Uint8Array, delivery: Delivery) => T {
  const { maxBytes, contentTypes, requireContentType = false } = options;
  if (maxBytes !== undefined && !(Number.isSafeInteger(maxBytes) && maxBytes > 0)) {
    throw new ConfigError('jsonDecoder: maxBytes must be a positive integer');
  }
  const accepted = contentTypes && new Set(contentTypes.map(mediaType));
  if (accepted !== undefined && (accepted.size === 0 || accepted.has(''))) {
    throw new ConfigError('jsonDecoder: contentTypes must list at least one media type');
  }
  if (requireContentType && accepted === undefined) {
    throw new ConfigError('jsonDecoder: requireContentType needs contentTypes');
  }
  return (body, delivery) => {
    if (maxBytes !== undefined && body.byteLength > maxBytes) {
      throw new MalformedMessageError(
        `message body of ${body.byteLength} bytes is over maxBytes ${maxBytes}`,
      );
    }
    if (accepted !== undefined) {
      const sent = readHeader(delivery.headers, 'content-type') ?? '';
      const type = mediaType(sent);
      if (type === '') {
        if (requireContentType)
          throw new MalformedMessageError('message has no content-type, and one is required');
      } else if (!accepted.has(type)) {
        throw new MalformedMessageError(
          `message content-type ${JSON.stringify(sent.slice(0, 100))} is not accepted`,
        );
      }
    }
    // What the payload is, the handler's type or the schema's says (as with the default decode).
    return decodeJson(body) as T;
  };
}

/** `text/plain; charset=utf-8` -> `text/plain`. */
function mediaType(contentType: string): string {
  const semicolon = contentType.indexOf(';');
  return (semicolon < 0 ? contentType : contentType.slice(0, semicolon)).trim().toLowerCase();
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
