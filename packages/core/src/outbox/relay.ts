/**
 * The outbox relay: publishes messages a service wrote with its own state (an order document and
 * its events in one write) once the broker confirms them, at the rate the broker takes.
 *
 * - **Bounded in flight.** A round is at most `window` messages (an entry bigger than the window
 *   goes alone), published in one confirmed call; the next round starts after it is confirmed.
 * - **Adaptive.** The window grows while rounds confirm within `targetRoundMs`, shrinks when they
 *   take longer, halves on a failure; failures back off (`retry`) and are retried forever.
 * - **In order per entry, never lost.** An entry's messages go out in one round, in order; after a
 *   failure the next pass starts again from the oldest unconfirmed entry. A source is read in its
 *   order (oldest first), so entries of one key keep their order if they were written in order.
 * - **At least once.** Marking entries published happens after confirmation and off the publish
 *   path (in the background, in chunks); a relay that dies before marking publishes those entries
 *   again: the consumers' deduplication (their idempotency key) drops them.
 */
import type { Counter, ObservableGauge } from '@opentelemetry/api';
import { ClosedError, ConfigError } from '../errors.js';
import type { Logger } from '../logger.js';
import { defaultLogger } from '../logger.js';
import { type OptionNames, refuseUnknownOptions } from '../option-names.js';
import { positiveMs } from '../options.js';
import { type RetryPolicyOptions, resolveRetryPolicy, retryDelayMs } from '../retry.js';
import type { OutgoingPublisher } from '../spi.js';
import type { OutgoingMessage } from '../store/types.js';
import { counter, observableGauge } from '../tracing.js';
import { pause } from '../wait.js';
import { traceRound } from './relay-spans.js';

/** One unit of the source (e.g. a document) and the messages it holds, in publish order. */
export interface OutboxEntry {
  readonly id: string;
  readonly messages: readonly OutgoingMessage[];
}

/** Where the relay reads pending entries and records them published. */
export interface OutboxSource {
  /**
   * One pass over the pending entries, oldest first. Entries written during the pass may or may
   * not appear; the next pass sees them. Every entry pending when the pass starts and not marked
   * published meanwhile must appear: the relay marks entries while a pass reads, so page by a
   * key (the last entry read), never by an offset, which marked entries would shift.
   */
  scan(): AsyncIterable<OutboxEntry>;
  /** Records entries as published (their messages were confirmed). Idempotent. */
  markPublished(ids: readonly string[]): Promise<void>;
  /** Entries not yet marked published (the lag gauge and alert subtract those confirmed but not yet marked). */
  countPending(): Promise<number>;
}

export interface OutboxRelayOptions {
  source: OutboxSource;
  /** A confirmed publisher: `createProducer` (Kafka) or `createPublisher` (RabbitMQ). */
  publisher: OutgoingPublisher;
  /** Messages per round, the bound on unconfirmed messages. @defaultValue `{ initial: 256, min: 16, max: 2048 }` */
  window?: { initial?: number; min?: number; max?: number };
  /**
   * A round confirmed within this grows the window (doubling after a failure, then by an eighth);
   * a slower one shrinks it by a quarter. @defaultValue 250
   */
  targetRoundMs?: number;
  /** Backoff after a failed round (retried forever; `maxAttempts` is ignored). @defaultValue `{ initialDelayMs: 200, maxDelayMs: 10000 }` */
  retry?: Omit<RetryPolicyOptions, 'maxAttempts'>;
  /** Wait before the next pass when a pass found nothing. @defaultValue 200 */
  idleDelayMs?: number;
  /** Entries marked per `markPublished` call. @defaultValue 500 */
  markBatch?: number;
  /** Publishing pauses while more confirmed entries than this wait to be marked. @defaultValue 200000 */
  maxUnmarked?: number;
  /**
   * Counts pending entries every `everyMs` (default 5000: a count may scan the collection) and
   * calls `onAlert` once while the lag is above `threshold`.
   */
  lagAlert?: {
    threshold: number;
    everyMs?: number;
    onAlert(lag: number): void;
    onRecover?(lag: number): void;
  };
  logger?: Logger;
}

