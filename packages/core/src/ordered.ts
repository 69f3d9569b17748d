/**
 * Ordered groups (`processInOrder`): when a delivery may run its handler, and the leases kept for
 * deliveries that waited their turn.
 */
import type { ResolvedProcessorOptions } from './options.js';
import { ORDERED_WINDOW, type OrderedGroup, type Shared, type Turn } from './shared.js';
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
  const left = group.kept.splice(0).filter((h) => shared.held.get(h.key) === h);
  for (const h of left) shared.held.delete(h.key);
  await Promise.all(
    left.map((h) => o.store.release(h.key, h.begun.fence, NOT_RUN, { notRun: true }).catch(() => undefined)),
  );
}

/**
 * Whether an ordered delivery may run its handler now: the one before it went well, the group
 * is neither released nor stopped, and at most ORDERED_WINDOW handlers run ahead of their writes.
 */
export async function mayRun(turn: Turn): Promise<boolean> {
  if (!(await turn.previous)) return false;
  const group = turn.group;
  if (turn.index >= ORDERED_WINDOW) await group.ended[turn.index - ORDERED_WINDOW];
  return !group.released && !group.stopped;
}

/**
 * The lease this processor kept for an ordered delivery it did not run, if it still has one for
 * this payload: extended first when half of it has passed. Undefined: begin as usual.
 */

export async function reuseHeld<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  shared: Shared,
  storeKey: string,
  fingerprint: string,
): Promise<BeginResult | undefined> {
  const held = shared.held.get(storeKey);
  if (held === undefined) return undefined;
  shared.held.delete(storeKey);
  if (held.fingerprint !== fingerprint) return undefined;
  if (held.deadline - performance.now() > o.leaseMs / 2) return held.begun;
  if ((await o.store.extend(storeKey, held.begun.fence, o.leaseMs)) === 'lost') return undefined;
  return held.begun;
}
