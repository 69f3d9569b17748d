/**
 * The store's clock. Leases and retention are deadlines that every worker compares against, so
 * they must come from one clock: the server's. MongoDB can read its own clock only inside
 * aggregation-pipeline updates (`$$NOW`), which FerretDB 1.x rejects; `$currentDate` can stamp a
 * field but cannot be compared against or added to in the same update. So the store estimates the
 * server clock instead: it reads `localTime` from `hello`, pins it to the monotonic instant at the
 * midpoint of the round trip, and counts forward from there on the monotonic clock
 * (`performance.now()`), measuring again periodically. A server without `hello` (mongo-java-server
 * 1.x; MongoDB before 4.4.2) answers CommandNotFound: the clock then asks the legacy `isMaster`,
 * which reports the same `localTime` (mongo-java-server's does, from its own clock), and keeps
 * asking that. A server whose reply has no `localTime` leaves this host's clock in charge, as if it
 * were `clientClock()`.
 *
 * The host's wall clock takes no part in the estimate, so stepping it (by hand, by NTP, by a VM
 * restore) moves no deadline. It is only watched: when wall and monotonic time disagree by more
 * than a second since the measurement, the host stepped its clock or was suspended (the monotonic
 * clock does not count a suspend on Linux and macOS), and the clock measures again before
 * answering.
 *
 * What remains: the estimate is off by up to half the measuring round trip, plus the drift between
 * this host's monotonic clock and the server's clock since the measurement (crystals and NTP slew
 * stay below about 500 ppm: 30 ms a minute at most). A step of the server's own clock reaches a
 * worker at its next measurement (or a later one, if that one's round trip was unusually slow), so
 * workers disagree for about a refresh period; and a step backwards is absorbed by "never goes
 * backwards", so store time stands still until the server catches up.
 */
import type { Db, Document } from 'mongodb';

export interface StoreClock {
  /** Store time, ms since epoch; never goes backwards within a process. Throws driver errors. */
  now(): Promise<number>;
}

/** Uses this host's clock: only for single-host setups or hosts known to be synchronised. */
export function clientClock(): StoreClock {
  return { now: async () => Date.now() };
}

export interface ServerClockOptions {
  /** How long a measurement is trusted before the next. Default 60 s. */
  readonly refreshMs?: number;
}

/** One measurement: server time `server` held at monotonic instant `mono`. */
interface Anchor {
  readonly server: number;
  readonly mono: number;
  /** The round trip: `server` is right to within half of it. */
  readonly rtt: number;
  /** The host wall clock at `mono`, to notice steps and suspends. */
  readonly wall: number;
}

/** Assumed worst drift of the host monotonic clock against the server clock (500 ppm). */
const MAX_DRIFT = 5e-4;
/** Wall and monotonic elapsed times further apart than this mean a host clock step or suspend. */
const JUMP_MS = 1000;
/** MongoDB's error code for an unknown command (codeName CommandNotFound). */
const COMMAND_NOT_FOUND = 59;

const isCommandNotFound = (error: unknown): boolean => {
  if (typeof error !== 'object' || error === null) return false;
  const { code, codeName } = error as { code?: unknown; codeName?: unknown };
  return code === COMMAND_NOT_FOUND || codeName === 'CommandNotFound';
};

const uncertainty = (anchor: Anchor, mono: number) => anchor.rtt / 2 + (mono - anchor.mono) * MAX_DRIFT;
const jumped = (anchor: Anchor, mono: number) =>
  Math.abs(Date.now() - anchor.wall - (mono - anchor.mono)) > JUMP_MS;

export function serverClock(db: Db, options: ServerClockOptions = {}): StoreClock {
  const refreshMs = options.refreshMs ?? 60_000;
  let anchor: Anchor | undefined;
  let measuredAt = Number.NEGATIVE_INFINITY;
  let pending: Promise<void> | undefined;
  let last = 0;
  // `hello` until the server says it has no such command; then `isMaster` from there on.
  let command: 'hello' | 'isMaster' = 'hello';

  const measure = async (): Promise<void> => {
    let sent = performance.now();
    let reply: Document;
    try {
      reply = await db.command(command === 'hello' ? { hello: 1 } : { isMaster: 1 });
    } catch (error) {
      if (command !== 'hello' || !isCommandNotFound(error)) throw error;
      command = 'isMaster';
      // The refused `hello` is not part of the round trip that times the reading.
      sent = performance.now();
      reply = await db.command({ isMaster: 1 });
    }
    const received = performance.now();
    measuredAt = received;
    const localTime: unknown = reply.localTime;
    // A server that does not report its time leaves the host clock in charge (anchor unset).
    if (!(localTime instanceof Date) || Number.isNaN(localTime.getTime())) return;
    const mono = (sent + received) / 2;
    const next = {
      server: localTime.getTime(),
      mono,
      rtt: received - sent,
      wall: Date.now() - (received - mono),
    };
    // Keep an earlier measurement whose quicker round trip still beats this one's after drift:
    // a reply delayed on the way is the least exact. A jump invalidates the earlier one.
    if (
      anchor === undefined ||
      jumped(anchor, received) ||
      uncertainty(next, received) <= uncertainty(anchor, received)
    ) {
      anchor = next;
    }
  };

  return {
    async now(): Promise<number> {
      const mono = performance.now();
      if (mono - measuredAt >= refreshMs || (anchor !== undefined && jumped(anchor, mono))) {
        // One measurement at a time; concurrent operations wait for the same one.
        pending ??= measure().finally(() => {
          pending = undefined;
        });
        await pending;
      }
      const estimate = anchor === undefined ? Date.now() : anchor.server + (performance.now() - anchor.mono);
      last = Math.max(last, Math.round(estimate));
      return last;
    },
  };
}
