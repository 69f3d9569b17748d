/** What the dead-letter commands share across RabbitMQ and Kafka: the letter, its reason, replay. */
import {
  CorruptRecordError,
  ErrorCode,
  Headers,
  InvalidKeyError,
  normalizeKey,
  normalizeRequestId,
  type ProcessedStore,
  readIdentityHeader,
  recordKeyFor,
} from '@exactly-once/core';
import { formatBytes, type Io, shown, table, truncate } from '../output.js';
import { storeError } from '../stores.js';

/** One dead letter, as read from a dead-letter queue or topic. */
export interface DeadLetter {
  /**
   * How `dlq show` and `dlq replay` name it: `<partition>:<offset>` on Kafka; on RabbitMQ the
   * message id, or `#` and a digest of its headers and body for a message without one (copies of
   * one message share it).
   */
  readonly id: string;
  /** The dedup key (`x-idempotency-key`), when the message had one. */
  readonly key?: string;
  /**
   * Why the message's key could not be used, when it had a key header the SDK refuses (an AMQP
   * number, array or table, a repeated header, bytes that are not UTF-8, text holding U+FFFD): as
   * the SDK said it.
   */
  readonly unusableKey?: string;
  readonly requestId?: string;
  /** Why the message's request id header could not be used (repeated, not text...), as the SDK said it. */
  readonly unusableRequestId?: string;
  readonly reason: {
    readonly errorClass?: string;
    readonly errorCode?: string;
    /** `PREVIOUSLY_FAILED` letters: the code of the failure that made the key FAILED. */
    readonly originalErrorCode?: string;
    readonly errorMessage?: string;
    readonly attempts?: string;
    readonly consumer?: string;
    readonly failedAt?: string;
  };
  /** Where it came from; a replay sends it to `destination` (`--to` overrides). */
  readonly origin: {
    readonly destination?: string;
    readonly exchange?: string;
    readonly routingKey?: string;
    /** Kafka: the partition and offset of the record in its original topic. */
    readonly partition?: string;
    readonly offset?: string;
  };
  /**
   * Every header with a text form; `null` for a Kafka header present without a value (the key
   * header, if so, counts as missing, as the consumer read it); for a header repeated (Kafka) or
   * an AMQP array, the text of each value in order, so that it never reads as one value.
   */
  readonly headers: Readonly<Record<string, HeaderText>>;
  /**
   * RabbitMQ only: the AMQP properties set on the letter, headers apart (`contentType`,
   * `messageId`, `timestamp`...), as text.
   */
  readonly properties?: Readonly<Record<string, string>>;
  readonly body: Buffer;
  /** Kafka only: the record had no value at all (a tombstone), not an empty one; `body` is empty. */
  readonly noValue?: true;
  /** Kafka only: the record key, partition and offset in the dead-letter topic. */
  readonly kafka?: { readonly key: string | null; readonly partition: number; readonly offset: string };
}

/** A header as a letter shows it: its text, `null` without a value, each value's text when repeated. */
export type HeaderText = string | null | readonly string[];

/** A header's text where one value is expected (reasons, origins); a repeated one has none. */
export function single(value: HeaderText | undefined): string | undefined {
  return typeof value === 'string' ? value : undefined;
}

export function reasonOf(headers: DeadLetter['headers']): DeadLetter['reason'] {
  const pick = (name: string) => single(headers[name]);
  return {
    ...(pick(Headers.ErrorClass) ? { errorClass: pick(Headers.ErrorClass) } : {}),
    ...(pick(Headers.ErrorCode) ? { errorCode: pick(Headers.ErrorCode) } : {}),
    ...(pick(Headers.OriginalErrorCode) ? { originalErrorCode: pick(Headers.OriginalErrorCode) } : {}),
    ...(pick(Headers.ErrorMessage) ? { errorMessage: pick(Headers.ErrorMessage) } : {}),
    ...(pick(Headers.Attempts) ? { attempts: pick(Headers.Attempts) } : {}),
    ...(pick(Headers.Consumer) ? { consumer: pick(Headers.Consumer) } : {}),
    ...(pick(Headers.FailedAt) ? { failedAt: pick(Headers.FailedAt) } : {}),
  };
}

