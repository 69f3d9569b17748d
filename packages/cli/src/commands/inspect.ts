/** `inspect <consumer> <key>`: one record, read through the store's public `get`. */
import { createWriteStream } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  type BlobPointer,
  type BlobStore,
  CorruptRecordError,
  deriveChildKey,
  InvalidKeyError,
  type ProcessedRecord,
  type ProcessedStore,
  recordKeyFor,
} from '@exactly-once/core';
import { CliError, describeError, UsageError } from '../errors.js';
import {
  formatBytes,
  formatSpan,
  formatTime,
  type Io,
  printJson,
  printLines,
  shown,
  table,
} from '../output.js';
import {
  type BlobStoreOptions,
  checkBlobStoreOptions,
  openBlobStore,
  openStore,
  type StoreOptions,
  storeError,
} from '../stores.js';

export interface InspectOptions extends StoreOptions, BlobStoreOptions {
  readonly namespace?: string;
  /** Step names whose `ctx.keyFor(name)` to print, whatever the record holds (`--key-for`). */
  readonly keyFor?: readonly string[];
  /** Also the states the record went through, where the store keeps them (`--history`). */
  readonly history?: boolean;
  /**
   * Also the stored result itself (`--result`): inline, or a JSON result stored by reference, read
   * from the blob store when one is given.
   */
  readonly result?: boolean;
  /** Writes the stored result's bytes to this file (`--result-to`), a stream's too. */
  readonly resultTo?: string;
  readonly json?: boolean;
}

/** `ctx.keyFor(name)` of the run of a key: what a handler sent to a provider under that name. */
export type KeyFor = (name: string) => string;

/** A record as `inspect --json` prints it: times in epoch ms, bytes counted, bodies left out. */
export interface RecordView {
  readonly storeKey: string;
  readonly state: ProcessedRecord['state'];
  readonly attempt: number;
  readonly fence: number;
  readonly fingerprint: string;
  readonly traceId?: string;
  /** Redis compaction marker: only "already processed" and its expiry are known. */
  readonly compacted?: boolean;
  readonly lease?: { readonly owner: string; readonly until: number; readonly live: boolean };
  readonly result?:
    | { readonly kind: 'inline'; readonly bytes: number }
    | {
        readonly kind: 'blob';
        readonly bytes: number;
        readonly uri: string;
        readonly sha256: string;
        /** The handler returned a stream (`resultStream`): the blob holds its bytes, not JSON. */
        readonly raw?: true;
      };
  readonly outgoing?: readonly {
    readonly id: string;
    readonly destination: string;
    readonly routingKey?: string;
    readonly bytes: number;
    readonly published: boolean;
  }[];
  readonly steps?: readonly {
    readonly name: string;
    readonly state: 'started' | 'done';
    readonly at: number;
    readonly bytes: number;
    /** `ctx.keyFor(name)`: the key to ask the provider about (when the key was given). */
    readonly keyFor?: string;
  }[];
  /** `ctx.keyFor(name)` of the names asked for with `--key-for`. */
  readonly keysFor?: Readonly<Record<string, string>>;
  readonly error?: { readonly name: string; readonly code: string; readonly message: string };
  readonly lastError?: { readonly name: string; readonly code: string; readonly message: string };
  readonly completedAt?: number;
  readonly failedAt?: number;
  readonly expiresAt?: number;
  /**
   * With `--history`: the states the key went through, oldest first (each as this view, plus when
   * an attempt began); null when the store keeps the current state only (Redis).
   */
  readonly history?: readonly (RecordView & { readonly startedAt?: number })[] | null;
  /**
   * With `--result`: the result as the handler returned it (JSON), inline or read from the blob
   * store given; `null` for none, a stream's bytes, or a blob result without its blob store.
   */
  readonly resultValue?: unknown;
  /** With `--result-to`: the file the result's bytes went to, and how many. */
  readonly resultFile?: { readonly path: string; readonly bytes: number };
}

