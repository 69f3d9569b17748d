/**
 * This process's reading of each Redis server's clock, learned from the server times that begin
 * scripts answer. It tells a begin the server time after which its caller has given up (the
 * request's `abandonAfterMs`), so that a request the client queued through an outage and sent on
 * its return takes no lease that nobody would hold.
 *
 * The offset to the server is read on a monotonic local clock. A reading is the server's time at
 * the script's start against the local time its answer arrived, so it is never above the true
 * offset: a deadline made from it falls no later than the caller's own, and a begin refused by
 * mistake only answers `busy` (the caller tries again), never takes a lease it should not. The
 * highest reading of the last `FRESH_MS` is kept (one slow answer does not move the deadlines
 * earlier); older ones give way to the newest, so a drifting or stepped clock is followed.
 */
const FRESH_MS = 10_000;

const localNow = (): number => performance.timeOrigin + performance.now();

export class ServerClocks {
  private readonly readings = new Map<string, { offset: number; at: number }>();

  /** `now`: the local monotonic clock in ms (replaced in tests). */
  constructor(private readonly now: () => number = localNow) {}

  /** Notes that `node` answered `serverNow` (ms) in a reply that arrived just now. */
  observe(node: string, serverNow: number): void {
    const at = this.now();
    const offset = serverNow - at;
    const kept = this.readings.get(node);
    if (kept === undefined || offset >= kept.offset || at - kept.at > FRESH_MS) {
      this.readings.set(node, { offset, at });
    }
  }

  /**
   * The server time (whole ms) on `node` after which a call made at local time `startedAt` is
   * abandoned, `abandonAfterMs` later; 0 (no deadline) while the clock is unknown or the call is
   * never abandoned.
   */
  deadline(node: string, startedAt: number, abandonAfterMs: number | undefined): number {
    if (abandonAfterMs === undefined || !Number.isFinite(abandonAfterMs)) return 0;
    const kept = this.readings.get(node);
    if (kept === undefined) return 0;
    return Math.max(1, Math.floor(startedAt + kept.offset + abandonAfterMs));
  }

  /** The local time to pass as `startedAt`. */
  started(): number {
    return this.now();
  }
}
