/**
 * Every error the SDK raises is an {@link ExactlyOnceError}: branch on `instanceof` or `code`,
 * never on `name`. `retryable` alone decides whether the pipeline retries.
 */

/** The closed set of error codes. */
export const ErrorCode = {
  KeyMissing: 'KEY_MISSING',
  InvalidKey: 'INVALID_KEY',
  KeyReuse: 'IDEMPOTENCY_KEY_REUSE',
  LeaseLost: 'LEASE_LOST',
  StoreUnavailable: 'STORE_UNAVAILABLE',
  Config: 'CONFIG',
  Permanent: 'PERMANENT',
  Malformed: 'MALFORMED_MESSAGE',
  AttemptsExhausted: 'ATTEMPTS_EXHAUSTED',
  BlobIntegrity: 'BLOB_INTEGRITY',
  PreviouslyFailed: 'PREVIOUSLY_FAILED',
  Publish: 'PUBLISH_FAILED',
  InProgress: 'IN_PROGRESS',
  ExecutionFailed: 'EXECUTION_FAILED',
  RecordTooLarge: 'RECORD_TOO_LARGE',
  RunTimeout: 'RUN_TIMEOUT',
  HandlerFailed: 'HANDLER_FAILED',
  Closed: 'CLOSED',
  DuplicatePayload: 'DUPLICATE_PAYLOAD',
  CorruptRecord: 'CORRUPT_RECORD',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export interface ExactlyOnceErrorOptions {
  cause?: unknown;
}

/** Base class of every error raised by exactly-once. */
export class ExactlyOnceError extends Error {
  override name = 'ExactlyOnceError';
  readonly code: ErrorCode;
  /** Whether processing the same message again may succeed. */
  readonly retryable: boolean;

  constructor(code: ErrorCode, message: string, retryable: boolean, options: ExactlyOnceErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.retryable = retryable;
  }
}

/** The message carries no usable idempotency key and the policy is `reject`. */
export class KeyMissingError extends ExactlyOnceError {
  override name = 'KeyMissingError';
  constructor(
    message = 'message has no idempotency key (header x-idempotency-key) and missingKey policy is "reject"',
  ) {
    super(ErrorCode.KeyMissing, message, false);
  }
}

/** The key is present but unusable (empty, not valid UTF-8, ...). */
export class InvalidKeyError extends ExactlyOnceError {
  override name = 'InvalidKeyError';
  constructor(
    message: string,
    readonly reason: 'empty' | 'encoding' | 'type' | 'multiple',
  ) {
    super(ErrorCode.InvalidKey, message, false);
  }
}

/** Enough of a fingerprint to tell two apart; a compaction marker's (`compacted:` + 8 hex) whole. */
function shortFingerprint(fingerprint: string): string {
  return fingerprint.length <= 20 ? fingerprint : `${fingerprint.slice(0, 12)}…`;
}

/** The same key arrived with a different payload fingerprint: never processed as a duplicate. */
export class IdempotencyKeyReuseError extends ExactlyOnceError {
  override name = 'IdempotencyKeyReuseError';
  readonly key: string;
  readonly storedFingerprint: string;
  readonly receivedFingerprint: string;
  constructor(opts: { key: string; storedFingerprint: string; receivedFingerprint: string }) {
    super(
      ErrorCode.KeyReuse,
      `idempotency key "${truncate(opts.key)}" was already used with a different payload ` +
        `(stored fingerprint ${shortFingerprint(opts.storedFingerprint)}, received ${shortFingerprint(opts.receivedFingerprint)})`,
      false,
    );
    this.key = opts.key;
    this.storedFingerprint = opts.storedFingerprint;
    this.receivedFingerprint = opts.receivedFingerprint;
  }
}

/** This worker's lease was taken over (or could not be extended): it must not complete or ack. */
export class LeaseLostError extends ExactlyOnceError {
  override name = 'LeaseLostError';
  readonly key: string;
  readonly fence: number;
  constructor(opts: { key: string; fence: number; cause?: unknown }) {
    super(ErrorCode.LeaseLost, `lease on "${truncate(opts.key)}" (fence ${opts.fence}) was lost`, true, opts);
    this.key = opts.key;
    this.fence = opts.fence;
  }
}

/** The processed-store could not be reached or answered with an error. Nothing is acked meanwhile. */
export class StoreUnavailableError extends ExactlyOnceError {
  override name = 'StoreUnavailableError';
  readonly operation: string;
  constructor(opts: { operation: string; cause?: unknown; message?: string }) {
    super(
      ErrorCode.StoreUnavailable,
      opts.message ?? `processed-store ${opts.operation} failed: ${describeCause(opts.cause)}`,
      true,
      opts,
    );
    this.operation = opts.operation;
  }
}

/**
 * A batch call (`beginMany`, `completeMany`, `markPublishedMany`) that reached the servers of some
 * of its requests and not the others (one Redis Cluster node down): `answers[i]` is the answer of
 * each request not in `errors`, `errors` the error of each other one, by index. Core settles the
 * answered requests and fails only the others, so one node's outage does not strand the leases
 * the rest of the batch was granted.
 */
export class PartialBatchError extends StoreUnavailableError {
  override name = 'PartialBatchError';
  readonly answers: readonly unknown[];
  readonly errors: ReadonlyMap<number, unknown>;
  constructor(opts: {
    operation: string;
    answers: readonly unknown[];
    errors: ReadonlyMap<number, unknown>;
  }) {
    const [first] = opts.errors.values();
    super({
      operation: opts.operation,
      cause: first,
      message: `processed-store ${opts.operation} failed for ${opts.errors.size} of ${opts.answers.length} requests: ${describeCause(first)}`,
    });
    this.answers = opts.answers;
    this.errors = opts.errors;
  }
}

/**
 * A batch call's outcome from the answers it has and the errors of the requests that failed, by
 * index: the answers when none failed; the one error when every request failed with it, as a
 * single call would; otherwise a {@link PartialBatchError} carrying both.
 */
export function batchAnswers<A>(operation: string, answers: A[], errors: ReadonlyMap<number, unknown>): A[] {
  if (errors.size === 0) return answers;
  // One failure of the whole call (a server down) stands for every request; errors of their own
  // (a damaged record each) stay apart.
  if (errors.size === answers.length && new Set(errors.values()).size === 1)
    throw errors.values().next().value;
  throw new PartialBatchError({ operation, answers, errors });
}

/** Invalid options; thrown at construction, never while processing. */
export class ConfigError extends ExactlyOnceError {
  override name = 'ConfigError';
  constructor(message: string) {
    super(ErrorCode.Config, message, false);
  }
}

/**
 * Throw this (or a subclass) from a handler to fail the message permanently: no retry, the record
 * becomes FAILED and the message is dead-lettered with the reason.
 *
 * @example
 * ```ts
 * if (order.amount <= 0) throw new PermanentError('amount must be positive');
 * ```
 */
export class PermanentError extends ExactlyOnceError {
  override name = 'PermanentError';
  constructor(message: string, options: ExactlyOnceErrorOptions = {}) {
    super(ErrorCode.Permanent, message, false, options);
  }
}

/**
 * A value the SDK must store or send as JSON cannot be (a BigInt, a cycle, a function): a handler's
 * result, a step's result, a `ctx.publish` message, an executor payload. Permanent: the same value
 * would fail again, so the message is failed and dead-lettered with this reason, not retried.
 */
export class UnencodableValueError extends PermanentError {
  override name = 'UnencodableValueError';
  constructor(what: string, cause: unknown) {
    super(`${what} cannot be encoded as JSON: ${describeCause(cause)}`, { cause });
  }
}

/** The delivery could not be decoded or failed validation. */
export class MalformedMessageError extends ExactlyOnceError {
  override name = 'MalformedMessageError';
  constructor(message: string, options: ExactlyOnceErrorOptions = {}) {
    super(ErrorCode.Malformed, message, false, options);
  }
}

/** The handler failed with retryable errors on every allowed attempt. */
export class AttemptsExhaustedError extends ExactlyOnceError {
  override name = 'AttemptsExhaustedError';
  readonly attempts: number;
  /**
   * @param opts.cutShort at least this many of the attempts ended with the worker holding the key
   * dying or stalling rather than with a handler error (attempts count both kinds)
   */
  constructor(opts: { attempts: number; cause?: unknown; cutShort?: number }) {
    const cutShort = opts.cutShort
      ? ` (at least ${opts.cutShort} of them cut short by a worker that died or stalled holding the key)`
      : '';
    super(
      ErrorCode.AttemptsExhausted,
      `gave up after ${opts.attempts} attempts${cutShort}: ${describeCause(opts.cause)}`,
      false,
      opts,
    );
    this.attempts = opts.attempts;
  }
}

/** A blob's bytes do not match the size or sha256 its pointer records. */
export class BlobIntegrityError extends ExactlyOnceError {
  override name = 'BlobIntegrityError';
  constructor(message: string) {
    super(ErrorCode.BlobIntegrity, message, false);
  }
}

/** The key's record is FAILED: a redelivery is dead-lettered again, never re-run. */
export class PreviouslyFailedError extends ExactlyOnceError {
  override name = 'PreviouslyFailedError';
  constructor(
    readonly key: string,
    readonly original: { code: string; message: string },
  ) {
    super(
      ErrorCode.PreviouslyFailed,
      `key "${truncate(key)}" already failed permanently (${original.code}: ${original.message})`,
      false,
    );
  }
}

/**
 * What the processed-store holds under a key is not a record it wrote (another type of value, a
 * value it cannot decode: written, edited or damaged outside the store). Nothing can say whether
 * the message was processed, so nothing is run: the message is dead-lettered with this error, and
 * the other messages of the same batch go on. Permanent until an operator removes the value.
 */
export class CorruptRecordError extends ExactlyOnceError {
  override name = 'CorruptRecordError';
  readonly key: string | undefined;
  readonly detail: string;
  constructor(opts: { key?: string; detail: string }) {
    super(
      ErrorCode.CorruptRecord,
      `the processed-store's record${opts.key === undefined ? '' : ` of key "${truncate(opts.key)}"`} cannot be read ` +
        `(${opts.detail}): it was written or changed outside the store, so whether the message was processed is ` +
        'unknown and nothing was run; remove the value once you know (see the store README, "Damaged records")',
      false,
    );
    this.key = opts.key;
    this.detail = opts.detail;
  }
}

/** An outgoing message was not confirmed by the broker. */
export class PublishError extends ExactlyOnceError {
  override name = 'PublishError';
  constructor(message: string, options: ExactlyOnceErrorOptions = {}) {
    super(ErrorCode.Publish, message, true, options);
  }
}

/**
 * The store refused a record as too large (e.g. a result over MongoDB's 16 MB document limit with
 * no blob store configured). Permanent: the same write would be refused again. Configure a blob
 * store (`blobs`) so large results are stored by reference.
 */
export class RecordTooLargeError extends ExactlyOnceError {
  override name = 'RecordTooLargeError';
  readonly operation: string;
  constructor(opts: { operation: string; cause?: unknown; message?: string }) {
    super(
      ErrorCode.RecordTooLarge,
      opts.message ??
        `processed-store ${opts.operation} refused the record as too large: ${describeCause(opts.cause)}`,
      false,
      opts,
    );
    this.operation = opts.operation;
  }
}

/**
 * A run went on longer than `maxRunMs`: the pipeline stopped heartbeating it, aborted its signal
 * and released the key for a retry. Retryable; counts as an attempt.
 */
export class RunTimeoutError extends ExactlyOnceError {
  override name = 'RunTimeoutError';
  readonly maxRunMs: number;
  constructor(opts: { maxRunMs: number }) {
    super(ErrorCode.RunTimeout, `handler still running after maxRunMs (${opts.maxRunMs} ms)`, true);
    this.maxRunMs = opts.maxRunMs;
  }
}

/**
 * A handler failed permanently with an error that is not an {@link ExactlyOnceError} (one flagged
 * `retryable: false`). The original error is the `cause`, and its class and message are in this
 * error's message, so a dead-letter reason is always a library error.
 */
export class HandlerFailedError extends ExactlyOnceError {
  override name = 'HandlerFailedError';
  constructor(cause: unknown) {
    super(ErrorCode.HandlerFailed, `handler failed permanently: ${describeThrown(cause)}`, false, { cause });
  }
}

/** Used after close (a publisher, a producer, a finished run's context): nothing more is sent. */
export class ClosedError extends ExactlyOnceError {
  override name = 'ClosedError';
  constructor(what: string, detail?: string) {
    super(ErrorCode.Closed, detail ?? `${what} is closed`, false);
  }
}

/**
 * A message arrived under a new idempotency key with the same payload fingerprint as a message
 * seen under another key within `payloadGuard.windowMs` (a client that makes a new key per retry,
 * or a key derived from a clock that crossed a boundary). Raised only with
 * `payloadGuard: { action: 'dead-letter' }`; non-retryable.
 */
export class DuplicatePayloadError extends ExactlyOnceError {
  override name = 'DuplicatePayloadError';
  readonly key: string;
  readonly firstKey: string;
  readonly fingerprint: string;
  constructor(opts: { key: string; firstKey: string; fingerprint: string }) {
    super(
      ErrorCode.DuplicatePayload,
      `message with key "${truncate(opts.key)}" has the same payload (fingerprint ${opts.fingerprint.slice(0, 12)}…) ` +
        `as the message with key "${truncate(opts.firstKey)}" seen within the payload guard window`,
      false,
    );
    this.key = opts.key;
    this.firstKey = opts.firstKey;
    this.fingerprint = opts.fingerprint;
  }
}

/** True when processing the message again may succeed. Unknown errors are retryable. */
export function isRetryable(error: unknown): boolean {
  if (error instanceof ExactlyOnceError) return error.retryable;
  if (typeof error === 'object' && error !== null && 'retryable' in error) {
    return (error as { retryable: unknown }).retryable !== false;
  }
  return true;
}

/** A serialisable summary of an error, as stored in FAILED records and dead-letter headers. */
export interface ErrorInfo {
  /** Error class name, e.g. `PermanentError`. */
  name: string;
  /** `ExactlyOnceError.code`, or `ERROR` for foreign errors. */
  code: string;
  message: string;
  /**
   * `PREVIOUSLY_FAILED` only: the code of the failure that made the key FAILED (dead letters carry
   * it as `x-eo-original-error-code`). Stores do not keep it.
   */
  originalCode?: string;
}

export function toErrorInfo(error: unknown): ErrorInfo {
  if (error instanceof PreviouslyFailedError)
    return { name: error.name, code: error.code, message: error.message, originalCode: error.original.code };
  if (error instanceof ExactlyOnceError)
    return { name: error.name, code: error.code, message: error.message };
  if (error instanceof Error) return { name: error.name, code: 'ERROR', message: error.message };
  return { name: 'NonError', code: 'ERROR', message: describeThrown(error) };
}

/**
 * Words for any thrown value: an Error's name and message; for anything else thrown (a string, a
 * plain `{ message }` object, `undefined`) what it holds, never `[object Object]`.
 */
export function describeThrown(value: unknown): string {
  if (value instanceof Error) return `${value.name}: ${value.message}`;
  if (typeof value === 'object' && value !== null) {
    const { name, message } = value as { name?: unknown; message?: unknown };
    if (typeof message === 'string') return typeof name === 'string' ? `${name}: ${message}` : message;
    try {
      const json = JSON.stringify(value);
      if (json !== undefined) return json.length > 200 ? `${json.slice(0, 197)}...` : json;
    } catch {
      // circular or a throwing toJSON: fall back to the tag
    }
  }
  return String(value);
}

/**
 * What a handler threw, as the pipeline can read it. Classifying and describing a thrown value reads
 * its prototype chain and fields (`retryable`, `code`, `message`, `stack`, `cause`); a value that
 * throws when read (a Proxy whose traps throw, a throwing getter) is replaced by an Error saying
 * so, which is retried like any other. Left as it was, it broke the pipeline's own error path and
 * was taken for a store outage.
 */
export function readableThrown(thrown: unknown): unknown {
  try {
    // What classifying it (isRetryable, toErrorInfo), a letter's reason (the cause) and its span
    // (code, stack) read of it.
    isRetryable(thrown);
    toErrorInfo(thrown);
    if (typeof thrown === 'object' && thrown !== null) {
      const { code, stack, cause } = thrown as { code?: unknown; stack?: unknown; cause?: unknown };
      if (code !== undefined) String(code);
      void stack;
      if (cause !== undefined) describeCause(cause);
    }
    return thrown;
  } catch (error) {
    let why = 'reading it threw';
    try {
      why += ` ${describeThrown(error)}`;
    } catch {
      // and so did reading what it threw
    }
    return new Error(`the handler threw a value that cannot be read (${truncate(why)})`);
  }
}

function describeCause(cause: unknown): string {
  if (cause instanceof Error) return cause.message;
  return cause === undefined ? 'unknown cause' : describeThrown(cause);
}

function truncate(s: string): string {
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}
