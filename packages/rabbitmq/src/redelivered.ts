/**
 * Redelivered messages run alone. The broker sets `redelivered` on a message whose previous
 * consumer did not settle it: its worker died (a SIGKILL, an OOM kill), lost its channel, or
 * handed it back when stopping. After a crash the whole prefetch window comes back that way, and
 * if it ran together again, a message that kills its worker every time would take every message
 * of the window with it at each crash: each of them is begun again (an attempt counted), each
 * handler re-run, until all of them are dead-lettered `ATTEMPTS_EXHAUSTED` beside the one poison
 * message. Run one at a time, with no other delivery of the consumer beside them, the message
 * that kills the worker dies alone; the others, not yet begun, count no attempt for it.
 *
 * Hand-written rather than a library's weighted semaphore: the one we tried walks its whole value
 * on every release, and an exclusive run must weigh more than any prefetch window (a 10x slower
 * consumer). Here a delivery that need not wait costs two counter updates, and no promise.
 */

/**
 * Where deliveries wait for a redelivered one to run alone, and a redelivered one for the runs
 * under way to end (first come, first served). `enter` answers undefined when the delivery may
 * start now, else a promise of that moment; every `enter` is followed by one `leave`.
 */
export interface RunGate {
  enter(redelivered: boolean): Promise<void> | undefined;
  leave(redelivered: boolean): void;
}

export function redeliveryGate(): RunGate {
  let running = 0;
  let alone = false;
  const waiting: { readonly alone: boolean; readonly start: () => void }[] = [];

  const mayStart = (redelivered: boolean) => !alone && (!redelivered || running === 0);
  const start = (redelivered: boolean) => {
    running++;
    if (redelivered) alone = true;
  };
  return {
    enter(redelivered) {
      if (waiting.length === 0 && mayStart(redelivered)) {
        start(redelivered);
        return undefined;
      }
      return new Promise<void>((resolve) => waiting.push({ alone: redelivered, start: resolve }));
    },
    leave(redelivered) {
      running--;
      if (redelivered) alone = false;
      // The head waits until it may start, and those behind it with it.
      for (let next = waiting[0]; next !== undefined && mayStart(next.alone); next = waiting[0]) {
        waiting.shift();
        start(next.alone);
        next.start();
      }
    },
  };
}
