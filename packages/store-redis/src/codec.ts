/**
 * The record encoding (the same as src/lua/includes/record.lua): one Redis string per record,
 * fixed-width big-endian numbers, length-prefixed (4 bytes) strings:
 *
 *   state 1 byte (I|C|F), fence 6, attempt 4, t1 6, t2 6, flags 1, fingerprint, trace id
 *   IN_PROGRESS then: owner, the store key itself;  COMPLETED then: result
 *
 * t1/t2: IN_PROGRESS leaseUntil (0 = released) / its attempt's start; COMPLETED and FAILED
 * completedAt or failedAt / expiresAt. Flags 1: an extras hash (the record's name + `x`) holds
 * what the hot path never writes, with one-letter fields:
 *
 *   e error / lastError   m outgoing count; d<i> id, o<i> message, p<i> present once published
 *   S<name>               step: done '<at>:' + result bytes; started (in doubt) '<at>' alone
 *
 * Lua only compares fingerprints, fences and times; values are packed and unpacked here.
 */
import {
  type CompletedRecord,
  CorruptRecordError,
  type ErrorInfo,
  type InProgressEntry,
  type OutgoingMessage,
  type OutgoingRecord,
  type ProcessedRecord,
  RecordState,
  type StepRecord,
  type StoredResult,
} from '@exactly-once/core';

/** A COMPLETED record answered by a compaction marker: no result, no messages, no history. */
export interface CompactedRecord extends CompletedRecord {
  readonly compacted: true;
}

const HEX_BYTES = /^(?:[0-9a-f]{2})+$/;
const TRACE_REF = /^([0-9a-f]{32})-([0-9a-f]{16})$/;

/**
 * Fingerprints (sha256 hex) and trace refs (`<trace id>-<span id>`) are hex: stored as bytes they
 * take half the space. A leading byte says which form follows, so any other string round-trips.
 */
export function packText(text: string): Buffer {
  const out = Buffer.allocUnsafe(packedTextBound(text));
  return out.subarray(0, writePackedText(out, 0, text));
}

/** At least the bytes {@link writePackedText} writes for `text`, found without reading it. */
export function packedTextBound(text: string): number {
  return 1 + 3 * text.length;
}

/** {@link packText} written into `out` at `at` (room for {@link packedTextBound}); returns its length. */
export function writePackedText(out: Buffer, at: number, text: string): number {
  if (HEX_BYTES.test(text)) {
    out[at] = 1;
    return 1 + out.write(text, at + 1, 'hex');
  }
  const trace = TRACE_REF.exec(text);
  if (trace) {
    out[at] = 2;
    const id = out.write(trace[1] as string, at + 1, 'hex');
    return 1 + id + out.write(trace[2] as string, at + 1 + id, 'hex');
  }
  out[at] = 0;
  return 1 + out.write(text, at + 1, 'utf8');
}

export function unpackText(packed: Buffer): string {
  const body = packed.subarray(1);
  switch (packed[0]) {
    case 1:
      return body.toString('hex');
    case 2:
      return `${body.subarray(0, 16).toString('hex')}-${body.subarray(16).toString('hex')}`;
    default:
      return body.toString('utf8');
  }
}

export function packError(error: ErrorInfo): string {
  return JSON.stringify([error.name, error.code, error.message]);
}

function unpackError(packed: Buffer): ErrorInfo {
  const [name, code, message] = JSON.parse(packed.toString('utf8')) as [string, string, string];
  return { name, code, message };
}

/** The first byte of a packed inline result (`i`); a blob pointer's is `b`. */
export const INLINE_RESULT = 0x69;

/** A blob result's packed form: `b` and its pointer (an inline one is `i` and its data, written in place). */
export function packBlobResult(result: Extract<StoredResult, { kind: 'blob' }>): string {
  const { uri, size, sha256 } = result.pointer;
  // A fourth element, 1, marks a streamed (raw bytes) result; records without it are JSON blobs.
  return `b${JSON.stringify(result.raw ? [uri, size, sha256, 1] : [uri, size, sha256])}`;
}

export function unpackResult(packed: Buffer): StoredResult {
  if (packed[0] === INLINE_RESULT) return { kind: 'inline', data: copy(packed.subarray(1)) };
  const [uri, size, sha256, raw] = JSON.parse(packed.subarray(1).toString('utf8')) as [
    string,
    number,
    string,
    1?,
  ];
  return { kind: 'blob', pointer: { uri, size, sha256 }, ...(raw === 1 ? { raw: true } : {}) };
}

/** `[destination, routingKey|null, headers]` as JSON, a newline (JSON escapes its own), the body. */
export function packMessage(message: OutgoingMessage): Buffer {
  const meta = JSON.stringify([message.destination, message.routingKey ?? null, message.headers]);
  return Buffer.concat([Buffer.from(`${meta}\n`), message.body]);
}

function unpackMessage(id: string, packed: Buffer, published: boolean): OutgoingRecord {
  const cut = packed.indexOf(0x0a);
  const [destination, routingKey, headers] = JSON.parse(packed.subarray(0, cut).toString('utf8')) as [
    string,
    string | null,
    Record<string, string>,
  ];
  return {
    id,
    destination,
    ...(routingKey === null ? {} : { routingKey }),
    body: copy(packed.subarray(cut + 1)),
    headers,
    published,
  };
}

/** Replies can be views into a larger socket buffer: hand out copies the caller owns. */
function copy(bytes: Buffer): Uint8Array {
  return new Uint8Array(bytes);
}

function int(value: Buffer | undefined): number {
  return value === undefined ? 0 : Number(value.toString('latin1'));
}

/** The fixed-width head of a packed record (see the module comment). */
const HEAD_BYTES = 1 + 6 + 4 + 6 + 6 + 1;

