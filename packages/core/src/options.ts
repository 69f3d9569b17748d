/** Processor options, their defaults, and the one function that validates them. */

import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { BlobStore } from './blob/types.js';
import type { Handler } from './context.js';
import { ConfigError } from './errors.js';
import { validateName } from './keys.js';
import type { Logger } from './logger.js';
import { defaultLogger, keyRedactingLogger } from './logger.js';
import { type OptionNames, refuseUnknownOptions } from './option-names.js';
import { type PayloadGuardOptions, type ResolvedPayloadGuard, resolvePayloadGuard } from './payload-guard.js';
import {
  type RetryPolicy,
  type RetryPolicyOptions,
  resolveRetryPolicy,
  worstCaseRetrySpanMs,
} from './retry.js';
import type { StandardSchemaV1 } from './schema.js';
import type { Delivery, OutgoingPublisher } from './spi.js';
import type { StepEvent } from './steps.js';
import type { ProcessedStore } from './store/types.js';
import type { SpanKindMode } from './tracing.js';

/**
 * What to do with a message that has no `x-idempotency-key` header.
 * - `reject`: dead-letter it with {@link KeyMissingError} (default).
 * - `broker-id`: use the broker's stable identity (Kafka topic/partition/offset, AMQP message id).
 * - `payload-hash`: sha256 of the canonical payload: identical payloads are one message.
 * - a function returning a key from the payload (e.g. a business id), or undefined to reject.
 */
export type MissingKeyPolicy<T = unknown> =
  | 'reject'
  | 'broker-id'
  | 'payload-hash'
  | ((payload: T, delivery: Delivery) => string | undefined);

