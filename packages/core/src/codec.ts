/** Encoding of payloads, results and outgoing bodies. JSON by default; bytes pass through. */
import { MalformedMessageError } from './errors.js';

const decoder = new TextDecoder('utf-8', { fatal: true });

/** Encodes a value for a message body or a stored result. */
export function encodeValue(value: unknown): { bytes: Uint8Array; contentType: string } {
  if (value instanceof Uint8Array) return { bytes: value, contentType: 'application/octet-stream' };
  if (typeof value === 'string') return { bytes: utf8Bytes(value), contentType: 'text/plain; charset=utf-8' };
  return { bytes: utf8Bytes(JSON.stringify(value ?? null)), contentType: 'application/json' };
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
export function encodeResult(value: unknown): Uint8Array | undefined {
  if (value === undefined) return undefined;
  return utf8Bytes(JSON.stringify(value));
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
