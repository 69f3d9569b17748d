/**
 * Ordered groups (`processInOrder`): when a delivery may run its handler, and the leases kept for
 * deliveries that waited their turn.
 */
import type { ResolvedProcessorOptions } from './options.js';
import {
  giveBackUnrun,
  leasesGivenBack,
  ORDERED_WINDOW,
  type OrderedGroup,
  type Shared,
  type Turn,
  trackGiveBack,
} from './shared.js';
import type { Disposition } from './spi.js';
import type { BeginResult, FencedResult } from './store/types.js';

const NOT_RUN = {
  name: 'NotRun',
  code: 'NOT_RUN',
  message: 'an earlier message of its group is retried',
};

/** The answer for a delivery whose handler did not start and whose lease was kept or given back. */
export const NOT_RUN_DISPOSITION: Disposition = Object.freeze({
  action: 'defer',
  outcome: 'not-run',
  delayMs: 0,
});

const GAVE_WAY: Disposition = Object.freeze({ ...NOT_RUN_DISPOSITION, gaveWay: true });

/** {@link NOT_RUN_DISPOSITION}, saying whether the group gave way to a takeover (see alone.ts). */
export function notRun(turn: Turn | undefined): Disposition {
  return turn?.group.gaveWay ? GAVE_WAY : NOT_RUN_DISPOSITION;
}

/**
 * Gives back a lease acquired for a delivery whose handler never started: uncounted, and a
 * takeover stays one (its last run that started still died or stalled: see alone.ts).
 */
export function giveBack<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  shared: Shared,
  key: string,
  begun: Extract<BeginResult, { status: 'acquired' }>,
): Promise<void> {
  return giveBackUnrun(shared, () =>
    o.store.release(key, begun.fence, NOT_RUN, { notRun: true, takenOver: begun.kind === 'takeover' }),
  );
}

/**
 * Whether an acquired delivery is dead-lettered `ATTEMPTS_EXHAUSTED` without running its handler.
 * Takeovers have a bound of their own: the worker that died may never have started this key's
 * handler. In an ordered group, the deliveries behind one stopped here waited for it each time
 * its crashes counted them up (found under SIGKILL storms: a poison record took 31 records that
 * never ran to the dead-letter topic with it); they run, and a second poison among them is
 * stopped as the next group's head. A retry past retry.maxAttempts comes only from takeovers that
 * counted the key up (the failure path ends a key whose handler failed that often), followed by
 * a lease given back unrun: it is held to the larger bound, or an innocent key would be
 * dead-lettered for its dead workers.
 */
export function exhausted<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  begun: Extract<BeginResult, { status: 'acquired' }>,
  turn: Turn | undefined,
): boolean {
  const takeover = begun.kind === 'takeover';
  if (takeover && turn?.group.behindExhausted === true) return false;
  const bound = takeover ? o.maxTakeoverAttempts : Math.max(o.retry.maxAttempts, o.maxTakeoverAttempts);
  return begun.attempt > bound;
}

/**
 * The gate of takeovers (alone.ts) for an acquired delivery about to start its handler: a
 * takeover of an ordered group takes it, any other run enters beside what runs (at once, no
 * promise). Answers what to call once the run has ended, or undefined when the delivery may not
 * start now: its lease was given back and its group given up, to be begun again once the
 * takeover has ended.
 */
export function passGate<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  shared: Shared,
  turn: Turn | undefined,
  key: string,
  begun: Extract<BeginResult, { status: 'acquired' }>,
): (() => void) | Promise<(() => void) | undefined> {
  const { gate } = shared;
  // A takeover past its bound runs no handler (see exhausted): nothing to run alone.
  if (turn !== undefined && begun.kind === 'takeover' && !exhausted(o, begun, turn)) {
    const group = turn.group;
    return gate
      .take(
        group,
        (others) => {
          for (const other of others) {
            other.gaveWay = true;
            void releaseKept(o, shared, other);
          }
          return leasesGivenBack(shared);
        },
        o.leaseMs,
      )
      .then(async (letGo) => {
        if (letGo === undefined) return refuse(o, shared, turn, key, begun);
        // The deliveries after it in its group give their leases back too, unless they waited
        // behind a poison record (see exhausted), and are run again once it has ended.
        if (!group.behindExhausted) {
          group.gaveWay = true;
          void releaseKept(o, shared, group);
          await leasesGivenBack(shared);
        }
        return letGo;
      });
  }
  return gate.enter(turn?.group) ? gate.leave : refuse(o, shared, turn, key, begun);
}

/**
 * Ends a group: no handler of it starts any more, and the kept leases nobody took over since are
 * given back (see giveBack); deliveries waiting for their turn give theirs back as they stop.
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
  await Promise.all(left.map((h) => giveBack(o, shared, h.key, h.begun)));
}

/**
 * Whether an ordered delivery may run its handler: its turn came (the one before it went well,
 * and at most ORDERED_WINDOW handlers run ahead of their writes: see turnCame) and the group is
 * neither released nor stopped. (A takeover then also waits for every run under way to end, a
 * lease at most: see alone.ts.)
 */
export function mayRun(turn: Turn, came: boolean): boolean {
  return came && !turn.group.released && !turn.group.stopped;
}

/**
 * Resolves when the delivery before this one has gone on or not (true: it went well), and the
 * delivery ORDERED_WINDOW places ahead has ended. Within the window (every group the adapters
 * make) that is the previous delivery's word itself: the caller awaits it, no async frame here.
 * A released group's deliveries stop waiting at once and give their leases back, rather than
 * when the run ahead of them ends (a run that outlives stop() may never end soon): the release
 * answers every `previous` false (see processInOrder).
 */
export function turnCame(turn: Turn): Promise<boolean> {
  return turn.index < ORDERED_WINDOW ? turn.previous : behindWindow(turn);
}

async function behindWindow(turn: Turn): Promise<boolean> {
  const group = turn.group;
  if (!(await turn.previous)) return false;
  await Promise.race([group.ended[turn.index - ORDERED_WINDOW], group.whenReleased]);
  return true;
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
  // Another payload under the key is not this lease's message: the lease stays kept for it (the
  // begin that follows answers mismatch).
  if (held === undefined || held.fingerprint !== fingerprint) return undefined;
  shared.held.delete(storeKey);
  if (held.deadline - performance.now() > o.leaseMs / 2) {
    return { begun: held.begun, since: held.deadline - o.leaseMs };
  }
  const since = performance.now();
  let extended: FencedResult;
  try {
    extended = await o.store.extend(storeKey, held.begun.fence, o.leaseMs);
  } catch (error) {
    // The store did not answer: the lease is still this processor's to reuse or give back (its
    // group's release), not left to run out and come back as a takeover.
    if (!shared.held.has(storeKey)) shared.held.set(storeKey, held);
    throw error;
  }
  if (extended === 'lost') return undefined;
  return { begun: held.begun, since };
}

/** A delivery that may not start now: its group gives up, its lease goes back (see passGate). */
async function refuse<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  shared: Shared,
  turn: Turn | undefined,
  key: string,
  begun: Extract<BeginResult, { status: 'acquired' }>,
): Promise<undefined> {
  if (turn !== undefined) void releaseKept(o, shared, turn.group);
  await giveBack(o, shared, key, begun);
  return undefined;
}