/** A stored result's text as JSON (bytes that are not JSON as text). */
function decoded(bytes: Uint8Array): unknown {
  const text = new TextDecoder().decode(bytes);
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

function blobUnreadable(pointer: BlobPointer, error: unknown): CliError {
  return new CliError(
    `the result's blob ${pointer.uri} could not be read from the blob store: ${describeError(error)}`,
  );
}

/** `--result`: the stored result decoded; a JSON blob read (and verified) from `blobs`. */
async function resultValueOf(record: ProcessedRecord, blobs: BlobStore | undefined): Promise<unknown> {
  if (record.state !== 'COMPLETED' || record.result === undefined) return null;
  const result = record.result;
  if (result.kind === 'inline') return decoded(result.data);
  // A stream's bytes are not JSON and may be large: --result-to writes them out.
  if (result.raw || blobs === undefined) return null;
  const bytes = await blobs.get(result.pointer).catch((error: unknown) => {
    throw blobUnreadable(result.pointer, error);
  });
  return decoded(bytes);
}

/** `--result-to`: the stored result's bytes into `path` (a blob streamed and verified); how many. */
async function writeResult(
  record: ProcessedRecord,
  blobs: BlobStore | undefined,
  path: string,
): Promise<number> {
  const result = record.state === 'COMPLETED' ? record.result : undefined;
  if (result === undefined) {
    throw new CliError(
      `no stored result to write: the record is ${record.state}` +
        ((record as { compacted?: boolean }).compacted ? ' (a compaction marker keeps no result)' : ''),
    );
  }
  if (result.kind === 'inline') {
    await writeFile(path, result.data);
    return result.data.byteLength;
  }
  if (blobs === undefined) {
    throw new UsageError(
      'the result is stored by reference: give its blob store (--blob-dir or --gridfs-bucket)',
    );
  }
  try {
    await pipeline(Readable.from(blobs.stream(result.pointer)), createWriteStream(path));
  } catch (error) {
    // A blob missing or failing its size or hash check leaves no partial file behind.
    await rm(path, { force: true });
    throw blobUnreadable(result.pointer, error);
  }
  return result.pointer.size;
}

export function recordView(record: ProcessedRecord, now = Date.now(), keyFor?: KeyFor): RecordView {
  const base = {
    storeKey: record.key,
    state: record.state,
    attempt: record.attempt,
    fence: record.fence,
    fingerprint: record.fingerprint,
    ...(record.traceId ? { traceId: record.traceId } : {}),
  };
  switch (record.state) {
    case 'IN_PROGRESS':
      return {
        ...base,
        lease: { owner: record.owner, until: record.leaseUntil, live: record.leaseUntil > now },
        steps: Object.entries(record.steps).map(([name, step]) => ({
          name,
          state: step.state,
          at: step.at,
          bytes: step.result.byteLength,
          ...(keyFor ? { keyFor: keyFor(name) } : {}),
        })),
        ...(record.lastError ? { lastError: { ...record.lastError } } : {}),
      };
    case 'COMPLETED':
      return {
        ...base,
        ...((record as { compacted?: boolean }).compacted ? { compacted: true } : {}),
        ...(record.result === undefined
          ? {}
          : {
              result:
                record.result.kind === 'inline'
                  ? { kind: 'inline' as const, bytes: record.result.data.byteLength }
                  : {
                      kind: 'blob' as const,
                      bytes: record.result.pointer.size,
                      uri: record.result.pointer.uri,
                      sha256: record.result.pointer.sha256,
                      ...(record.result.raw ? { raw: true as const } : {}),
                    },
            }),
        outgoing: record.outgoing.map((m) => ({
          id: m.id,
          destination: m.destination,
          ...(m.routingKey === undefined ? {} : { routingKey: m.routingKey }),
          bytes: m.body.byteLength,
          published: m.published,
        })),
        completedAt: record.completedAt,
        expiresAt: record.expiresAt,
      };
    case 'FAILED':
      return {
        ...base,
        error: { ...record.error },
        failedAt: record.failedAt,
        expiresAt: record.expiresAt,
      };
  }
}

export function renderRecord(view: RecordView, now = Date.now()): string[] {
  const rows: string[][] = [
    ['record', shown(view.storeKey)],
    ['state', view.compacted ? `${view.state} (compaction marker: no result or messages kept)` : view.state],
    ['attempt', String(view.attempt)],
    ['fence', String(view.fence)],
  ];
  if (view.traceId) rows.push(['trace', view.traceId]);
  if (view.lease) {
    const { owner, until, live } = view.lease;
    const when =
      until === 0
        ? 'released (the next delivery or request of the key retries at once)'
        : until === 1
          ? 'released, still a takeover (the next delivery or request of the key takes it over at once)'
          : live
            ? `until ${formatTime(until)} (in ${formatSpan(until - now)})`
            : `expired ${formatTime(until)} (${formatSpan(now - until)} ago: the next delivery or request of the key takes over)`;
    rows.push(['lease', `${owner || '-'}, ${when}`]);
  }
  if (view.lastError) rows.push(['last error', errorText(view.lastError)]);
  if (view.error) rows.push(['error', errorText(view.error)]);
  if (view.completedAt !== undefined && view.completedAt > 0)
    rows.push(['completed', formatTime(view.completedAt)]);
  if (view.failedAt !== undefined) rows.push(['failed', formatTime(view.failedAt)]);
  if (view.expiresAt !== undefined) rows.push(['expires', formatTime(view.expiresAt)]);
  if (view.state === 'COMPLETED') {
    const r = view.result;
    rows.push([
      'result',
      r === undefined
        ? 'none'
        : r.kind === 'inline'
          ? `inline, ${formatBytes(r.bytes)}`
          : `blob${r.raw ? ' (a stream)' : ''}, ${formatBytes(r.bytes)} (${r.uri}, sha256 ${r.sha256.slice(0, 16)}…)`,
    ]);
    const outgoing = view.outgoing ?? [];
    const unpublished = outgoing.filter((m) => !m.published).length;
    rows.push([
      'outgoing',
      outgoing.length === 0
        ? 'none'
        : `${outgoing.length} message(s), ${unpublished === 0 ? 'all published' : `${unpublished} not confirmed yet`}`,
    ]);
  }
  const lines = table(rows);
  for (const m of view.outgoing ?? []) {
    const to = m.routingKey === undefined ? m.destination : `${m.destination} (${m.routingKey})`;
    lines.push(`  ${m.published ? 'published  ' : 'UNPUBLISHED'}  ${m.id} -> ${to}, ${formatBytes(m.bytes)}`);
  }
  if (view.steps) {
    lines.push(`steps       ${view.steps.length === 0 ? 'none' : ''}`.trimEnd());
    for (const s of view.steps) {
      lines.push(
        `  ${s.state === 'done' ? 'done   ' : 'STARTED'}  ${s.name}  ${formatTime(s.at)}` +
          (s.state === 'done' ? `, ${formatBytes(s.bytes)}` : ' (in doubt: its effect may have happened)') +
          (s.keyFor ? `; keyFor ${s.keyFor}` : ''),
      );
    }
  }
  lines.push(...keysForLines(view.keysFor));
  if (view.resultValue === null) {
    const r = view.result;
    const where =
      r?.kind !== 'blob'
        ? 'none'
        : r.raw
          ? "a stream's bytes: write them out with --result-to <file>"
          : 'stored by reference: give its blob store (--blob-dir or --gridfs-bucket) to read it';
    lines.push(`result value  ${where}`);
  } else if (view.resultValue !== undefined) {
    const json = JSON.stringify(view.resultValue, null, 2).split('\n');
    lines.push('result value', ...json.map((line) => `  ${line}`));
  }
  if (view.resultFile)
    lines.push(`result written to ${view.resultFile.path}, ${formatBytes(view.resultFile.bytes)}`);
  if (view.history === null)
    lines.push('history     not kept by this store (it keeps the current state only)');
  else if (view.history) {
    lines.push(`history     ${view.history.length} state(s), oldest first`);
    for (const [i, h] of view.history.entries()) lines.push(`  ${i + 1}  ${historyLine(h)}`);
  }
  return lines;
}

/** One state of a key's history on one line. */
function historyLine(h: RecordView & { readonly startedAt?: number }): string {
  const parts = [h.state.padEnd(11), `attempt ${h.attempt}`, `fence ${h.fence}`];
  if (h.lease) parts.push(`owner ${shown(h.lease.owner || '-')}`);
  if (h.startedAt !== undefined) parts.push(`started ${formatTime(h.startedAt)}`);
  if (h.lease) {
    const { until } = h.lease;
    parts.push(
      until === 0
        ? 'lease released'
        : until === 1
          ? 'lease released (taken over)'
          : `lease until ${formatTime(until)}`,
    );
  }
  if (h.steps && h.steps.length > 0)
    parts.push(
      `steps ${h.steps.map((st) => `${shown(st.name)} (${st.state} ${formatTime(st.at)})`).join(', ')}`,
    );
  if (h.lastError) parts.push(`last error ${errorText(h.lastError)}`);
  if (h.completedAt !== undefined && h.completedAt > 0) parts.push(`completed ${formatTime(h.completedAt)}`);
  if (h.failedAt !== undefined) parts.push(`failed ${formatTime(h.failedAt)}`);
  if (h.error) parts.push(`error ${errorText(h.error)}`);
  return parts.join('  ');
}

function errorText(e: { name: string; code: string; message: string }): string {
  return `${e.name} (${e.code}): ${e.message}`;
}

/** `--key-for` of a key with no record: its keys still are what a handler sent. */
function renderNoRecord(storeKey: string, keysFor: Readonly<Record<string, string>>): string[] {
  const lines = table([
    ['record', shown(storeKey)],
    ['state', 'no record (never processed, expired or cleared)'],
  ]);
  lines.push(...keysForLines(keysFor));
  return lines;
}

function keysForLines(keysFor: Readonly<Record<string, string>> | undefined): string[] {
  return Object.entries(keysFor ?? {}).map(([name, key]) => `keyFor(${JSON.stringify(name)})  ${key}`);
}

/** The key's states as views, or null when the store keeps the current state only. */
async function historyOf(
  store: ProcessedStore,
  storeKey: string,
  now: number,
): Promise<RecordView['history']> {
  if (!store.history) return null;
  const entries = await store.history(storeKey).catch((error: unknown) => {
    throw storeError(error);
  });
  return entries.map((e) => ({
    ...recordView(e.record, now),
    ...(e.startedAt === undefined ? {} : { startedAt: e.startedAt }),
  }));
}

export async function inspect(io: Io, consumer: string, key: string, options: InspectOptions): Promise<void> {
  const storeKey = (() => {
    try {
      return recordKeyFor({ consumer, key, namespace: options.namespace ?? 'default' });
    } catch (error) {
      // A key no consumer would accept (empty, too long) is a malformed argument: usage.
      if (error instanceof InvalidKeyError) throw new UsageError(`<key>: ${error.message}`);
      throw storeError(error);
    }
  })();
  checkBlobStoreOptions(options, false);
  const opened = await openStore(options);
  try {
    const blobs = openBlobStore(options, opened);
    const record = await opened.store.get(storeKey).catch((error: unknown) => {
      // A value the store did not write: said as such (and as JSON with --json, for scripts),
      // still a failed run (exit 1).
      if (error instanceof CorruptRecordError) {
        if (options.json) printJson(io, { storeKey, state: null, damaged: error.message });
        throw new CliError(
          `the store holds a damaged value under key "${key}" of consumer "${consumer}" (CORRUPT_RECORD: ` +
            `${error.message}); find out whether the message was processed before deleting it (the store README, "Damaged records")`,
          { cause: error },
        );
      }
      throw storeError(error);
    });
    const namespace = options.namespace ?? 'default';
    const keyFor: KeyFor = (name) => deriveChildKey(namespace, consumer, name, key);
    const keysFor = options.keyFor
      ? Object.fromEntries(options.keyFor.map((n) => [n, keyFor(n)]))
      : undefined;
    if (!record && keysFor) {
      // The keys derive from the key alone: a key that came back after its record's retention
      // is the one an operator asks the provider about.
      if (options.json) printJson(io, { storeKey, state: null, keysFor });
      else printLines(io, renderNoRecord(storeKey, keysFor));
      return;
    }
    if (!record) {
      throw new CliError(
        `no record for key "${key}" of consumer "${consumer}" (namespace ${options.namespace ?? 'default'}) ` +
          `in ${opened.description}: never processed, expired, or cleared (or not kept here: check the ` +
          'store, its prefix or database and collection, the consumer name and the namespace; with a ' +
          'tiered store, ask the cold one, --mongo, for a key past the hot retention)',
      );
    }
    const now = Date.now();
    const history = options.history ? await historyOf(opened.store, storeKey, now) : undefined;
    const resultFile =
      options.resultTo === undefined
        ? undefined
        : { path: options.resultTo, bytes: await writeResult(record, blobs, options.resultTo) };
    const view: RecordView = {
      ...recordView(record, now, keyFor),
      ...(keysFor ? { keysFor } : {}),
      ...(history === undefined ? {} : { history }),
      ...(options.result ? { resultValue: await resultValueOf(record, blobs) } : {}),
      ...(resultFile ? { resultFile } : {}),
    };
    if (options.json) printJson(io, view);
    else printLines(io, renderRecord(view));
  } finally {
    await opened.close();
  }
}
