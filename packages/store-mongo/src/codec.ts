/**
 * The stored documents (see store.ts for the protocol): a key's head (`_id` = the store key
 * verbatim) names its chain; the chain's elements are the key's states, one document each. Field
 * names are short (a COMPLETED record is written millions of times) and fixed: nothing the caller
 * supplies ever becomes a field name, so keys, step names, message ids and header names may hold
 * `.`, `$` or NUL. Steps and headers are arrays for that reason.
 */
import {
  type BlobPointer,
  type CompletedRecord,
  CorruptRecordError,
  type ErrorInfo,
  type FailedRecord,
  type InProgressRecord,
  type OutgoingMessage,
  type OutgoingRecord,
  type ProcessedRecord,
  RecordState,
  type StepRecord,
  type StoredResult,
} from '@exactly-once/core';
import { Binary } from 'mongodb';

/**
 * `s`: an element's state, as a small int (4 bytes in BSON, against 6 for a one-letter string).
 * `Sealed` ends a chain that the sweeper is deleting: nothing follows it.
 */
export const State = { InProgress: 1, Completed: 2, Failed: 3, Sealed: 4 } as const;
export type State = (typeof State)[keyof typeof State];

export interface ErrorDoc {
  n: string;
  c: string;
  m: string;
}

export interface StepDoc {
  /** Step name. */
  k: string;
  /** The result of a done step; absent on a started marker (`markStepStarted`). */
  r?: Binary;
  at: number;
}

export interface OutgoingDoc {
  i: string;
  d: string;
  k?: string;
  b: Binary;
  /** Headers flattened to `[name, value, name, value, ...]`: names are data, not field names. */
  h: string[];
}

export interface BlobDoc {
  u: string;
  z: number;
  h: string;
  /** A streamed result's raw bytes (absent: a JSON result). */
  r?: true;
}

/** A key's head: which chain holds its states. */
export interface HeadDoc {
  /** The store key, verbatim. */
  _id: string;
  /** Chain id: random per incarnation of the head, so a deleted chain's ids never come back. */
  c: string;
  /** Hint: a position at or before the chain's last element (it may lag; readers walk on). */
  h?: number;
}

/**
 * One state of a key: element `position` of chain `chain`, `_id` = {@link elementId} (which is
 * where both are read from: {@link elementPlace}). Written once by an insert that decides a race;
 * afterwards only its own lease holder updates it (lease, steps), and the sweeper and
 * `markPublished` touch terminal ones.
 */
export interface RecordDoc {
  _id: string;
  /** The store key (for the sweeper and operator queries). */
  k: string;
  /**
   * Chain id and position, as written by earlier versions (27 bytes an element): never read, since
   * the `_id` holds both; the documents still carrying them keep them until they are swept.
   */
  c?: string;
  i?: number;
  s: State;
  /** Fingerprint (32 bytes when it is lower-case sha256 hex, see {@link packFingerprint}). */
  f: string | Binary;
  /** Fence. */
  n: number;
  /** Attempt. */
  a: number;
  /** Trace id (24 bytes when it is `<32 hex>-<16 hex>`, see {@link packTraceId}). */
  t?: string | Binary;
  /** IN_PROGRESS: owner, lease end (store ms; 0 after release), journaled steps. */
  o?: string;
  l?: number;
  /** IN_PROGRESS: store time (ms) the current attempt began (for listInProgress). */
  sa?: number;
  /** Steps in the order saved; a name saved twice keeps its last entry (see {@link decodeSteps}). */
  st?: StepDoc[];
  /**
   * A lease that continues the previous element's attempts (a retry or takeover): `[m, c]`, its
   * first `c` steps account for the previous element's first `m` (see `catchUp` in store.ts). A
   * begin that failed before its catch-up leaves the previous element's later steps out of this
   * element; the next takeover of it adds them back from there.
   */
  cp?: [number, number];
  /** IN_PROGRESS: the last released attempt's error. FAILED: the error. */
  x?: ErrorDoc;
  /** COMPLETED: inline result, or blob pointer. */
  r?: Binary;
  b?: BlobDoc;
  /** COMPLETED: outgoing messages (absent when none) and the ids confirmed so far. */
  ob?: OutgoingDoc[];
  pb?: string[];
  /** COMPLETED/FAILED: completedAt or failedAt; SEALED: when sealed (store ms). */
  d?: number;
  /** COMPLETED/FAILED/SEALED: when the sweeper may collect it (its retention's end). */
  e?: Date;
}

/**
 * Whether an element is a tombstone: the lease of an attempt that ended with a result (its
 * successor is COMPLETED or FAILED), cut by the sweeper to its `_id` after `finishedLeaseMs`.
 * Nothing reads such a lease but `history`; its `_id` alone keeps the chain contiguous and the
 * insert race on its position decided. Never the last element of a live chain.
 */
export const isTombstone = (doc: RecordDoc): boolean => (doc as Partial<RecordDoc>).s === undefined;

