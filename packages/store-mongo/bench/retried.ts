/**
 * The benches' retry of a store call: a StoreUnavailableError (FerretDB 1.x answers SQLITE_BUSY
 * under load) is retried with a growing pause, as the pipeline would; anything else is thrown.
 */
import { StoreUnavailableError } from '@exactly-once/core';

/** StoreUnavailableError retries made so far by {@link retried}. */
export const retries = { count: 0 };

export async function retried<T>(operation: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await operation();
    } catch (error) {
      if (!(error instanceof StoreUnavailableError) || attempt >= 30) throw error;
      retries.count++;
      await new Promise((resolve) => setTimeout(resolve, Math.min(100 * attempt, 2000)));
    }
  }
}
