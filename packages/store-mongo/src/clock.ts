/**
 * The store's clock. Leases and retention are deadlines that every worker compares against, so
 * they must come from one clock: the server's. MongoDB can read its own clock only inside
 * aggregation-pipeline updates (`$$NOW`), which FerretDB 1.x rejects; `$currentDate` can stamp a
 * field but cannot be compared against or added to in the same update. So the store estimates the
 * server clock instead: it reads `localTime` from `hello`, takes the offset from the midpoint of
 * the round trip, and refreshes it periodically. Workers then agree on time to within about half a
 * round trip plus the server clock's own step, whatever their host clocks say.
 */
import type { Db } from 'mongodb';

export interface StoreClock {
  /** Store time, ms since epoch; never goes backwards within a process. Throws driver errors. */
  now(): Promise<number>;
}

/** Uses this host's clock: only for single-host setups or hosts known to be synchronised. */
export function clientClock(): StoreClock {
  return { now: async () => Date.now() };
}

export interface ServerClockOptions {
  /** How long an offset measurement is trusted. Default 60 s. */
  readonly refreshMs?: number;
}

export function serverClock(db: Db, options: ServerClockOptions = {}): StoreClock {
  const refreshMs = options.refreshMs ?? 60_000;
  let offset = 0;
  let measuredAt = Number.NEGATIVE_INFINITY;
  let pending: Promise<void> | undefined;
  let last = 0;

  const measure = async (): Promise<void> => {
    const sent = Date.now();
    const reply = await db.command({ hello: 1 });
    const received = Date.now();
    const localTime: unknown = reply.localTime;
    // A server that does not report its time leaves the host clock in charge (offset 0).
    if (localTime instanceof Date && !Number.isNaN(localTime.getTime())) {
      offset = Math.round(localTime.getTime() - (sent + received) / 2);
    }
    measuredAt = received;
  };

  return {
    async now(): Promise<number> {
      if (Date.now() - measuredAt >= refreshMs) {
        // One measurement at a time; concurrent operations wait for the same one.
        pending ??= measure().finally(() => {
          pending = undefined;
        });
        await pending;
      }
      last = Math.max(last, Date.now() + offset);
      return last;
    },
  };
}
