/**
 * How driver and server errors become the SDK's errors: a store method throws only
 * StoreUnavailableError, except for the duplicate-key race, which callers handle themselves.
 */
import { StoreUnavailableError } from '@exactly-once/core';
import { MongoServerError } from 'mongodb';

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

/** Server answered "not implemented" / "invalid option": the feature is absent, not the server down. */
export function isUnsupported(error: unknown): boolean {
  if (!(error instanceof MongoServerError)) return false;
  // 238 NotImplemented (FerretDB), 2 BadValue, 9 FailedToParse, 67 CannotCreateIndex, 197 InvalidIndexSpecificationOption.
  return [238, 2, 9, 67, 197].includes(Number(error.code));
}

/** Runs one store operation, turning every failure into a retryable StoreUnavailableError. */
export async function guarded<T>(operation: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (error) {
    throw asStoreError(operation, error);
  }
}

export function asStoreError(operation: string, error: unknown): StoreUnavailableError {
  if (error instanceof StoreUnavailableError) return error;
  return new StoreUnavailableError({ operation, cause: error });
}
