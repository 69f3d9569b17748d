/**
 * Messages whose last run may have died with its worker run alone. The broker sets `redelivered`
 * on a message whose previous consumer did not settle it: its worker died (a SIGKILL, an OOM
 * kill), lost its channel, or handed it back when stopping. After a crash the whole prefetch
 * window comes back that way, and if it ran together again, a message that kills its worker every
 * time would take every message of the window with it at each crash: each of them is begun again
 * (an attempt counted), each handler re-run, until all of them are dead-lettered
 * `ATTEMPTS_EXHAUSTED` beside the one poison message. Run one at a time, with no other delivery of
 * the consumer beside them, the message that kills the worker dies alone; the others, not yet
 * begun, count no attempt for it. Which redelivered messages are suspects, the store says
 * (`Processor.lastRunMayHaveDied`): one handed back unrun, or given back by a stop that cut its
 * run, is not, and runs as a new message does (behind the suspects that came before it); a whole
 * window handed back at a stop would otherwise run one message at a time.
 *
 * Hand-written rather than a library's weighted semaphore: the one we tried walks its whole value
 * on every release, and an exclusive run must weigh more than any prefetch window (a 10x slower
 * consumer). Here a delivery that need not wait costs two counter updates, and no promise.
 */

/**
 * Where deliveries wait for a suspect one to run alone, and a suspect one for the runs under way
 * to end (first come, first served). `enter` answers undefined when the delivery may start now,
 * else a promise of that moment; every `enter` is followed by one `leave` with the same `alone`.
 */
export interface RunGate {
  enter(alone: boolean): Promise<void> | undefined;
  leave(alone: boolean): void;
}

export function redeliveryGate(): RunGate {
  let running = 0;
  let alone = false;
  const waiting: { readonly alone: boolean; readonly start: () => void }[] = [];

  const mayStart = (single: boolean) => !alone && (!single || running === 0);
  const start = (single: boolean) => {
    running++;
    if (single) alone = true;
  };
  return {
    enter(single) {
      if (waiting.length === 0 && mayStart(single)) {
        start(single);
        return undefined;
      }
      return new Promise<void>((resolve) => waiting.push({ alone: single, start: resolve }));
    },
    leave(single) {
      running--;
      if (single) alone = false;
      // The head waits until it may start, and those behind it with it.
      for (let next = waiting[0]; next !== undefined && mayStart(next.alone); next = waiting[0]) {
        waiting.shift();
        start(next.alone);
        next.start();
      }
    },
  };
}
