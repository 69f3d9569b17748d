/**
 * Ordered groups (`processInOrder`): when a delivery may run its handler, and the leases kept for
 * deliveries that waited their turn.
 */
import type { ResolvedProcessorOptions } from './options.js';
import {
  giveBackUnrun,
  ORDERED_WINDOW,
  type OrderedGroup,
  type Shared,
  type Turn,
  trackGiveBack,
} from './shared.js';
import type { BeginResult } from './store/types.js';

export const NOT_RUN = {
  name: 'NotRun',
  code: 'NOT_RUN',
  message: 'an earlier message of its group is retried',
};

/**
 * Ends a group: no handler of it starts any more, and the kept leases nobody took over since are
 * given back (their next begin is a retry).
 */
export async function releaseKept<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  shared: Shared,
  group: OrderedGroup,
) {
  group.released = true;
  group.markReleased();
  // Deliveries whose begin is still on its way give their leases back when it answers. Tracked
  // once: a second release (a revocation, then stop) must not orphan the first's promise.
  if (group.notRunning > 0 && group.allRunning === undefined) {
    void trackGiveBack(
      shared,
      new Promise<void>((resolve) => {
        group.allRunning = resolve;
      }),
    );
  }
  const left = group.kept.splice(0).filter((h) => shared.held.get(h.key) === h);
  for (const h of left) shared.held.delete(h.key);
  await Promise.all(
    left.map((h) =>
      giveBackUnrun(shared, () => o.store.release(h.key, h.begun.fence, NOT_RUN, { notRun: true })),
    ),
  );
}

/**
 * Whether an ordered delivery may run its handler now: the one before it went well, the group
 * is neither released nor stopped, and at most ORDERED_WINDOW handlers run ahead of their writes
 * (none for a takeover: see below).
 */
export async function mayRun(turn: Turn, takeover: boolean): Promise<boolean> {
  const group = turn.group;
  // A released group's deliveries stop waiting at once and give their leases back, rather than
  // when the run ahead of them ends (a run that outlives stop() may never end soon).
  if (!(await Promise.race([turn.previous, group.whenReleased]))) return false;
  if (takeover && turn.index > 0) {
    // The last worker holding this key died or stalled: it may be the record that kills its
    // worker. It starts once the runs before it have ended (their completions written), so that
    // if it kills this worker too they are not run again with it at every crash, until they
    // reach maxTakeoverAttempts before it (found with a record killing its worker at once).
    await Promise.race([Promise.all(group.ended.slice(0, turn.index)), group.whenReleased]);
  } else if (turn.index >= ORDERED_WINDOW) {
    await Promise.race([group.ended[turn.index - ORDERED_WINDOW], group.whenReleased]);
  }
  return !group.released && !group.stopped;
}

/**
 * The lease this processor kept for an ordered delivery it did not run, if it still has one for
 * this payload: extended first when half of it has passed. `since`: when (monotonic clock) the
 * lease was last set in the store, or a little earlier, never later. Undefined: begin as usual.
 */
export async function reuseHeld<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  shared: Shared,
  storeKey: string,
  fingerprint: string,
): Promise<{ begun: Extract<BeginResult, { status: 'acquired' }>; since: number } | undefined> {
  const held = shared.held.get(storeKey);
  if (held === undefined) return undefined;
  shared.held.delete(storeKey);
  if (held.fingerprint !== fingerprint) return undefined;
  if (held.deadline - performance.now() > o.leaseMs / 2) {
    return { begun: held.begun, since: held.deadline - o.leaseMs };
  }
  const since = performance.now();
  if ((await o.store.extend(storeKey, held.begun.fence, o.leaseMs)) === 'lost') return undefined;
  return { begun: held.begun, since };
}