export interface ProcessorOptions<T = unknown, R = unknown> {
  /** Name of this consumer; part of every store key. `[A-Za-z0-9._-]{1,100}` */
  consumer: string;
  /** Service or tenant namespace; part of every store key. @defaultValue 'default' */
  namespace?: string;
  store: ProcessedStore;
  handler: Handler<T, R>;
  /** Where results over `inlineResultBytes` go. Without one, results are always inline. */
  blobs?: BlobStore;
  /** Confirmed publisher for the handler's outgoing messages. */
  publisher?: OutgoingPublisher;
  /** Turns the body into the handler's payload; throw to dead-letter it. @defaultValue UTF-8 JSON */
  decode?: (body: Uint8Array, delivery: Delivery) => T;
  /**
   * A schema (Zod, Valibot, ArkType... any Standard Schema) the decoded payload must pass: its
   * output is the handler's payload, and `T` is inferred from it. A payload it refuses is
   * dead-lettered as malformed, with the schema's issues. Runs before `validate`.
   */
  schema?: StandardSchemaV1<unknown, T>;
  /** Checks the decoded payload; throw to dead-letter it as malformed. */
  validate?: (payload: T) => void;
  /** Selects what the fingerprint covers. @defaultValue the whole payload */
  fingerprint?: (payload: T) => unknown;
  /** @defaultValue 'reject' */
  missingKey?: MissingKeyPolicy<T>;
  /** Lease length. @defaultValue 30000 */
  leaseMs?: number;
  /** Heartbeat period; must be well under the lease. @defaultValue leaseMs / 3 */
  heartbeatMs?: number;
  /**
   * Longest a handler may run. A handler still running then is given up: its `ctx.signal`
   * aborts, the heartbeat stops, the key is released and the message is retried (a
   * `RunTimeoutError`, counted as an attempt). Without a bound a hung handler would heartbeat
   * its lease for ever. @defaultValue 900000 (15 minutes)
   */
  maxRunMs?: number;
  /**
   * The attempt past which a **takeover** is not run: the key is FAILED as `ATTEMPTS_EXHAUSTED`.
   * A takeover is an attempt that starts because the key's last holder died or stalled past its
   * lease; the store cannot tell whether that holder had started the handler, so a worker that
   * dies takes an attempt from every key it had begun. This bound, above `retry.maxAttempts`
   * (which bounds handler errors), stops a message that kills its worker every time without
   * dead-lettering innocent ones under a few crashes. Attempts count both kinds: a handler error
   * at an attempt >= `retry.maxAttempts` is final. @defaultValue max(20, retry.maxAttempts)
   */
  maxTakeoverAttempts?: number;
  /**
   * Longest the pipeline waits for one store call (a batch call counts as one). A call not
   * answered by then fails like an outage (`StoreUnavailableError`): the message is not acked and
   * is tried again, instead of waiting for ever on a server that stalled or a reply that was lost.
   * Its write may still land later; fences and the duplicate check account for that (see
   * store/deadline.ts). `Infinity` turns the deadline off. Keep it well above the slowest call
   * of a healthy but loaded store: a call abandoned early still loads the server, and its retry
   * adds to that. @defaultValue 60000
   */
  storeTimeoutMs?: number;
  /**
   * Unconfirmed publishes of a completed message's outgoing messages in a row before the message
   * is dead-lettered with a `PublishError` reason (metric `exactly_once.publish.escalations`). Until
   * then it is redelivered with a growing delay (0.5 s doubling to 30 s). @defaultValue 20
   */
  maxPublishDeferrals?: number;
  /**
   * How long after a completion, on the store's clock, a copy of the message at another worker
   * leaves the record's unconfirmed outgoing messages to the worker that completed it (reading
   * the record meanwhile) before it publishes what is still unconfirmed itself. Set it above your
   * broker's slowest healthy publish confirm; 0 publishes at once. @defaultValue 3000, or
   * `leaseMs` if shorter
   */
  publishWaitMs?: number;
  /** How long a COMPLETED or FAILED record answers duplicates. @defaultValue 7 days */
  retentionMs?: number;
  /** Results larger than this many bytes go to `blobs`. @defaultValue 16384 */
  inlineResultBytes?: number;
  retry?: RetryPolicyOptions;
  /**
   * How late a message can come back besides retries: delayed redelivery, dead-letter replay,
   * Kafka offset resets. Retention must cover retries plus this. @defaultValue 1 day
   */
  redeliveryHorizonMs?: number;
  /** What to do when retention is shorter than the horizon. @defaultValue 'error' */
  retentionCheck?: 'error' | 'warn' | 'off';
  /** @defaultValue 'auto' */
  spanKind?: SpanKindMode;
  /**
   * Put idempotency keys into telemetry: the `exactly_once.key` span attribute, the message id
   * and Kafka message key attributes, a payload guard's first key, and the `key` field of log
   * lines. Off by default: keys are customer data (order ids, emails), so spans and logs leave
   * them out, and error messages that quote a key or a payload fragment have it replaced by
   * `[redacted]` in span statuses, exception events and log lines (records and dead-letter headers
   * keep the full message). Payload bytes and results are never recorded either way. The request
   * id (`exactly_once.request_id`) is always recorded: it is the id a trace is found by.
   * @defaultValue false
   */
  recordKeys?: boolean;
  /**
   * Flags or dead-letters a message whose payload fingerprint another key carried within
   * `windowMs` (a client making a new key per retry). Needs a store with `claimFingerprint`;
   * costs one store round trip per message. Off by default. See payload-guard.ts.
   */
  payloadGuard?: PayloadGuardOptions;
  /** Lease owner id. @defaultValue `<hostname>/<pid>/<random>` */
  ownerId?: string;
  logger?: Logger;
  /**
   * Called when a step gives up (`onGiveUp: 'continue'`) or its function failed `alertAfter`
   * times (see `StepOptions`). It runs inline; an error it throws (or a promise it rejects) is
   * logged and ignored, never breaking the message.
   */
  onStepEvent?: (event: StepEvent) => void;
}

export interface ResolvedProcessorOptions<T, R> {
  readonly consumer: string;
  readonly namespace: string;
  readonly store: ProcessedStore;
  readonly handler: Handler<T, R>;
  readonly blobs: BlobStore | undefined;
  readonly publisher: OutgoingPublisher | undefined;
  readonly decode: ((body: Uint8Array, delivery: Delivery) => T) | undefined;
  readonly schema: StandardSchemaV1<unknown, T> | undefined;
  readonly validate: ((payload: T) => void) | undefined;
  readonly fingerprint: ((payload: T) => unknown) | undefined;
  readonly missingKey: MissingKeyPolicy<T>;
  readonly leaseMs: number;
  readonly heartbeatMs: number;
  readonly maxRunMs: number;
  readonly maxTakeoverAttempts: number;
  readonly storeTimeoutMs: number;
  readonly maxPublishDeferrals: number;
  readonly publishWaitMs: number;
  readonly retentionMs: number;
  readonly inlineResultBytes: number;
  readonly retry: RetryPolicy;
  readonly redeliveryHorizonMs: number;
  readonly spanKind: SpanKindMode;
  readonly recordKeys: boolean;
  readonly payloadGuard: ResolvedPayloadGuard | undefined;
  readonly ownerId: string;
  readonly logger: Logger;
  readonly onStepEvent: ((event: StepEvent) => void) | undefined;
}

