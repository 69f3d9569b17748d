/**
 * Redelivered messages run alone. The broker sets `redelivered` on a message whose previous
 * consumer did not settle it: its worker died (a SIGKILL, an OOM kill), lost its channel, or
 * handed it back when stopping. After a crash the whole prefetch window comes back that way, and
 * if it ran together again, a message that kills its worker every time would take every message
 * of the window with it at each crash: each of them is begun again (an attempt counted), each
 * handler re-run, until all of them are dead-lettered `ATTEMPTS_EXHAUSTED` beside the one poison
 * message. Run one at a time, with no other delivery of the consumer beside them, the message
 * that kills the worker dies alone; the others, not yet begun, count no attempt for it.
 */
import { Semaphore } from 'async-mutex';

/** More than any prefetch window (AMQP carries it in 16 bits): a run alone takes every unit. */
const ALL = 0x10000;

/**
 * Runs `fn` beside other deliveries, or, for a redelivered one, alone: after every run under way
 * has ended, and before any delivery that came after it starts (first come, first served).
 */
export type RunGate = <T>(redelivered: boolean, fn: () => Promise<T>) => Promise<T>;

export function redeliveryGate(): RunGate {
  const units = new Semaphore(ALL);
  return (redelivered, fn) => units.runExclusive(fn, redelivered ? ALL : 1);
}