/**
 * `_id` of element `position` of `chain`. The leading NUL and the random chain id keep these apart
 * from heads, whose `_id` is a store key (a key equal to one would have to guess the chain id).
 */
export function elementId(chain: string, position: number): string {
  return `\u0000${chain}:${position}`;
}

/** Chain id and position of the element whose `_id` is `id` (the inverse of {@link elementId}). */
export function elementPlace(id: string): { readonly chain: string; readonly position: number } {
  // Chain ids are base64url (see newChainId; a derived one is `L` and base64url): no `:`.
  const colon = id.lastIndexOf(':');
  return { chain: id.slice(1, colon), position: Number(id.slice(colon + 1)) };
}

const SHA256_HEX = /^[0-9a-f]{64}$/;
const TRACE_REF = /^([0-9a-f]{32})-([0-9a-f]{16})$/;

/**
 * A fingerprint is normally a sha256 in lower-case hex: stored as its 32 bytes it takes 37 bytes of
 * BSON instead of 69. Anything else (other formats, upper case) stays a string, so reading back
 * always gives the exact string written.
 */
export function packFingerprint(fingerprint: string): string | Binary {
  return SHA256_HEX.test(fingerprint) ? new Binary(Buffer.from(fingerprint, 'hex')) : fingerprint;
}

function unpackFingerprint(value: string | Binary): string {
  return typeof value === 'string' ? value : Buffer.from(value.value()).toString('hex');
}

/** `<trace id>-<span id>` in lower-case hex as 24 bytes (29 bytes of BSON instead of 54). */
export function packTraceId(traceId: string): string | Binary {
  const match = TRACE_REF.exec(traceId);
  return match === null ? traceId : new Binary(Buffer.from(`${match[1]}${match[2]}`, 'hex'));
}

function unpackTraceId(value: string | Binary): string {
  if (typeof value === 'string') return value;
  const hex = Buffer.from(value.value()).toString('hex');
  return `${hex.slice(0, 32)}-${hex.slice(32)}`;
}

/** Copies, so a caller mutating its array after the call never changes what is written. */
export function toBinary(data: Uint8Array): Binary {
  return new Binary(Uint8Array.prototype.slice.call(data));
}

/** A plain Uint8Array copy (never a view into the driver's buffer, never a Buffer). */
export function fromBinary(value: Binary | undefined): Uint8Array {
  if (value === undefined) return new Uint8Array(0);
  return Uint8Array.from(value.buffer.subarray(0, value.position));
}

export function encodeError(error: ErrorInfo): ErrorDoc {
  return { n: String(error.name), c: String(error.code), m: String(error.message) };
}

function decodeError(doc: ErrorDoc | undefined): ErrorInfo {
  return { name: doc?.n ?? 'Error', code: doc?.c ?? 'ERROR', message: doc?.m ?? '' };
}

export function encodeResult(result: StoredResult | undefined): { r?: Binary; b?: BlobDoc } {
  if (result === undefined) return {};
  if (result.kind === 'inline') return { r: toBinary(result.data) };
  const { uri, size, sha256 } = result.pointer;
  return { b: { u: uri, z: size, h: sha256, ...(result.raw ? { r: true as const } : {}) } };
}

function decodeResult(doc: RecordDoc): StoredResult | undefined {
  if (doc.r !== undefined) return { kind: 'inline', data: fromBinary(doc.r) };
  if (doc.b !== undefined) {
    const pointer: BlobPointer = { uri: doc.b.u, size: doc.b.z, sha256: doc.b.h };
    return { kind: 'blob', pointer, ...(doc.b.r === true ? { raw: true } : {}) };
  }
  return undefined;
}

export function encodeOutgoing(messages: readonly OutgoingMessage[]): OutgoingDoc[] {
  return messages.map((m) => {
    const h: string[] = [];
    for (const [name, value] of Object.entries(m.headers)) h.push(name, String(value));
    return {
      i: m.id,
      d: m.destination,
      ...(m.routingKey === undefined ? {} : { k: m.routingKey }),
      b: toBinary(m.body),
      h,
    };
  });
}

function decodeOutgoing(doc: RecordDoc): OutgoingRecord[] {
  const published = new Set(doc.pb ?? []);
  return (doc.ob ?? []).map((m) => {
    const headers: [string, string][] = [];
    for (let i = 0; i + 1 < m.h.length; i += 2) headers.push([m.h[i] as string, m.h[i + 1] as string]);
    return {
      id: m.i,
      destination: m.d,
      ...(m.k === undefined ? {} : { routingKey: m.k }),
      body: fromBinary(m.b),
      // fromEntries defines own properties: a header named `__proto__` stays a header.
      headers: Object.fromEntries(headers),
      published: published.has(m.i),
    };
  });
}

export function decodeSteps(steps: readonly StepDoc[] | undefined): Record<string, StepRecord> {
  const byName = new Map<string, StepRecord>();
  // saveStep and markStepStarted append; a later entry for a name replaces the earlier one.
  for (const step of steps ?? []) {
    byName.set(
      step.k,
      step.r === undefined
        ? { state: 'started', result: new Uint8Array(0), at: step.at }
        : { state: 'done', result: fromBinary(step.r), at: step.at },
    );
  }
  return Object.fromEntries(byName);
}

