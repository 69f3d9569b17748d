/**
 * At most so many update statements of one store on the server at once (`maxConcurrentUpdates`).
 *
 * FerretDB 1.x (SQLite backend) runs an update statement as a query whose result it keeps open
 * (one pooled connection) while it writes in a transaction (a second one), out of 100 connections
 * per database. Once the update statements in flight on a database hold all 100 by their queries,
 * none gets its second connection and none ends: the database waits for ever, and the next
 * `createIndexes` on it (a worker starting) stops the whole server, `ping` included. A consumer's
 * prefetch window of handlers journaling their steps at once, and its lease extensions, were enough
 * to reach it. MongoDB needs no such limit; it costs it nothing at the default, where inserts (the
 * common path: a new key's begin, a completion) are never held back.
 *
 * Hand-written: a weighted semaphore of a dozen lines (a bulk write of n updates is n statements),
 * waiters served in order.
 */
export type UpdateGate = <T>(statements: number, run: () => Promise<T>) => Promise<T>;

export function updateGate(limit: number): UpdateGate {
  let inFlight = 0;
  const waiting: { readonly weight: number; readonly start: () => void }[] = [];
  const release = (weight: number) => {
    inFlight -= weight;
    for (let next = waiting[0]; next !== undefined && inFlight + next.weight <= limit; next = waiting[0]) {
      waiting.shift();
      inFlight += next.weight;
      next.start();
    }
  };
  return async (statements, run) => {
    // A command larger than the limit waits until it is alone (commandParts keeps them at 20).
    const weight = Math.min(Math.max(1, statements), limit);
    if (waiting.length === 0 && inFlight + weight <= limit) inFlight += weight;
    else await new Promise<void>((start) => waiting.push({ weight, start }));
    try {
      return await run();
    } finally {
      release(weight);
    }
  };
}