/**
 * Headers a replayed copy leaves out: the reason and origin headers the dead-lettering added
 * (`x-eo-*`, the retry attempt included) and RabbitMQ's own `x-death` history and quorum
 * `x-delivery-count` (which every `list` of the letter raises). The key, the
 * request id, `traceparent` and every application header stay.
 */
export function isReplayDropped(name: string): boolean {
  const lower = name.toLowerCase();
  return lower.startsWith('x-eo-') || lower === 'x-death' || lower === 'x-delivery-count';
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** The body as text (pretty JSON when it parses), or base64 when it is not UTF-8. */
export function bodyText(body: Buffer): { encoding: 'utf8' | 'base64'; text: string } {
  try {
    const text = utf8.decode(body);
    try {
      return { encoding: 'utf8', text: JSON.stringify(JSON.parse(text), null, 2) };
    } catch {
      return { encoding: 'utf8', text };
    }
  } catch {
    return { encoding: 'base64', text: body.toString('base64') };
  }
}

/** A dead letter as `--json` prints it (the body as text or base64). */
export function letterJson(letter: DeadLetter, withBody: boolean): Record<string, unknown> {
  const body = bodyText(letter.body);
  return {
    id: letter.id,
    ...(letter.key === undefined ? {} : { key: letter.key }),
    ...(letter.unusableKey === undefined ? {} : { unusableKey: letter.unusableKey }),
    ...(letter.requestId === undefined ? {} : { requestId: letter.requestId }),
    ...(letter.unusableRequestId === undefined ? {} : { unusableRequestId: letter.unusableRequestId }),
    // As the text's code column: `PREVIOUSLY_FAILED/<first code>` for a failed key's copy.
    code: codeOf(letter.reason),
    reason: letter.reason,
    origin: letter.origin,
    ...(letter.kafka ? { kafka: letter.kafka } : {}),
    bytes: letter.body.byteLength,
    ...(withBody
      ? {
          headers: letter.headers,
          ...(letter.properties ? { properties: letter.properties } : {}),
          ...(letter.noValue
            ? { body: null }
            : {
                body: body.encoding === 'utf8' ? letter.body.toString('utf8') : body.text,
                bodyEncoding: body.encoding,
              }),
        }
      : {}),
  };
}

/**
 * The letters `--code` selects (all without it): a code matches a letter's own code, and
 * `PREVIOUSLY_FAILED/<code>` only the copies of keys that failed with `<code>`.
 */
export function codeMatcher(codes: readonly string[] | undefined): (letter: DeadLetter) => boolean {
  if (codes === undefined) return () => true;
  const wanted = new Set(codes);
  return (letter) => wanted.has(letter.reason.errorCode ?? '') || wanted.has(codeOf(letter.reason));
}

/** The letter's code; a PREVIOUSLY_FAILED one with the code of the failure behind it. */
function codeOf(reason: DeadLetter['reason']): string {
  const code = reason.errorCode ?? '-';
  return reason.originalErrorCode ? `${code}/${reason.originalErrorCode}` : code;
}

/**
 * The list's lines. With `filter` (`--code`), the letters shown are those of the `read` ones
 * (`--limit`) that have the codes; the head says so, and asks for a larger limit only when the
 * queue or topic holds more than was read.
 */
export function renderList(
  source: string,
  letters: readonly DeadLetter[],
  total: number,
  filter?: { readonly codes: readonly string[]; readonly read: number },
): string[] {
  const rows = letters.length > 0 ? ['', ...table(listRows(letters))] : [];
  if (filter && total > 0) {
    const more = total > filter.read ? ' (--limit for more)' : '';
    const matched = letters.length > 0 ? `${letters.length}` : 'none';
    const codes = filter.codes.join(', ');
    return [
      `${source}: ${total} dead letter(s); ${matched} with code ${codes} among the ${filter.read} read${more}`,
      ...rows,
    ];
  }
  if (letters.length === 0) return [`${source}: no dead letters`];
  const shown = total > letters.length ? ` (first ${letters.length} shown; --limit for more)` : '';
  return [`${source}: ${total} dead letter(s)${shown}`, ...rows];
}

function listRows(letters: readonly DeadLetter[]): string[][] {
  return [
    ['id', 'failed at', 'consumer', 'code', 'error', 'key', 'message'],
    ...letters.map((l) => [
      truncate(l.id, 40),
      l.reason.failedAt ?? '-',
      l.reason.consumer ?? '-',
      codeOf(l.reason),
      l.reason.errorClass ?? '-',
      truncate(keyCell(l, '-'), 36),
      truncate((l.reason.errorMessage ?? '').replace(/\s+/g, ' '), 80),
    ]),
  ];
}

export function renderLetter(source: string, letter: DeadLetter): string[] {
  const r = letter.reason;
  const rows: string[][] = [
    ['source', source],
    ['id', letter.id],
    [
      'key',
      letter.unusableKey === undefined ? keyCell(letter, '(none)') : `(unusable: ${letter.unusableKey})`,
    ],
    [
      'request id',
      letter.unusableRequestId !== undefined
        ? `(unusable: ${letter.unusableRequestId})`
        : letter.requestId === undefined
          ? '(none)'
          : shown(letter.requestId),
    ],
    ['error', `${r.errorClass ?? '?'} (${codeOf(r)})`],
    ['message', r.errorMessage ?? ''],
    ['attempts', r.attempts ?? '-'],
    ['consumer', r.consumer ?? '-'],
    ['failed at', r.failedAt ?? '-'],
    ['replays to', replayTarget(letter) ?? '(unknown: use --to)'],
  ];
  if (letter.kafka) rows.push(['kafka key', letter.kafka.key ?? '(null)']);
  const body = bodyText(letter.body);
  return [
    ...table(rows),
    'headers',
    ...fieldRows(letter.headers),
    ...(letter.properties && Object.keys(letter.properties).length > 0
      ? ['properties', ...fieldRows(letter.properties)]
      : []),
    ...(letter.noValue
      ? ['body (no value: a tombstone)']
      : [
          `body (${formatBytes(letter.body.byteLength)}${body.encoding === 'base64' ? ', not UTF-8: base64' : ''})`,
          ...body.text.split('\n').map((l) => `  ${l}`),
        ]),
  ];
}

/**
 * Named text fields (headers, properties) as an indented table, long values cut; a repeated
 * header as a row per value, so it never reads like one value that looks like a list.
 */
function fieldRows(fields: Readonly<Record<string, HeaderText>>): string[] {
  const cell = (value: string | null) => (value === null ? '(no value)' : truncate(value, 200));
  return table(
    Object.entries(fields).flatMap(([name, value]): string[][] => {
      if (typeof value === 'string' || value === null) return [[`  ${name}`, cell(value)]];
      if (value.length === 0) return [[`  ${name}`, '(an empty list)']];
      return value.map((one, i) => [`  ${name}`, `[${i + 1}/${value.length}] ${cell(one)}`]);
    }),
  );
}

export function replayTarget(letter: DeadLetter): string | undefined {
  const { exchange, routingKey, destination } = letter.origin;
  if (exchange !== undefined && routingKey !== undefined) {
    return exchange === '' ? routingKey : `exchange ${exchange}, routing key ${routingKey}`;
  }
  return destination;
}

/** What `--reset-key` did for one letter before its replay. */
export type ResetOutcome =
  | 'cleared' // the FAILED record was deleted: the replay runs the handler
  | 'absent' // no record: the replay runs the handler anyway
  | 'kept-completed' // COMPLETED: kept, the replay is answered as a duplicate (and republishes)
  | 'busy' // an attempt holds the key (IN_PROGRESS, its lease live or lapsed): nothing deleted, not replayed
  | 'changed' // the record changed between the read and the clear (another replay or a delivery ran the key): kept, not replayed
  | 'reset-earlier' // an earlier letter of this replay cleared the same key: not cleared again
  | 'different-payload' // an IDEMPOTENCY_KEY_REUSE letter: nothing cleared, not replayed
  | 'damaged' // the store holds a value under the key it did not write (CORRUPT_RECORD): not replayed
  | 'no-key'; // no usable key or no consumer header: nothing to clear

/**
 * Why a letter is not replayed after what its reset found, or undefined when it is replayed: one
 * rule for every broker.
 */
export function refusedAfterReset(reset: ResetOutcome | undefined): string | undefined {
  if (reset === 'busy') return 'an attempt holds the key (IN_PROGRESS); try later';
  if (reset === 'changed') {
    return "the key's record changed while it was being reset (another replay of it, or a delivery, ran the key meanwhile): nothing cleared; see `inspect`";
  }
  if (reset === 'different-payload') {
    return 'another payload under a key that has its own: after a reset it would race that payload for the key (it needs a new key, or replay it without --reset-key)';
  }
  if (reset === 'damaged') {
    return 'the store holds a damaged value under the key: find out whether the message was processed first (the store README, "Damaged records")';
  }
  return undefined;
}

/** Letters whose key header was missing or unusable: no record was ever written under it. */
const KEYLESS_CODES: ReadonlySet<string> = new Set([ErrorCode.KeyMissing, ErrorCode.InvalidKey]);

/**
 * The store key of the letter's record, or undefined when it has none: no key or consumer header,
 * a key the consumer refused (`KEY_MISSING`, `INVALID_KEY`, e.g. an empty one), so no record was
 * ever written under it.
 */
function storeKeyOf(letter: DeadLetter, namespace: string): string | undefined {
  const consumer = letter.reason.consumer;
  if (letter.key === undefined || consumer === undefined || KEYLESS_CODES.has(letter.reason.errorCode ?? ''))
    return undefined;
  try {
    return recordKeyFor({ consumer, key: letter.key, namespace });
  } catch (error) {
    if (error instanceof InvalidKeyError) return undefined;
    throw error;
  }
}

/**
 * Clears the letter's FAILED record (store's public `get` + `clear`), so its replay is processed
 * instead of being dead-lettered again as PreviouslyFailedError. Only a FAILED one: a COMPLETED
 * record's clear would run the handler a second time, and an IN_PROGRESS one's would drop the
 * journaled steps its next attempt must find (a lapsed lease is continued by the redelivery).
 */
export async function resetKey(
  store: ProcessedStore,
  letter: DeadLetter,
  namespace: string,
): Promise<ResetOutcome> {
  const storeKey = storeKeyOf(letter, namespace);
  if (storeKey === undefined) return 'no-key';
  try {
    const record = await store.get(storeKey);
    if (!record) return 'absent';
    if (record.state === 'COMPLETED') return 'kept-completed';
    if (record.state !== 'FAILED') return 'busy';
    // Only the FAILED record just read, checked in the clear's own atomic step: a second replay
    // of this letter running beside this one must not clear the record its copy completed.
    return await store.clear(storeKey, { failedFence: record.fence });
  } catch (error) {
    // This letter's alone: the other letters of the replay go on.
    if (error instanceof CorruptRecordError) return 'damaged';
    throw storeError(error);
  }
}

/**
 * `resetKey` once per key in one replay. The copies of a failed message are dead-lettered too
 * (`PREVIOUSLY_FAILED`), one letter each: clearing the record again for each of them, while the
 * consumer processes the first replayed copy, would run the handler once per copy.
 */
export function resetEachKeyOnce(
  store: ProcessedStore,
  namespace: string,
): (letter: DeadLetter) => Promise<ResetOutcome> {
  const done = new Map<string, ResetOutcome>();
  return async (letter) => {
    const storeKey = storeKeyOf(letter, namespace);
    if (storeKey === undefined) return 'no-key';
    // Its payload differs from the key's own: clearing the key for it, or replaying it once the
    // key's own letter cleared it, lets whichever copy arrives first become the key's payload
    // (found replaying a key's PERMANENT letter with its IDEMPOTENCY_KEY_REUSE one: the reused
    // payload won).
    if (letter.reason.errorCode === ErrorCode.KeyReuse) return 'different-payload';
    const earlier = done.get(storeKey);
    // What the key's first letter found stands for the others (a kept COMPLETED record, say);
    // only a key that letter cleared is `reset-earlier`.
    if (earlier !== undefined) return earlier === 'cleared' ? 'reset-earlier' : earlier;
    const outcome = await resetKey(store, letter, namespace);
    // A busy key was not reset (a later letter of it may try again); a keyless letter has no record.
    if (outcome !== 'busy' && outcome !== 'no-key') done.set(storeKey, outcome);
    return outcome;
  };
}

/** One letter's replay, as reported. */
export interface ReplayResult {
  readonly id: string;
  readonly key?: string;
  /** The letter's key header was refused by the SDK (see {@link DeadLetter.unusableKey}). */
  readonly unusableKey?: string;
  readonly to?: string;
  readonly replayed: boolean;
  readonly reset?: ResetOutcome;
  readonly error?: string;
}

/**
 * One stderr line per letter as the replay goes, where no progress bar is drawn (stderr not a
 * terminal): a replay killed part-way leaves a record of what it sent. The table comes at the end.
 */
export function replayLog(io: Io): (result: ReplayResult) => void {
  if (io.interactive) return () => {};
  return (r) => {
    const key =
      r.key !== undefined
        ? `key ${JSON.stringify(r.key)}`
        : r.unusableKey !== undefined
          ? 'unusable key'
          : 'no key';
    const reset = r.reset === undefined ? '' : `, key ${r.reset}`;
    io.err(
      r.replayed
        ? `replayed ${r.id} (${key}) to ${r.to}${reset}\n`
        : `NOT replayed ${r.id} (${key})${reset}: ${r.error ?? ''}\n`,
    );
  };
}

export function renderReplay(source: string, results: readonly ReplayResult[], note: string): string[] {
  const ok = results.filter((r) => r.replayed).length;
  const rows = [
    ['id', 'key', 'to', 'reset', 'result'],
    ...results.map((r) => [
      truncate(r.id, 40),
      truncate(keyCell(r, '-'), 36),
      r.to ?? '-',
      r.reset ?? '-',
      r.replayed ? 'replayed' : `NOT replayed: ${r.error ?? ''}`,
    ]),
  ];
  return [`${source}: ${ok} of ${results.length} replayed${note}`, '', ...table(rows)];
}

/** What a replay reports of a letter before it is tried: its id and key. */
export function replayBase(letter: DeadLetter): Pick<ReplayResult, 'id' | 'key' | 'unusableKey'> {
  return {
    id: letter.id,
    ...(letter.key === undefined ? {} : { key: letter.key }),
    ...(letter.unusableKey === undefined ? {} : { unusableKey: letter.unusableKey }),
  };
}

/**
 * The letter's idempotency key as the consumer read it (in any letter case, once, a string or
 * UTF-8 bytes), or why the consumer refused its key (several values, a number, U+FFFD); neither
 * when it had none. An empty key is a key here (`""`): the consumer dead-lettered it as
 * `KEY_MISSING`.
 */
export function letterKey(headers: Readonly<Record<string, unknown>>): {
  readonly key?: string;
  readonly unusableKey?: string;
} {
  const { value, unusable } = identityOf(headers, Headers.IdempotencyKey, normalizeKey);
  return {
    ...(value === undefined ? {} : { key: value }),
    ...(unusable === undefined ? {} : { unusableKey: unusable }),
  };
}

/** The letter's request id, or why the SDK refused it (as it refused it when the message came). */
export function letterRequestId(headers: Readonly<Record<string, unknown>>): {
  readonly requestId?: string;
  readonly unusableRequestId?: string;
} {
  const { value, unusable } = identityOf(headers, Headers.RequestId, normalizeRequestId);
  return {
    ...(value === undefined ? {} : { requestId: value }),
    ...(unusable === undefined ? {} : { unusableRequestId: unusable }),
  };
}

/** An identity header as the consumer read it, checked by its own rules (an empty one as it is). */
function identityOf(
  headers: Readonly<Record<string, unknown>>,
  name: string,
  check: (value: string) => string,
): { readonly value?: string; readonly unusable?: string } {
  try {
    const value = readIdentityHeader(headers as never, name);
    if (value === undefined) return {};
    if (value !== '') check(value);
    return { value };
  } catch (error) {
    if (error instanceof InvalidKeyError) return { unusable: error.message };
    throw error;
  }
}

/** A letter's key as a cell: the key, `(unusable)` for a header the SDK refused, else `none`. */
function keyCell(letter: Pick<DeadLetter, 'key' | 'unusableKey'>, none: string): string {
  if (letter.key !== undefined) return shown(letter.key);
  return letter.unusableKey === undefined ? none : '(unusable)';
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Header bytes as shown: their text when they are UTF-8, else `hex:` and the bytes, never mojibake. */
export function bytesText(bytes: Uint8Array): string {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return `hex:${Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex')}`;
  }
}