/** Whether a COMPLETED/FAILED element is past its retention at store time `now`. */
export function isExpired(doc: RecordDoc, now: number): boolean {
  return (
    (doc.s === State.Completed || doc.s === State.Failed) && (doc.e === undefined || doc.e.getTime() <= now)
  );
}

/**
 * Refuses, as CorruptRecordError, the last element of `key`'s chain when a field has a type this
 * store never writes (edited by hand): read on, it would fail every call as a TypeError, taken for
 * an outage, or be read as something it is not.
 */
export function checkElement(key: string, doc: RecordDoc): void {
  const wrong = wrongField(doc);
  if (wrong !== undefined) {
    throw new CorruptRecordError({ key, detail: `an element whose ${wrong[0]} is ${describe(wrong[1])}` });
  }
}

function wrongField(doc: RecordDoc): [string, unknown] | undefined {
  const fields = doc as unknown as Record<string, unknown>;
  const is = {
    number: (v: unknown) => typeof v === 'number' && Number.isFinite(v),
    bytes: (v: unknown) => typeof v === 'string' || v instanceof Binary,
    string: (v: unknown) => typeof v === 'string',
    date: (v: unknown) => v instanceof Date && !Number.isNaN(v.getTime()),
    binary: (v: unknown) => v instanceof Binary,
    array: (v: unknown) => Array.isArray(v),
    object: (v: unknown) => typeof v === 'object' && v !== null && !Array.isArray(v),
  };
  const states: unknown[] = [State.InProgress, State.Completed, State.Failed, State.Sealed];
  if (!states.includes(fields.s)) return ['state', fields.s];
  if (doc.s === State.Sealed) return undefined;
  const checks: [string, string, (v: unknown) => boolean, boolean][] = [
    ['n', 'fence', is.number, true],
    ['a', 'attempt', is.number, true],
    ['f', 'fingerprint', is.bytes, true],
    ['t', 'trace id', is.bytes, false],
    ['o', 'owner', is.string, false],
    ['l', 'lease end', is.number, false],
    ['sa', 'start', is.number, false],
    ['st', 'steps', is.array, false],
    ['cp', 'copied steps', is.array, false],
    ['x', 'error', is.object, false],
    ['r', 'result', is.binary, false],
    ['b', 'blob pointer', is.object, false],
    ['ob', 'outgoing messages', is.array, false],
    ['pb', 'published ids', is.array, false],
    ['d', 'time', is.number, false],
    ['e', 'expiry', is.date, false],
  ];
  for (const [field, name, ok, needed] of checks) {
    const value = fields[field];
    if (value === undefined ? needed : !ok(value)) return [name, value];
  }
  return undefined;
}

/** A value as an error message shows it: its type and a short rendering. */
export function describe(value: unknown): string {
  if (value === undefined) return 'missing';
  if (value instanceof Binary) return 'binary data';
  if (value instanceof Date) return `a date (${String(value)})`;
  const text = JSON.stringify(value) ?? String(value);
  return `${Array.isArray(value) ? 'an array' : typeof value} ${text.length > 40 ? `${text.slice(0, 40)}…` : text}`;
}

/** A lease, completed or failed element as the contract's record (never a sealed one). */
export function decodeRecord(doc: RecordDoc): ProcessedRecord {
  const base = {
    key: doc.k,
    fingerprint: unpackFingerprint(doc.f),
    fence: doc.n,
    attempt: doc.a,
    ...(doc.t === undefined ? {} : { traceId: unpackTraceId(doc.t) }),
  };
  switch (doc.s) {
    case State.InProgress: {
      const record: InProgressRecord = {
        ...base,
        state: RecordState.InProgress,
        owner: doc.o ?? '',
        leaseUntil: doc.l ?? 0,
        ...(doc.x === undefined ? {} : { lastError: decodeError(doc.x) }),
        steps: decodeSteps(doc.st),
      };
      return record;
    }
    case State.Completed: {
      const result = decodeResult(doc);
      const record: CompletedRecord = {
        ...base,
        state: RecordState.Completed,
        ...(result === undefined ? {} : { result }),
        outgoing: decodeOutgoing(doc),
        completedAt: doc.d ?? 0,
        expiresAt: doc.e?.getTime() ?? 0,
      };
      return record;
    }
    case State.Failed: {
      const record: FailedRecord = {
        ...base,
        state: RecordState.Failed,
        error: decodeError(doc.x),
        failedAt: doc.d ?? 0,
        expiresAt: doc.e?.getTime() ?? 0,
      };
      return record;
    }
    default:
      // Not a state this store writes: the element was edited or written outside it.
      throw new CorruptRecordError({ key: doc.k, detail: `an element whose state is ${describe(doc.s)}` });
  }
}