const DAY = 86_400_000;

export const PROCESSOR_DEFAULTS = Object.freeze({
  namespace: 'default',
  leaseMs: 30_000,
  maxRunMs: 15 * 60_000,
  storeTimeoutMs: 60_000,
  maxPublishDeferrals: 20,
  publishWaitMs: 3_000,
  retentionMs: 7 * DAY,
  /** The default `maxTakeoverAttempts` (at least `retry.maxAttempts`): RabbitMQ 4's default delivery limit. */
  takeoverAttempts: 20,
  inlineResultBytes: 16 * 1024,
  redeliveryHorizonMs: DAY,
  retentionCheck: 'error' as const,
  spanKind: 'auto' as const,
  recordKeys: false,
  missingKey: 'reject' as const,
});

const STORE_METHODS = ['begin', 'complete', 'fail', 'release', 'extend'] as const;
const BLOB_STORE_METHODS = ['put', 'get', 'stream', 'delete'] as const;

function hasMethods(value: unknown, names: readonly string[]): boolean {
  return (
    typeof value === 'object' &&
    value !== null &&
    names.every((name) => typeof (value as Record<string, unknown>)[name] === 'function')
  );
}

/**
 * The names {@link resolveProcessorOptions} knows; an adapter checks its options against these
 * and its own (so that a misspelt name of its own is recognised too) before it takes its own out.
 */
export const PROCESSOR_OPTIONS = {
  consumer: true,
  namespace: true,
  store: true,
  handler: true,
  blobs: true,
  publisher: true,
  decode: true,
  schema: true,
  validate: true,
  fingerprint: true,
  missingKey: true,
  leaseMs: true,
  heartbeatMs: true,
  maxRunMs: true,
  maxTakeoverAttempts: true,
  storeTimeoutMs: true,
  maxPublishDeferrals: true,
  publishWaitMs: true,
  retentionMs: true,
  inlineResultBytes: true,
  retry: true,
  redeliveryHorizonMs: true,
  retentionCheck: true,
  spanKind: true,
  recordKeys: true,
  payloadGuard: true,
  ownerId: true,
  logger: true,
  onStepEvent: true,
} as const satisfies OptionNames<ProcessorOptions>;