export interface OutboxRelayStats {
  /** Messages confirmed by the broker. */
  readonly published: number;
  readonly rounds: number;
  readonly failures: number;
  /** The current window, and the most messages ever unconfirmed at once. */
  readonly window: number;
  readonly maxInFlight: number;
  readonly inFlight: number;
  /** Confirmed entries not yet marked in the source. */
  readonly unmarked: number;
  /** Unpublished entries at the last count (undefined before the first). */
  readonly lag: number | undefined;
}

export interface OutboxRelay {
  /** Starts relaying (idempotent). */
  start(): void;
  /** Stops after the round in flight and the marking of what it confirmed. */
  stop(): Promise<void>;
  /**
   * Resolves when a pass finds nothing left to publish and every confirmed entry is marked;
   * rejects with a `ClosedError` once the relay is stopped (a call waiting then, or made after).
   */
  drained(): Promise<void>;
  stats(): OutboxRelayStats;
}

const DEFAULT_WINDOW = { initial: 256, min: 16, max: 2048 };

export function createOutboxRelay(options: OutboxRelayOptions): OutboxRelay {
  refuseUnknownOptions(options, {
    source: true,
    publisher: true,
    window: true,
    targetRoundMs: true,
    retry: true,
    idleDelayMs: true,
    markBatch: true,
    maxUnmarked: true,
    lagAlert: true,
    logger: true,
  } satisfies OptionNames<OutboxRelayOptions>);
  const window = { ...DEFAULT_WINDOW, ...options.window };
  if (
    !(
      Number.isInteger(window.min) &&
      Number.isInteger(window.max) &&
      Number.isInteger(window.initial) &&
      window.min >= 1 &&
      window.max >= window.min
    )
  ) {
    throw new ConfigError('window needs integers 1 <= min <= max, and an integer initial');
  }
  const retry = resolveRetryPolicy({ initialDelayMs: 200, maxDelayMs: 10_000, ...options.retry }, 'retry');
  // A zero batch marked nothing in a tight loop, a negative maxUnmarked paused publishing for ever.
  const targetRoundMs = options.targetRoundMs ?? 250;
  const idleDelayMs = options.idleDelayMs ?? 200;
  const markBatch = options.markBatch ?? 500;
  const maxUnmarked = options.maxUnmarked ?? 200_000;
  positiveMs('targetRoundMs', targetRoundMs);
  positiveMs('idleDelayMs', idleDelayMs);
  positiveMs('lagAlert.everyMs', options.lagAlert?.everyMs ?? 5_000);
  positiveInteger('markBatch', markBatch);
  positiveInteger('maxUnmarked', maxUnmarked);
  const logger = options.logger ?? defaultLogger;
  const { source, publisher } = options;

  const s = { published: 0, rounds: 0, failures: 0, maxInFlight: 0, inFlight: 0 };
  let size = Math.min(window.max, Math.max(window.min, window.initial));
  let lag: number | undefined;
  // Confirmed ids waiting to be marked, and marked ids a scan opened before their marking may
  // still return: both are skipped until the next pass starts.
  const toMark: string[] = [];
  const confirmed = new Set<string>();
  let markedThisPass: string[] = [];

  let controller: AbortController | undefined;
  let loop: Promise<void> | undefined;
  let passes = 0;
  let drainWaiters: { afterPass: number; resolve: () => void; reject: (error: Error) => void }[] = [];
  let relayStopped = false;
  const instruments = relayInstruments(() => (lag === undefined ? undefined : Math.max(0, lag)));

  // Slow start: after a failure (and at first) the window doubles per quick round until a round
  // is slow; from then on it grows by an eighth. A broker back from an outage is up to speed in
  // a few rounds, one that struggles is approached gently.
  let slowStart = true;
  const grow = (roundMs: number) => {
    if (roundMs > targetRoundMs) {
      slowStart = false;
      size = Math.max(window.min, Math.floor(size * 0.75));
    } else {
      size = Math.min(window.max, slowStart ? size * 2 : size + Math.max(1, Math.ceil(size / 8)));
    }
  };

  // After a failed round the oldest unconfirmed entry goes alone until a round is confirmed: an
  // entry the broker refuses for ever is retried by itself, and the entries behind it are not
  // sent again with it at every retry (only the failed round itself could carry them past it).
  let solo = false;
  /** The round being published: what a failure's log line names. */
  let current: readonly OutboxEntry[] = [];

  const publishRound = async (round: OutboxEntry[]) => {
    const messages = round.flatMap((e) => e.messages);
    s.inFlight = messages.length;
    s.maxInFlight = Math.max(s.maxInFlight, messages.length);
    current = round;
    const started = performance.now();
    const traced = traceRound(messages);
    try {
      await publisher.publish(traced.messages);
      traced.end();
    } catch (error) {
      traced.end(error);
      throw error;
    } finally {
      s.inFlight = 0;
    }
    solo = false;
    current = [];
    grow(performance.now() - started);
    s.rounds++;
    s.published += messages.length;
    instruments.published.add(messages.length);
    for (const e of round) {
      confirmed.add(e.id);
      toMark.push(e.id);
    }
  };

  /** One pass: rounds of at most `size` messages, each read while the previous one publishes. */
  const pass = async (signal: AbortSignal): Promise<number> => {
    for (const id of markedThisPass) confirmed.delete(id);
    markedThisPass = [];
    const entries = source.scan()[Symbol.asyncIterator]();
    let carry: OutboxEntry | undefined;
    let done = false;
    const nextRound = async (): Promise<OutboxEntry[]> => {
      const round: OutboxEntry[] = [];
      let count = 0;
      while (!done) {
        const entry = carry ?? (await entries.next().then((r) => (r.done ? undefined : r.value)));
        carry = undefined;
        if (entry === undefined) {
          done = true;
          break;
        }
        if (confirmed.has(entry.id)) continue;
        if (entry.messages.length === 0) {
          confirmed.add(entry.id);
          toMark.push(entry.id);
          continue;
        }
        if (count > 0 && (solo || count + entry.messages.length > size)) {
          carry = entry;
          break;
        }
        round.push(entry);
        count += entry.messages.length;
      }
      return round;
    };
    let sent = 0;
    try {
      let round = await nextRound();
      while (round.length > 0 && !signal.aborted) {
        while (toMark.length > maxUnmarked && !signal.aborted) await pause(50, signal);
        // Stopped while it waited: the round is for the next start.
        if (signal.aborted) break;
        const reading = nextRound();
        // An unhandled rejection of the read-ahead must not escape if the publish fails first.
        reading.catch(() => {});
        await publishRound(round);
        sent += round.length;
        round = await reading;
      }
    } finally {
      await entries.return?.();
    }
    return sent;
  };

  const markLoop = async (signal: AbortSignal, finished: () => boolean) => {
    let failures = 0;
    while (!(finished() && toMark.length === 0)) {
      if (toMark.length === 0) {
        await pause(20);
        continue;
      }
      const ids = toMark.slice(0, markBatch);
      try {
        await source.markPublished(ids);
        toMark.splice(0, ids.length);
        markedThisPass.push(...ids);
        failures = 0;
      } catch (error) {
        failures++;
        logger.warn('outbox relay: marking entries published failed; retrying', { error: String(error) });
        await pause(retryDelayMs(retry, failures));
        if (signal.aborted && failures > 3) return;
      }
    }
  };

  const lagLoop = async (signal: AbortSignal) => {
    const alert = options.lagAlert;
    let alerting = false;
    while (!signal.aborted) {
      try {
        lag = Math.max(0, (await source.countPending()) - toMark.length);
        if (alert && !alerting && lag > alert.threshold) {
          alerting = true;
          alert.onAlert(lag);
        } else if (alert && alerting && lag <= alert.threshold) {
          alerting = false;
          alert.onRecover?.(lag);
        }
      } catch (error) {
        logger.warn('outbox relay: counting pending entries failed', { error: String(error) });
      }
      await pause(alert?.everyMs ?? 5_000, signal);
    }
  };

  const run = async (signal: AbortSignal) => {
    let stopped = false;
    const marking = markLoop(signal, () => stopped);
    const counting = lagLoop(signal);
    let failures = 0;
    while (!signal.aborted) {
      const number = ++passes;
      try {
        const sent = await pass(signal);
        failures = 0;
        // A pass stopped before its first round (its round read, then left for the next start)
        // sent nothing too: only a pass that ran to its end says nothing is left.
        if (sent === 0 && toMark.length === 0 && !signal.aborted) {
          for (const w of drainWaiters) if (w.afterPass < number) w.resolve();
          drainWaiters = drainWaiters.filter((w) => w.afterPass >= number);
        }
        if (sent === 0) await pause(idleDelayMs, signal);
      } catch (error) {
        failures++;
        s.failures++;
        size = Math.max(window.min, Math.floor(size / 2));
        slowStart = true;
        solo = true;
        const delay = retryDelayMs(retry, failures);
        logger.warn('outbox relay: a round was not read or not confirmed; backing off', {
          error: String(error),
          delayMs: delay,
          window: size,
          // The oldest entry of the round (alone after the first failure): the one to look at
          // when the broker refuses it for good.
          ...(current.length > 0 ? { entry: current[0]?.id, entries: current.length } : {}),
        });
        await pause(delay, signal);
      }
    }
    stopped = true;
    await Promise.all([marking, counting]);
  };

  return {
    start() {
      // Running (and not stopping): nothing to do.
      if (loop && controller && !controller.signal.aborted) return;
      relayStopped = false;
      instruments.attach();
      const next = new AbortController();
      controller = next;
      // Started while a stop() was under way: the new run begins once the old one has ended
      // (its round confirmed and marked), rather than being dropped by that stop.
      const previous = loop;
      loop = (async () => {
        await previous;
        if (!next.signal.aborted) await run(next.signal);
      })();
    },
    async stop() {
      const stopping = loop;
      controller?.abort();
      await stopping;
      // A start() during this stop owns the relay now: its run goes on.
      if (loop !== stopping) return;
      loop = undefined;
      instruments.detach();
      // No pass will come to answer them: said rather than left pending for ever.
      relayStopped = true;
      const waiting = drainWaiters;
      drainWaiters = [];
      for (const w of waiting) w.reject(notDrained());
    },
    drained() {
      if (relayStopped) return Promise.reject(notDrained());
      // Only a pass that starts after this call can say nothing written before it is left.
      return new Promise((resolve, reject) => drainWaiters.push({ afterPass: passes, resolve, reject }));
    },
    stats: () => ({ ...s, window: size, unmarked: toMark.length, lag }),
  };
}

function relayInstruments(lag: () => number | undefined): {
  published: Counter;
  attach(): void;
  detach(): void;
} {
  const published = counter('exactly_once.outbox.published', {
    description: 'Outbox messages confirmed by the broker',
  });
  const gauge: ObservableGauge = observableGauge('exactly_once.outbox.lag', {
    description: 'Outbox entries not yet published',
  });
  const observe = (result: { observe(value: number): void }) => {
    const value = lag();
    if (value !== undefined) result.observe(value);
  };
  // Observed while the relay runs: stop() takes the callback off, a start() after it puts it back.
  let attached = false;
  return {
    published,
    attach: () => {
      if (!attached) gauge.addCallback(observe);
      attached = true;
    },
    detach: () => {
      if (attached) gauge.removeCallback(observe);
      attached = false;
    },
  };
}

/** What `drained()` rejects with once the relay has stopped. */
function notDrained(): ClosedError {
  return new ClosedError(
    'outbox relay',
    'the outbox relay stopped before a pass found nothing left to publish',
  );
}

function positiveInteger(name: string, value: number): void {
  if (!(Number.isInteger(value) && value > 0))
    throw new ConfigError(`${name} must be an integer > 0 (got ${value})`);
}
