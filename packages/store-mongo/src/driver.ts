/**
 * How driver and server errors become the SDK's errors: a store method throws
 * StoreUnavailableError (retryable), or RecordTooLargeError (permanent) when the server or the
 * driver refused the document for its size; the duplicate-key race is handled by callers.
 */
import { CorruptRecordError, RecordTooLargeError, StoreUnavailableError } from '@exactly-once/core';
import { MongoInvalidArgumentError, MongoServerError } from 'mongodb';

/**
 * Update statements per command. FerretDB 1.x (SQLite) holds one pooled connection for each
 * statement of a command until the command ends, out of 100 per database: a command of 100
 * updates waited for ever, and every later call on that database with it.
 */
const STATEMENTS_PER_COMMAND = 20;

/** `statements` cut into commands FerretDB 1.x can run; send them one after another. */
export function commandParts<T>(statements: readonly T[]): T[][] {
  const parts: T[][] = [];
  for (let i = 0; i < statements.length; i += STATEMENTS_PER_COMMAND)
    parts.push(statements.slice(i, i + STATEMENTS_PER_COMMAND));
  return parts;
}

/** E11000: an insert (or upsert) collided with an existing `_id`. */
export function isDuplicateKey(error: unknown): boolean {
  if (error instanceof MongoServerError) {
    if (error.code === 11000) return true;
    // A bulk or write-errors wrapper carries the code on its first write error.
    const writeErrors = (error as { writeErrors?: unknown }).writeErrors;
    if (Array.isArray(writeErrors)) return writeErrors.some((e) => (e as { code?: unknown })?.code === 11000);
  }
  return false;
}

/**
 * The positions an unordered `insertMany` refused as duplicates, or `undefined` when it failed
 * for any other reason too.
 */
export function duplicateIndexes(error: unknown): Set<number> | undefined {
  if (!(error instanceof MongoServerError)) return undefined;
  const raw = (error as { writeErrors?: unknown }).writeErrors;
  // The driver gives one write error as an object, several as an array.
  const list: unknown[] = Array.isArray(raw) ? raw : raw === undefined ? [] : [raw];
  if (list.length === 0) return undefined;
  const refused = new Set<number>();
  for (const entry of list) {
    const { code, index } = entry as { code?: unknown; index?: unknown };
    if (code !== 11000 || typeof index !== 'number') return undefined;
    refused.add(index);
  }
  return refused;
}

/** Server answered "not implemented" / "invalid option": the feature is absent, not the server down. */
export function isUnsupported(error: unknown): boolean {
  if (!(error instanceof MongoServerError)) return false;
  // 238 NotImplemented (FerretDB), 2 BadValue, 9 FailedToParse, 67 CannotCreateIndex, 197 InvalidIndexSpecificationOption.
  return [238, 2, 9, 67, 197].includes(Number(error.code));
}

/** The document (or the command carrying it) is over the BSON size limit: the same write always fails. */
export function isTooLarge(error: unknown): boolean {
  if (error instanceof MongoServerError) {
    const code = Number(error.code);
    // 10334 BSONObjectTooLarge: a command over 16 MiB + 16 KiB, or (MongoDB 5.0+) an update whose
    // result is over 16 MiB; 17419 that update result before 5.0; 17420 the same for an upsert.
    if (code === 10334 || code === 17419 || code === 17420) return true;
    // An insert over 16 MiB is a plain BadValue: only its message tells it apart.
    return code === 2 && error.message.includes('object to insert too large');
  }
  // The driver's own check, in bulk writes only (the store does not use them today).
  if (error instanceof MongoInvalidArgumentError) {
    return /Document is larger than the maximum size|exceeds the max bson object size/.test(error.message);
  }
  // bson 6 serializes every command into one 17 MiB buffer and fails past its end with a bare
  // RangeError: V8's for a binary, Node's ERR_OUT_OF_RANGE on "offset" for a string or number.
  // It happens before anything is sent. (16-17 MiB documents get through; FerretDB 1.x stores
  // them, MongoDB refuses them with one of the codes above.)
  if (error instanceof RangeError) {
    const code = (error as { code?: unknown }).code;
    return (
      error.message === 'offset is out of bounds' ||
      (code === 'ERR_OUT_OF_RANGE' && error.message.startsWith('The value of "offset" is out of range'))
    );
  }
  return false;
}

/**
 * Runs one store operation, turning every failure into the SDK's error for it (see
 * {@link asStoreError}); `onFailure` sees the driver's error first.
 */
export async function guarded<T>(
  operation: string,
  fn: () => Promise<T>,
  onFailure?: (error: unknown) => void,
): Promise<T> {
  try {
    return await fn();
  } catch (error) {
    onFailure?.(error);
    throw asStoreError(operation, error);
  }
}

/** What {@link reopenAfterFailedConnect} uses of a client. */
interface ReopenableClient {
  connect(): Promise<unknown>;
}

/**
 * Driver 6 connects a client on its first operation; when that connection fails (the server was
 * down as the process started), it closes the client's topology and refuses every later operation
 * with `MongoTopologyClosedError` until `connect()` is called again: a process started during an
 * outage never reached the server once it was back. This calls `connect()` for such an error (the
 * driver's own lock makes concurrent calls one), so the next try of the operation gets through. A
 * client closed on purpose (`client.close()`) is left closed: its operations fail with another
 * error (`MongoNotConnectedError`), and one in flight at the close sees the client marked closed.
 */
export function reopenAfterFailedConnect(client: ReopenableClient | undefined, error: unknown): void {
  if (client === undefined || (error as { name?: unknown } | undefined)?.name !== 'MongoTopologyClosedError')
    return;
  if ((client as { s?: { hasBeenClosed?: unknown } }).s?.hasBeenClosed === true) return;
  client.connect().catch(() => undefined);
}

export function asStoreError(
  operation: string,
  error: unknown,
): StoreUnavailableError | RecordTooLargeError | CorruptRecordError {
  if (
    error instanceof StoreUnavailableError ||
    error instanceof RecordTooLargeError ||
    error instanceof CorruptRecordError
  )
    return error;
  if (isTooLarge(error)) return new RecordTooLargeError({ operation, cause: error });
  return new StoreUnavailableError({ operation, cause: error });
}