export function resolveProcessorOptions<T, R>(o: ProcessorOptions<T, R>): ResolvedProcessorOptions<T, R> {
  if (!o || typeof o !== 'object') throw new ConfigError('options are required');
  refuseUnknownOptions(o, PROCESSOR_OPTIONS);
  if (!hasMethods(o.store, STORE_METHODS)) {
    throw new ConfigError('store is required (e.g. createRedisStore or createMongoStore)');
  }
  // A blob store that cannot work would fail every large result as a store outage, retried:
  // the handler would run again each time before the message is given up.
  if (o.blobs !== undefined && !hasMethods(o.blobs, BLOB_STORE_METHODS)) {
    throw new ConfigError(
      `blobs must be a blob store (${BLOB_STORE_METHODS.join(', ')}), e.g. createFsBlobStore({ directory })`,
    );
  }
  if (typeof o.handler !== 'function') throw new ConfigError('handler must be a function');
  if (o.schema !== undefined && typeof o.schema?.['~standard']?.validate !== 'function') {
    throw new ConfigError('schema must be a Standard Schema (Zod 3.24+, Valibot 1, ArkType 2...)');
  }
  const consumer = validateName('consumer', o.consumer);
  const namespace = validateName('namespace', o.namespace ?? PROCESSOR_DEFAULTS.namespace);
  const leaseMs = o.leaseMs ?? PROCESSOR_DEFAULTS.leaseMs;
  positiveMs('leaseMs', leaseMs);
  const heartbeatMs = o.heartbeatMs ?? Math.max(1, Math.floor(leaseMs / 3));
  positiveMs('heartbeatMs', heartbeatMs);
  if (heartbeatMs > leaseMs / 2) {
    throw new ConfigError(
      `heartbeatMs (${heartbeatMs}) must be at most half of leaseMs (${leaseMs}); a third is recommended, ` +
        'so one missed heartbeat does not lose the lease',
    );
  }
  const maxRunMs = o.maxRunMs ?? PROCESSOR_DEFAULTS.maxRunMs;
  positiveMs('maxRunMs', maxRunMs);
  const storeTimeoutMs = o.storeTimeoutMs ?? PROCESSOR_DEFAULTS.storeTimeoutMs;
  if (storeTimeoutMs !== Number.POSITIVE_INFINITY) positiveMs('storeTimeoutMs', storeTimeoutMs);
  const maxPublishDeferrals = o.maxPublishDeferrals ?? PROCESSOR_DEFAULTS.maxPublishDeferrals;
  if (!Number.isInteger(maxPublishDeferrals) || maxPublishDeferrals < 0) {
    throw new ConfigError(`maxPublishDeferrals must be an integer >= 0 (got ${maxPublishDeferrals})`);
  }
  const publishWaitMs = o.publishWaitMs ?? Math.min(PROCESSOR_DEFAULTS.publishWaitMs, leaseMs);
  if (publishWaitMs !== 0) positiveMs('publishWaitMs', publishWaitMs);
  const retentionMs = o.retentionMs ?? PROCESSOR_DEFAULTS.retentionMs;
  positiveMs('retentionMs', retentionMs);
  const inlineResultBytes = o.inlineResultBytes ?? PROCESSOR_DEFAULTS.inlineResultBytes;
  if (!Number.isInteger(inlineResultBytes) || inlineResultBytes < 0) {
    throw new ConfigError('inlineResultBytes must be an integer >= 0');
  }
  const retry = resolveRetryPolicy(o.retry);
  const maxTakeoverAttempts =
    o.maxTakeoverAttempts ?? Math.max(PROCESSOR_DEFAULTS.takeoverAttempts, retry.maxAttempts);
  if (!Number.isInteger(maxTakeoverAttempts) || maxTakeoverAttempts < 1) {
    throw new ConfigError(`maxTakeoverAttempts must be an integer >= 1 (got ${maxTakeoverAttempts})`);
  }
  const redeliveryHorizonMs = o.redeliveryHorizonMs ?? PROCESSOR_DEFAULTS.redeliveryHorizonMs;
  if (!(redeliveryHorizonMs >= 0)) throw new ConfigError('redeliveryHorizonMs must be >= 0');
  const missingKey = o.missingKey ?? PROCESSOR_DEFAULTS.missingKey;
  if (typeof missingKey !== 'function' && !['reject', 'broker-id', 'payload-hash'].includes(missingKey)) {
    throw new ConfigError(`missingKey must be 'reject', 'broker-id', 'payload-hash' or a function`);
  }
  const recordKeys = o.recordKeys ?? PROCESSOR_DEFAULTS.recordKeys;
  if (typeof recordKeys !== 'boolean') throw new ConfigError('recordKeys must be a boolean');
  const logger = recordKeys ? (o.logger ?? defaultLogger) : keyRedactingLogger(o.logger ?? defaultLogger);
  const resolved: ResolvedProcessorOptions<T, R> = Object.freeze({
    consumer,
    namespace,
    store: o.store,
    handler: o.handler,
    blobs: o.blobs,
    publisher: o.publisher,
    decode: o.decode,
    schema: o.schema,
    validate: o.validate,
    fingerprint: o.fingerprint,
    missingKey,
    leaseMs,
    heartbeatMs,
    maxRunMs,
    maxTakeoverAttempts,
    storeTimeoutMs,
    maxPublishDeferrals,
    publishWaitMs,
    retentionMs,
    inlineResultBytes,
    retry,
    redeliveryHorizonMs,
    spanKind: oneOf('spanKind', o.spanKind, SPAN_KINDS) ?? PROCESSOR_DEFAULTS.spanKind,
    recordKeys,
    payloadGuard: resolvePayloadGuard(o.payloadGuard, o.store),
    ownerId: o.ownerId ?? `${hostname()}/${process.pid}/${randomUUID().slice(0, 8)}`,
    logger,
    onStepEvent: o.onStepEvent,
  });
  if (o.onStepEvent !== undefined && typeof o.onStepEvent !== 'function') {
    throw new ConfigError('onStepEvent must be a function');
  }
  checkRetentionHorizon(
    resolved,
    oneOf('retentionCheck', o.retentionCheck, RETENTION_CHECKS) ?? PROCESSOR_DEFAULTS.retentionCheck,
  );
  return resolved;
}