/** Reads the length-prefixed strings of a packed record from `at` on. */
function strings(packed: Buffer, at: number, count: number): Buffer[] {
  const out: Buffer[] = [];
  let pos = at;
  for (let i = 0; i < count; i++) {
    const length = packed.readUInt32BE(pos);
    out.push(packed.subarray(pos + 4, pos + 4 + length));
    pos += 4 + length;
  }
  return out;
}

/**
 * Decodes a record: the packed string and its extras hash (a flat HGETALL reply, empty when the
 * record has none); `undefined` when there is no record.
 */
export function decodeRecord(
  key: string,
  packed: Buffer | null | undefined,
  extrasFlat: readonly Buffer[] = [],
): ProcessedRecord | undefined {
  if (!packed || packed.length < HEAD_BYTES) return undefined;
  try {
    return decodeFields(key, packed, extrasFlat);
  } catch (error) {
    // Fields the store did not write (an error, a result pointer or a message that is not the
    // JSON it writes): that key's damage, not a failure of the call.
    if (error instanceof CorruptRecordError) throw error;
    const why = error instanceof Error ? error.message : String(error);
    throw new CorruptRecordError({ key, detail: `a field that does not decode (${why})` });
  }
}

function decodeFields(key: string, packed: Buffer, extrasFlat: readonly Buffer[]): ProcessedRecord {
  const state = String.fromCharCode(packed[0] as number);
  const fence = packed.readUIntBE(1, 6);
  const attempt = packed.readUInt32BE(7);
  const t1 = packed.readUIntBE(11, 6);
  const t2 = packed.readUIntBE(17, 6);
  const [fp, trace, third] = strings(packed, HEAD_BYTES, state === 'I' ? 4 : state === 'C' ? 3 : 2);
  const fields = new Map<string, Buffer>();
  const steps: [string, StepRecord][] = [];
  for (let i = 0; i + 1 < extrasFlat.length; i += 2) {
    const name = extrasFlat[i] as Buffer;
    const value = extrasFlat[i + 1] as Buffer;
    if (name[0] === 0x53 /* S */) {
      const cut = value.indexOf(0x3a /* : */);
      steps.push([
        name.subarray(1).toString('utf8'),
        cut < 0
          ? { state: 'started', at: Number(value.toString('latin1')), result: new Uint8Array(0) }
          : {
              state: 'done',
              at: Number(value.subarray(0, cut).toString('latin1')),
              result: copy(value.subarray(cut + 1)),
            },
      ]);
    } else {
      fields.set(name.toString('latin1'), value);
    }
  }
  const base = {
    key,
    fingerprint: unpackText(fp ?? Buffer.of(0)),
    fence,
    attempt,
    ...(trace === undefined || trace.length === 0 ? {} : { traceId: unpackText(trace) }),
  };
  const error = fields.get('e');
  if (state === 'I') {
    return {
      ...base,
      state: RecordState.InProgress,
      owner: (third ?? Buffer.alloc(0)).toString('utf8'),
      leaseUntil: t1,
      ...(error === undefined ? {} : { lastError: unpackError(error) }),
      // fromEntries defines own properties, so a step named `__proto__` stays an ordinary entry.
      steps: Object.fromEntries(steps),
    };
  }
  if (state === 'F') {
    return {
      ...base,
      state: RecordState.Failed,
      error: unpackError(error ?? Buffer.from('["Error","ERROR",""]')),
      failedAt: t1,
      expiresAt: t2,
    };
  }
  const outgoing: OutgoingRecord[] = [];
  for (let i = 1; i <= int(fields.get('m')); i++) {
    const id = (fields.get(`d${i}`) ?? Buffer.alloc(0)).toString('utf8');
    outgoing.push(
      unpackMessage(id, fields.get(`o${i}`) ?? Buffer.from('["",null,{}]\n'), fields.has(`p${i}`)),
    );
  }
  return {
    ...base,
    state: RecordState.Completed,
    ...(third === undefined || third.length === 0 ? {} : { result: unpackResult(third) }),
    outgoing,
    completedAt: t1,
    expiresAt: t2,
  };
}

/** A packed IN_PROGRESS record as listInProgress reports it (its store key included); else undefined. */
export function inProgressEntry(packed: Buffer): InProgressEntry | undefined {
  if (packed.length < HEAD_BYTES || packed[0] !== 0x49 /* I */) return undefined;
  const [, , owner, name] = strings(packed, HEAD_BYTES, 4);
  return {
    key: (name ?? Buffer.alloc(0)).toString('utf8'),
    owner: (owner ?? Buffer.alloc(0)).toString('utf8'),
    attempt: packed.readUInt32BE(7),
    fence: packed.readUIntBE(1, 6),
    leaseUntil: packed.readUIntBE(11, 6),
    startedAt: packed.readUIntBE(17, 6),
  };
}

/** True when a COMPLETED or FAILED record's retention has passed on the server clock. */
export function isExpired(record: ProcessedRecord, now: number): boolean {
  return record.state !== RecordState.InProgress && record.expiresAt <= now;
}

/**
 * A record standing in for a compacted one. The stored fingerprint is known only by a 4-byte
 * hash, so it is reported as `compacted:<hex>` unless the caller's own fingerprint matched it.
 */
export function decodeMarker(key: string, marker: Buffer, matchedFingerprint?: string): CompactedRecord {
  return {
    key,
    fingerprint: matchedFingerprint ?? `compacted:${marker.subarray(6).toString('hex')}`,
    fence: 0,
    attempt: 0,
    state: RecordState.Completed,
    outgoing: [],
    completedAt: 0,
    expiresAt: markerExpiry(marker),
    compacted: true,
  };
}

export function markerExpiry(marker: Buffer): number {
  return marker.readUIntBE(0, 6);
}
