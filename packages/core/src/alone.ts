/**
 * Takeovers of ordered deliveries run alone in their process. A key taken over was held by a
 * worker that died or stalled: its delivery may be the one that kills its worker. A crash counts
 * an attempt for every lease the process holds, started or not, and Kafka has no "redelivered"
 * mark to run such a record apart before its begin; so while a takeover runs, nothing else in the
 * process holds a lease: the runs under way end first, every other ordered group and the rest of
 * its own are given up (the leases of their deliveries not started go back uncounted, see
 * `passGate`) and no begin is sent until it ends, or until a lease has passed since it took the
 * gate (a long handler, its own or one under way before it, must not hold the process for its
 * whole run: it then runs beside the others). If it kills this worker too, the crash counts an
 * attempt for it only, not for records of other partitions or behind it, which would otherwise
 * reach `maxTakeoverAttempts` with it.
 */
import type { OrderedGroup } from './shared.js';

export class TakeoverGate {
  /** Runs under way that entered outside a takeover's turn, or beside it in its own group. */
  private running = 0;
  private drained: (() => void) | undefined;
  /** The group of the takeover that holds the gate, while one does. */
  private holder: OrderedGroup | undefined;
  private opened: Promise<void> | undefined;
  private open: (() => void) | undefined;
  /** Ordered groups with deliveries not settled yet: given up when a takeover takes the gate. */
  readonly groups = new Set<OrderedGroup>();

  /** Before a begin: resolves once no takeover holds the gate; undefined (no promise) if none does. */
  whenOpen(): Promise<void> | undefined {
    return this.opened;
  }

  /**
   * A run of `group` (undefined: not ordered) is about to start its handler: false while another
   * group's takeover holds the gate (give its lease back). Each true is followed by one `leave`.
   */
  enter(group: OrderedGroup | undefined): boolean {
    if (this.holder !== undefined && this.holder !== group) return false;
    this.running++;
    return true;
  }

  /** A run that entered has ended, and what outlived it too. */
  readonly leave = (): void => {
    if (--this.running === 0) this.drained?.();
  };

  /**
   * A takeover of `group` is about to start its handler: it takes the gate once no other takeover
   * holds it, gives up every other group (`giveUp`, which settles once their leases are back)
   * and waits for the runs under way to end; it holds the gate for `aloneMs` at most, that wait
   * included (a run under way may be a long handler). Answers what to call once its run has
   * ended, or undefined when its own group was given up meanwhile (by another takeover, a
   * revocation or stop): give its lease back.
   */
  async take(
    group: OrderedGroup,
    giveUp: (others: OrderedGroup[]) => Promise<void>,
    aloneMs: number,
  ): Promise<(() => void) | undefined> {
    while (this.opened !== undefined) {
      if (!(await Promise.race([this.opened.then(() => true), group.whenReleased]))) return undefined;
    }
    if (group.released) return undefined;
    this.holder = group;
    this.opened = new Promise<void>((resolve) => {
      this.open = resolve;
    });
    const letGo = () => {
      this.holder = undefined;
      this.opened = undefined;
      this.open?.();
    };
    // Alone until `aloneMs` has passed: a run that has not killed its worker by then (a long
    // handler) lets the others begin and run beside it, as a run under way like theirs; a run
    // under way that has not ended by then has the takeover run beside it.
    let state: 'waiting' | 'alone' | 'beside' | 'ended' = 'waiting';
    const beside = () => {
      state = 'beside';
      this.running++;
      letGo();
    };
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => {
      timer = setTimeout(() => {
        if (state === 'alone') beside();
        resolve('late');
      }, aloneMs);
      timer.unref?.();
    });
    const drained =
      this.running === 0
        ? undefined
        : new Promise<void>((resolve) => {
            this.drained = resolve;
          });
    const others = [...this.groups].filter((other) => other !== group);
    const alone = await Promise.race([
      Promise.all([giveUp(others), drained]).then(() => 'alone' as const),
      late,
      group.whenReleased,
    ]);
    this.drained = undefined;
    if (alone === false) {
      clearTimeout(timer);
      state = 'ended';
      letGo();
      return undefined;
    }
    // The deadline passed before the runs under way ended: the takeover runs beside them.
    if (alone === 'late') beside();
    else state = 'alone';
    return () => {
      clearTimeout(timer);
      if (state === 'alone') letGo();
      else if (state === 'beside') this.leave();
      state = 'ended';
    };
  }
}