const RETENTION_CHECKS = ['error', 'warn', 'off'] as const;
const SPAN_KINDS = ['auto', 'consumer', 'internal'] as const;

/** A string option from JavaScript (no types to catch a typo): one of `allowed`, else a ConfigError. */
function oneOf<T extends string>(name: string, value: T | undefined, allowed: readonly T[]): T | undefined {
  if (value !== undefined && !allowed.includes(value)) {
    throw new ConfigError(
      `${name} must be one of ${allowed.map((a) => `'${a}'`).join(', ')} (got ${JSON.stringify(value)})`,
    );
  }
  return value;
}

/**
 * Dedup retention must outlast every way a message can come back; otherwise a late copy finds no
 * record and runs again. Checked once, at start. The retention checked is the store's
 * `effectiveRetentionMs(retentionMs)` when it has one (a tiered store: the cold tier's), else
 * `retentionMs`.
 */
export function checkRetentionHorizon(
  o: Pick<
    ResolvedProcessorOptions<unknown, unknown>,
    'retentionMs' | 'retry' | 'redeliveryHorizonMs' | 'leaseMs' | 'logger' | 'consumer'
  > & { readonly maxRunMs?: number; readonly maxTakeoverAttempts?: number; readonly store?: ProcessedStore },
  mode: 'error' | 'warn' | 'off',
): void {
  if (mode === 'off') return;
  // A store may keep records longer than asked (a tiered store: its cold tier's retention).
  const retentionMs = o.store?.effectiveRetentionMs?.(o.retentionMs) ?? o.retentionMs;
  // Each attempt holds the key for at most its run bound and then its last lease (a run given up
  // at maxRunMs keeps the key until its handler returns or that lease ends; a dead worker's lease).
  const perAttempt = (o.maxRunMs ?? 0) + o.leaseMs;
  // Takeovers may go on past retry.maxAttempts, each after a lease.
  const attempts = Math.max(o.retry.maxAttempts, o.maxTakeoverAttempts ?? 0);
  const needed = worstCaseRetrySpanMs(o.retry) + attempts * perAttempt + o.redeliveryHorizonMs;
  if (retentionMs >= needed) return;
  const message =
    `consumer "${o.consumer}": ${
      retentionMs === o.retentionMs
        ? `retentionMs (${retentionMs} ms)`
        : `the store's retention (${retentionMs} ms for retentionMs ${o.retentionMs}: a tiered store's cold tier)`
    } is shorter than the longest a message can ` +
    `come back (${needed} ms = retry schedule + ${attempts} attempts × (maxRunMs + leaseMs) + redeliveryHorizonMs). ` +
    'A late copy (a redelivered message, a request repeated by its client) would find no record and be processed again. Raise retentionMs, or lower the horizon' +
    (mode === 'error' ? ", or set retentionCheck: 'warn'." : '.');
  if (mode === 'error') throw new ConfigError(message);
  o.logger.warn(message, { consumer: o.consumer });
}

/**
 * The longest duration any option may give: 50 years. Stores keep deadlines in fixed-width
 * fields (Redis: 48-bit ms, markers 32-bit s, which end in 2106); a longer one would wrap and
 * read as already passed, and a processed message would run again.
 */
export const MAX_DURATION_MS = 50 * 365 * 86_400_000;

/** A duration option: a finite number of ms > 0, at most {@link MAX_DURATION_MS}; else a ConfigError. */
export function positiveMs(name: string, v: number): void {
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0 || v > MAX_DURATION_MS) {
    const got = typeof v === 'string' ? `the string ${JSON.stringify(v)}` : String(v);
    throw new ConfigError(`${name} must be a positive number of milliseconds up to 50 years (got ${got})`);
  }
}
