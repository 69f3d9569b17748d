/**
 * The ack-last pipeline. For one delivery:
 *
 *   decode/validate -> key -> process span -> begin
 *     duplicate -> publish unconfirmed outgoing -> markPublished -> ack
 *     busy      -> defer (no ack)
 *     mismatch / failed -> dead-letter
 *     acquired  -> handler under a heartbeat -> blob -> complete(result + outgoing)
 *                  -> publish (confirmed) -> markPublished -> ack
 *     handler error -> release + retry, or fail + dead-letter
 *
 * The pipeline only decides; the transport adapter settles the delivery as the returned
 * {@link Disposition} says, and settling is always the last step.
 */
import { type Context, propagation, type Span, SpanStatusCode } from '@opentelemetry/api';
import { TakeoverGate } from './alone.js';
import { createRunContext } from './context.js';
import {
  AttemptsExhaustedError,
  ClosedError,
  CorruptRecordError,
  DuplicatePayloadError,
  type ErrorInfo,
  type ExactlyOnceError,
  IdempotencyKeyReuseError,
  isRetryable,
  LeaseLostError,
  PartialBatchError,
  PreviouslyFailedError,
  RunTimeoutError,
  StoreUnavailableError,
  toErrorInfo,
} from './errors.js';
import {
  deadLetter,
  discardBlobs,
  failAndDeadLetter,
  giveBackCut,
  handleFailure,
  leaseLost,
  type RunBlobs,
  release,
  storeDown,
} from './failure.js';
import {
  handlerRun,
  ResultSourceFailure,
  recordHandlerDuration,
  startHandler,
  storeResult,
} from './handler-run.js';
import { createLeaseBoard } from './lease-keeper.js';
import { type ProcessorOptions, type ResolvedProcessorOptions, resolveProcessorOptions } from './options.js';
import {
  exhausted,
  giveBack,
  mayRun,
  NOT_RUN_DISPOSITION,
  notRun,
  passGate,
  releaseKept,
  reuseHeld,
  turnCame,
} from './ordered.js';
import type { Writable } from './own.js';
import { guardPayload, releasePayloadClaim } from './payload-guard.js';
import { isRequest, type Prepared, prepare, readableRequestId, unreadable } from './prepare.js';
import { finishCompleted, publishThenAck } from './publish.js';
import { createScrubber, noScrub, type Scrub, type Scrubber } from './redact.js';
import {
  ATTR_EO_ACTION,
  ATTR_EO_ATTEMPT,
  ATTR_EO_CONSUMER,
  ATTR_EO_FENCE,
  ATTR_EO_KEY,
  ATTR_EO_OUTCOME,
  ATTR_EO_REQUEST_ID,
  ATTR_MESSAGING_BODY_SIZE,
  ATTR_MESSAGING_DESTINATION_NAME,
  ATTR_MESSAGING_OPERATION_NAME,
  ATTR_MESSAGING_OPERATION_TYPE,
  ATTR_MESSAGING_SYSTEM,
  BAGGAGE_REQUEST_ID,
  KEY_ATTRIBUTES,
} from './semconv.js';
import {
  endPublishingRun,
  GroupTurn,
  type HeldLease,
  type OrderedGroup,
  PublishOrder,
  publishingRun,
  type RunUnderWay,
  type Shared,
  settleAll,
  type Turn,
} from './shared.js';
import type { Delivery, Disposition, Outcome } from './spi.js';
import { coalescing } from './store/coalesce.js';
import { withDeadline } from './store/deadline.js';
import { type StoreHealth, withHealth } from './store/health.js';
import {
  type BeginRequest,
  type BeginResult,
  type CompleteRequest,
  RecordState,
  type StoredResult,
} from './store/types.js';
import {
  inSpan,
  instrumentsFor,
  linkToRef,
  metricAttributes,
  recordError,
  scrubOf,
  spanRef,
  startProcessSpan,
  tracingEnabled,
  untraced,
  withContext,
  withScrub,
} from './tracing.js';
import { retryStoreWrite, settledWithin } from './wait.js';

export interface Processor {
  /**
   * Runs the pipeline for one delivery and says how to settle it. Never throws. `onRunning` is
   * called as its handler starts (never for a duplicate, a busy key or an invalid message).
   */
  process(delivery: Delivery, onRunning?: () => void): Promise<Disposition>;
  /**
   * Runs deliveries whose effects must happen in order (the records of a Kafka partition) with
   * their store round trips shared: every delivery begins at once (one batch call), but each
   * handler starts only once the one before it succeeded, failed permanently or needed no run.
   * Answers one promise per delivery, to be settled in order. After a delivery that will be
   * tried again (retry, or defer), the later ones are not run: they answer
   * `{ action: 'defer', outcome: 'not-run', delayMs: 0 }` and keep their leases for the next
   * call with them (see {@link OrderedRun.release}).
   */
  processInOrder(deliveries: readonly Delivery[], onRunning?: (index: number) => void): OrderedRun;
  /**
   * How the processed-store has been answering this process: feed `unavailableSince` to a
   * liveness probe (see the README's "Liveness").
   */
  storeHealth(): StoreHealth;
  /**
   * Settles once every lease this processor is giving back unrun (a released ordered group) has
   * been released, or failed to be. An adapter's `stop()` waits for it, so a store client closed
   * right after `stop()` does not cut those releases off (whoever fetches the records next would
   * find them busy until the leases ran out).
   */
  givenBack(): Promise<void>;
  /**
   * Aborts `ctx.signal` of every handler running now with `reason` (an adapter's `stop()` does
   * once its `timeoutMs` has passed). Their leases are kept until each handler ends; one that then
   * fails gives its key back uncounted (a shutdown is not the message's failure), so the
   * redelivered message runs at once instead of after the lease. From then on no handler starts:
   * a delivery begun meanwhile gives its key back unrun (the consumer is stopping). The signal's
   * reason is a `ClosedError` unless given. Answers how many were aborted.
   */
  abortRuns(reason?: Error): number;
  /**
   * Whether a worker may have died running this message: its key's record is IN_PROGRESS under a
   * lease nobody gave back (held, lapsed, or a takeover given back unrun). False for a key never
   * begun, given back (a stop, a retryable failure), completed or failed; true when the message
   * cannot be read or the store does not answer. One store read, no attempt counted: the RabbitMQ
   * adapter asks it of redelivered messages, to run only those alone.
   */
  lastRunMayHaveDied(delivery: Delivery): Promise<boolean>;
  readonly options: ResolvedProcessorOptions<unknown, unknown>;
}

/** The answer of {@link Processor.processInOrder}. */
export interface OrderedRun {
  /** One per delivery, in order. */
  readonly dispositions: Promise<Disposition>[];
  /**
   * Gives back the leases kept for this group's deliveries that were not run and that no later
   * `processInOrder` call took over (call it when the group is abandoned: revocation, stop).
   * Their next begin is a `retry`.
   */
  release(): Promise<void>;
}

/**
 * Creates the transport-independent pipeline. Adapters (`@exactly-once/rabbitmq`,
 * `@exactly-once/kafka`) call this; applications normally use their `createConsumer`.
 *
 * @example
 * ```ts
 * const processor = createProcessor({ consumer: 'billing', store, publisher, handler });
 * const disposition = await processor.process(delivery);
 * ```
 */
export function createProcessor<T = unknown, R = unknown>(options: ProcessorOptions<T, R>): Processor {
  return buildProcessor(options, {
    waitForOwnRuns: true,
    duringOutage: 'messages are kept unacked and tried again',
  });
}

/**
 * {@link createProcessor} with the choices the idempotent executor makes differently: a request
 * whose key this process is running is answered busy at once (a client gets "in progress"), where
 * a delivery waits for that run and is then a duplicate; and what a store outage's warning says
 * happens to the work meanwhile.
 */
export function buildProcessor<T, R>(
  options: ProcessorOptions<T, R>,
  choices: { readonly waitForOwnRuns: boolean; readonly duringOutage: string },
): Processor {
  const resolved = resolveProcessorOptions(options);
  // Concurrent runs share store round trips (see store/coalesce.ts); each call has a deadline,
  // and a missed deadline counts as an outage for storeHealth.
  const watched = withHealth(
    withDeadline(resolved.store, resolved.storeTimeoutMs, (name, args, answer) =>
      giveBackLateLeases(o, shared, name, args, answer),
    ),
    resolved.logger,
    choices.duringOutage,
  );
  const o: ResolvedProcessorOptions<T, R> = Object.freeze({
    ...resolved,
    store: coalescing(watched.store),
  });
  const shared: Shared = {
    waitForOwnRuns: choices.waitForOwnRuns,
    publishing: new Map(),
    leftUnpublished: new Map(),
    held: new Map(),
    givingBack: new Set(),
    leasesGoingBack: new Set(),
    gate: new TakeoverGate(),
    leases: createLeaseBoard({
      store: o.store,
      leaseMs: o.leaseMs,
      intervalMs: o.heartbeatMs,
      onError: (key, error) => {
        // An outage is logged by the store's health watch (once as it starts, then every 30 s);
        // a warning for each held lease at each retry would repeat it a prefetch window of times.
        const meta = { key, error: toErrorInfo(error) };
        if (error instanceof StoreUnavailableError) o.logger.debug('lease heartbeat failed', meta);
        else o.logger.warn('lease heartbeat failed', meta);
      },
      onStall: (blockedMs, keys) => {
        o.logger.warn(
          'event loop blocked past the lease of running handlers: their keys may have been taken over ' +
            '(CPU-bound work on the event loop, or the process paused: SIGSTOP, a VM pause; keep ' +
            'CPU-bound work off the event loop, or raise leaseMs)',
          { blockedMs, leaseMs: o.leaseMs, runs: keys.length, keys: keys.slice(0, 10) },
        );
      },
    }),
  };
  return {
    options: o as ResolvedProcessorOptions<unknown, unknown>,
    storeHealth: watched.health,
    givenBack: () => settleAll(shared.givingBack),
    abortRuns: (reason = new ClosedError('the consumer', 'the consumer stopped before this run ended')) =>
      shared.leases.cutAll(reason),
    async lastRunMayHaveDied(delivery) {
      try {
        const record = await o.store.get((await prepare(o, delivery)).storeKey);
        return record?.state === RecordState.InProgress && record.leaseUntil !== 0;
      } catch {
        return true;
      }
    },
    process: (delivery, onRunning) => processDelivery(o, delivery, shared, undefined, onRunning),
    processInOrder(deliveries, onRunning) {
      // Each delivery's `go`: a release tells every one waiting for its turn not to run (see
      // turnCame), without a race against `whenReleased` per delivery.
      const gos: ((proceed: boolean) => void)[] = [];
      let markReleased!: () => void;
      const whenReleased = new Promise<false>((resolve) => {
        markReleased = () => {
          resolve(false);
          for (const go of gos) go(false);
        };
      });
      const group: OrderedGroup = {
        kept: [],
        released: false,
        whenReleased,
        markReleased,
        stopped: false,
        behindExhausted: false,
        gaveWay: false,
        ended: [],
        acquired: new Map(),
        notRunning: deliveries.length,
        allRunning: undefined,
      };
      let previous = Promise.resolve(true);
      // Outgoing messages leave in the group's order: a record's publish waits for the ones before.
      const publishOrder = new PublishOrder();
      let unsettled = deliveries.length;
      if (unsettled > 0) shared.gate.groups.add(group);
      const dispositions = deliveries.map((delivery, index) => {
        let go!: (proceed: boolean) => void;
        const next = new Promise<boolean>((resolve) => {
          go = resolve;
        });
        gos.push(go);
        const turn = new GroupTurn(previous, go, group, index, publishOrder);
        previous = next;
        const disposition = processDelivery(o, delivery, shared, turn, onRunning && (() => onRunning(index)));
        // processDelivery never rejects: each ends, and the last one takes the group off the gate.
        group.ended.push(
          disposition.then(() => {
            turn.running();
            if (--unsettled === 0) shared.gate.groups.delete(group);
          }),
        );
        return disposition;
      });
      return { dispositions, release: () => releaseKept(o, shared, group) };
    },
  };
}

/** How long a stop, past its timeoutMs, waits for the runs it cut to give their keys back. */
export const GIVE_BACK_WAIT_MS = 2_000;

/**
 * Resolves once `runsSettled` has and every key `processor` is giving back went back (see
 * {@link Processor.givenBack}), or after `withinMs`: what a stop waits for after
 * {@link Processor.abortRuns} (a cut run gives its key back before its run settles), so that a
 * store closed right after the stop does not cut the give-backs off, and the next consumer does not
 * find those keys busy. Bounded: a handler deaf to its signal keeps its lease. Answers whether all
 * was done in time.
 */
export function keysGivenBack(
  processor: Pick<Processor, 'givenBack'>,
  runsSettled: Promise<unknown>,
  withinMs = GIVE_BACK_WAIT_MS,
): Promise<boolean> {
  return settledWithin([runsSettled.then(() => processor.givenBack())], withinMs);
}

/**
 * A begin abandoned at `storeTimeoutMs` whose answer came back after all (the store was slow, or
 * the reply was on its way as the deadline passed): the leases it took are held by nobody, and
 * would leave their keys busy for a lease and then be taken over. They are given back unrun.
 */
function giveBackLateLeases<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  shared: Shared,
  name: string,
  args: readonly unknown[],
  answer: { value: unknown } | { error: unknown },
): void {
  if (name !== 'begin' && name !== 'beginMany') return;
  const requests = (name === 'begin' ? [args[0]] : args[0]) as readonly BeginRequest[];
  const results =
    'value' in answer
      ? ((name === 'begin' ? [answer.value] : answer.value) as readonly (BeginResult | undefined)[])
      : answer.error instanceof PartialBatchError
        ? (answer.error.answers as readonly (BeginResult | undefined)[])
        : [];
  let given = 0;
  results.forEach((begun, i) => {
    const request = requests[i];
    if (begun?.status !== 'acquired' || request === undefined) return;
    given++;
    void giveBack(o, shared, request.key, begun);
  });
  if (given > 0) {
    o.logger.info('a begin answered after storeTimeoutMs had taken leases; they are given back', {
      leases: given,
    });
  }
}

async function processDelivery<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  delivery: Delivery,
  shared: Shared,
  turn: Turn | undefined,
  onRunning: (() => void) | undefined,
): Promise<Disposition> {
  const started = performance.now();
  // Without a tracer provider nothing records: no span, attributes or context switches at all.
  const traced = tracingEnabled();
  const { span, ctx: spanCtx } = traced
    ? startProcessSpan(o.spanKind, delivery.destination, delivery.headers, {
        [ATTR_MESSAGING_SYSTEM]: delivery.system,
        [ATTR_MESSAGING_DESTINATION_NAME]: delivery.destination,
        [ATTR_MESSAGING_OPERATION_TYPE]: 'process',
        [ATTR_MESSAGING_OPERATION_NAME]: 'process',
        [ATTR_MESSAGING_BODY_SIZE]: delivery.body.byteLength,
        [ATTR_EO_CONSUMER]: o.consumer,
        ...(o.recordKeys ? delivery.attributes : withoutKeys(delivery.attributes)),
      })
    : untraced();
  // Keys (known once the delivery is read) and quoted payload fragments leave error texts
  // before they reach spans; the run's child spans find the scrub on their context.
  const scrubber: Scrubber | undefined = o.recordKeys ? undefined : createScrubber(delivery.body);
  // The scrub function is made when something is reported (see scrubFor), not for each delivery.
  const ctx = scrubber && traced ? withScrub(spanCtx, scrubber.scrub) : spanCtx;
  let disposition: Disposition;
  try {
    disposition = await (traced
      ? withContext(ctx, () => run(o, delivery, span, ctx, shared, turn, onRunning, scrubber))
      : run(o, delivery, span, ctx, shared, turn, onRunning, scrubber));
  } catch (error) {
    // Only a bug gets here; never ack what we do not understand.
    const scrub = scrubFor(scrubber);
    recordError(span, error, scrub);
    const info = toErrorInfo(error);
    o.logger.error('unexpected pipeline error; message will be redelivered', {
      error: { ...info, message: scrub(info.message) },
    });
    disposition = { action: 'defer', outcome: 'store-unavailable', delayMs: 1000, error: toErrorInfo(error) };
  } finally {
    // Every path says whether the next delivery may run; the first word counts, so this is a
    // safety net for paths that said nothing.
    turn?.go(false);
  }
  if (turn && (disposition.outcome === 'store-unavailable' || disposition.outcome === 'lease-lost')) {
    turn.group.stopped = true;
  }
  // A deferred delivery may still have messages to publish (on its redelivery): the later
  // deliveries' messages wait for them.
  turn?.published(disposition.action !== 'defer');
  if (span.isRecording()) {
    span.setAttribute(ATTR_EO_OUTCOME, disposition.outcome);
    span.setAttribute(ATTR_EO_ACTION, disposition.action);
    const error = spanError(disposition);
    if (error)
      span.setStatus({
        code: SpanStatusCode.ERROR,
        message: scrubFor(scrubber)(`${error.name}: ${error.message}`),
      });
  }
  span.end();
  // A deferral's error only goes to logs and metrics (no copy carries it): keep keys out of it.
  if (scrubber && disposition.action === 'defer' && disposition.error) {
    disposition = {
      ...disposition,
      error: { ...disposition.error, message: scrubber.scrub(disposition.error.message) },
    };
  }
  if (disposition.action === 'dead-letter') {
    // The message will not be processed: say so where operators look, not only in the letter.
    const { error, attempts } = disposition.reason;
    // Logged as decided: the adapter's publish of the letter comes next (and is logged apart when
    // the broker refuses it; the message then comes back and is decided again). An executor's
    // call is not dead-lettered: its caller gets the error.
    o.logger.warn(isRequest(delivery) ? 'refusing request' : 'dead-lettering message', {
      ...loggedAs(o.consumer, delivery),
      outcome: disposition.outcome,
      attempts,
      error: { ...error, message: scrubFor(scrubber)(error.message) },
    });
  }
  if (disposition.action === 'defer' && disposition.outcome === 'lease-lost') {
    // Another run holds the key now (this one stalled, or the store did; the run that took it
    // over may be a later copy in this very process), or the store lost the record (a Redis
    // restarted without persistence): nothing of this run is recorded, and an effect it made
    // outside a step or a keyed call may happen twice.
    o.logger.warn('lease lost: the key was taken over or its record is gone; this run is not recorded', {
      ...loggedAs(o.consumer, delivery),
      error: disposition.error,
    });
  }
  const attrs = metricAttributes(o.consumer, disposition.outcome, disposition.action);
  const m = instrumentsFor();
  m.deliveries.add(1, attrs);
  m.processDuration.record((performance.now() - started) / 1000, attrs);
  return disposition;
}

/** What keeps keys and payload text out of a report of this delivery (nothing with recordKeys). */
function scrubFor(scrubber: Scrubber | undefined): Scrub {
  return scrubber?.scrub ?? noScrub;
}

/** A failure of the message, or of the store under it (deferred: an outage is still an error). */
/**
 * What a warning about a delivery names it by: its consumer, destination and request id as sent
 * (x-request-id), like the takeover's line: what its letter, trace and effects are found by (the
 * key only with recordKeys).
 */
function loggedAs(consumer: string, delivery: Delivery): Record<string, string> {
  const requestId = readableRequestId(delivery);
  return {
    consumer,
    destination: delivery.destination,
    ...(requestId === undefined ? {} : { requestId }),
  };
}

function spanError(d: Disposition): ErrorInfo | undefined {
  if (d.action === 'dead-letter') return d.reason.error;
  if (d.action === 'retry') return d.error;
  if (d.action === 'defer' && d.outcome === 'store-unavailable') return d.error;
  return undefined;
}

async function run<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  delivery: Delivery,
  span: Span,
  ctx: Context,
  shared: Shared,
  turn: Turn | undefined,
  onRunning: (() => void) | undefined,
  scrubber: Scrubber | undefined,
): Promise<Disposition> {
  let prepared: Prepared<T>;
  try {
    const reading = prepare(o, delivery);
    prepared = reading instanceof Promise ? await reading : reading;
  } catch (error) {
    const reason = unreadable(error);
    if (span.isRecording()) {
      const requestId = readableRequestId(delivery);
      if (requestId !== undefined) span.setAttribute(ATTR_EO_REQUEST_ID, requestId);
    }
    await passOn(turn);
    return deadLetter(o, delivery, 'invalid', reason, 0);
  }
  const { storeKey, requestId } = prepared;
  scrubber?.add(prepared.key, storeKey);
  let runCtx = ctx;
  if (span.isRecording()) {
    if (o.recordKeys) span.setAttribute(ATTR_EO_KEY, prepared.key);
    // The request id is kept: it is the id a trace is found by, and it travels in headers and
    // baggage to every service anyway (a first hop's is its key; see README, Tracing).
    span.setAttribute(ATTR_EO_REQUEST_ID, requestId);
    // Downstream spans and messages find the request by its id through baggage.
    const bag = (propagation.getBaggage(ctx) ?? propagation.createBaggage()).setEntry(BAGGAGE_REQUEST_ID, {
      value: requestId,
    });
    runCtx = propagation.setBaggage(ctx, bag);
  }

  if (o.payloadGuard) {
    // Same payload under another key within the window (a new key per retry): flag or refuse.
    let reuse: ExactlyOnceError | undefined;
    try {
      reuse = await guardPayload({
        guard: o.payloadGuard,
        store: o.store,
        namespace: o.namespace,
        consumer: o.consumer,
        key: prepared.key,
        storeKey,
        fingerprint: prepared.fingerprint,
        span,
        logger: o.logger,
        recordKeys: o.recordKeys,
      });
    } catch (error) {
      return beforeRunFailed(o, delivery, turn, storeKey, error);
    }
    if (reuse) {
      // Its message quotes the other key too: keep that out of spans and logs as well.
      if (reuse instanceof DuplicatePayloadError) scrubber?.add(reuse.firstKey);
      await passOn(turn);
      return deadLetter(o, delivery, 'payload-reuse', reuse, 0);
    }
  }

  const closed = shared.gate.whenOpen();
  if (closed !== undefined) {
    // A takeover runs alone: no begin until it ends (see alone.ts), unless the group is given up.
    await (turn === undefined ? closed : Promise.race([closed, turn.group.whenReleased]));
    if (turn?.group.released) return notRun(turn);
  }
  // This process runs the key already (a Kafka record fetched again, a message redelivered, while
  // that run still tries its completion through an outage): its end first. Begun now, once the
  // store is back, the copy would find the lease run out, take the key over and run the handler
  // again while the completion waits for its next try. (Another process's copy still can: README.)
  const own = localRunOf(shared, storeKey, turn);
  if (own !== undefined) await settledWithin([own], o.maxRunMs);
  let begun: BeginResult;
  // When (monotonic clock) the lease in hand was set in the store, or a little earlier: a lease
  // kept while earlier deliveries were retried is dated from its begin or last extension, never
  // from when it was kept or reused (that let a handler start under a lease already passed).
  let leaseSince: number;
  try {
    let waited: Promise<void> | undefined;
    for (let tries = 0; ; tries++) {
      // A lease kept for this key by an earlier call of its group (see reuseHeld) is used again.
      const reused =
        shared.held.size > 0 ? await reuseHeld(o, shared, storeKey, prepared.fingerprint) : undefined;
      if (reused === undefined) {
        leaseSince = performance.now();
        begun = await beginNew(o, storeKey, prepared.fingerprint, span, runCtx);
      } else {
        leaseSince = reused.since;
        begun = reused.begun;
      }
      // Busy because this process runs the key itself (the same message twice in a row, as a
      // retried send makes, or twice in one prefetch window): wait for that run rather than poll
      // the store, then ask again; the answer is then a duplicate. Each run is waited for once,
      // three at most.
      if (begun.status !== 'busy' || tries === 3) break;
      const local = localRunOf(shared, storeKey, turn);
      if (local === undefined || local === waited) break;
      waited = local;
      await local;
    }
  } catch (error) {
    return beforeRunFailed(o, delivery, turn, storeKey, error);
  }
  if (begun.status === 'acquired' && turn) turn.group.acquired.set(storeKey, turn.index);
  if (begun.status === 'acquired' && turn && !mayRun(turn, await turnCame(turn))) {
    if (turn.group.released) {
      // The group was given up while this begin was on its way.
      await giveBack(o, shared, storeKey, begun);
      return notRun(turn);
    }
    // An earlier delivery of the group will be tried again: this one waits its turn, lease kept.
    const held: HeldLease = {
      key: storeKey,
      begun,
      fingerprint: prepared.fingerprint,
      deadline: leaseSince + o.leaseMs,
    };
    shared.held.set(storeKey, held);
    turn.group.kept.push(held);
    return NOT_RUN_DISPOSITION;
  }
  if (begun.status !== 'acquired') {
    if (begun.status !== 'busy') await passOn(turn);
    switch (begun.status) {
      case 'duplicate': {
        span.addLinks(linkToRef(begun.record.traceId));
        return finishCompleted(o, runCtx, delivery, storeKey, begun, shared, turn);
      }
      case 'busy':
        // Poll well before the other lease ends: the other worker usually finishes early.
        return {
          action: 'defer',
          outcome: 'busy',
          delayMs: Math.max(50, Math.min(begun.retryAfterMs, Math.ceil(o.leaseMs / 10))),
        };
      case 'mismatch':
        // The guard's claim of this payload, if this copy made it, must not outlive the refusal.
        if (o.payloadGuard) {
          await releasePayloadClaim({
            store: o.store,
            namespace: o.namespace,
            consumer: o.consumer,
            key: prepared.key,
            fingerprint: prepared.fingerprint,
            logger: o.logger,
          });
        }
        return deadLetter(
          o,
          delivery,
          'mismatch',
          new IdempotencyKeyReuseError({
            key: prepared.key,
            storedFingerprint: begun.record.fingerprint,
            receivedFingerprint: prepared.fingerprint,
          }),
          begun.record.attempt,
        );
      case 'failed':
        return deadLetter(
          o,
          delivery,
          'failed',
          new PreviouslyFailedError(prepared.key, begun.record.error),
          begun.record.attempt,
        );
    }
  }
  // From here the run is under way in this processor: copies of its key that arrive wait for it
  // (localRunOf) instead of polling the store, and do not publish its outgoing messages beside it
  // (finishCompleted), also while it waits for an earlier run or renews a late lease.
  const earlier = begun.kind === 'takeover' ? shared.publishing.get(storeKey) : undefined;
  const marker = publishingRun(shared, storeKey);
  let leave: (() => void) | undefined;
  try {
    // Not awaited when the run may start at once: the run is registered above before anything
    // else happens, so a copy's busy answer finds it.
    const passing = passGate(o, shared, turn, storeKey, begun);
    leave = typeof passing === 'function' ? passing : await passing;
    if (leave === undefined) return notRun(turn);
    if (earlier !== undefined) {
      // Taken over from a run of this very process that is still going (its lease ran out under
      // a slow store, or it was given up at maxRunMs, and its handler did not stop): start after
      // it, not beside it, so that what it did is there to see (reconcile); for maxRunMs at most.
      await settledWithin([earlier.wait()], o.maxRunMs);
    }
    if (performance.now() - leaseSince > o.leaseMs / 2) {
      // A long wait for its turn, or a begin answered late (a slow store), used up half the lease:
      // renew it before the handler starts. A lease that ran out meanwhile may have been taken
      // over (by another worker, or by a copy of the message in this one), and the handler must
      // not start beside the run that took it.
      try {
        const extendedAt = performance.now();
        if ((await o.store.extend(storeKey, begun.fence, o.leaseMs)) === 'lost') {
          turn?.go(false);
          return leaseLost(storeKey, begun.fence);
        }
        leaseSince = extendedAt;
      } catch (error) {
        turn?.go(false);
        // Unrun, the lease is given back (it lands once the store answers again), not left to
        // run out and come back as a takeover.
        void giveBack(o, shared, storeKey, begun);
        return storeDown(o, error, storeKey);
      }
    }
    if (shared.leases.stopping !== undefined) {
      // Begun while the consumer stopped (abortRuns): the handler would start after stop() with
      // a signal nobody aborts, and its writes would go on against a store about to be closed.
      // The key goes back unrun; the broker delivers the message again.
      turn?.go(false);
      await giveBack(o, shared, storeKey, begun);
      return notRun(turn);
    }
    turn?.running();
    onRunning?.();
    return await runAcquired(o, delivery, span, runCtx, prepared, begun, leaseSince, shared, turn, marker);
  } finally {
    endPublishingRun(shared, storeKey, marker, leave);
  }
}

/**
 * A begin of `storeKey` for this run. A module function, not a closure of the run: nothing is
 * made for it but the request. Untraced (most runs): no span, nor a closure for one.
 */
function beginNew<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  storeKey: string,
  fingerprint: string,
  span: Span,
  runCtx: Context,
): Promise<BeginResult> {
  const request: Writable<BeginRequest> = {
    key: storeKey,
    fingerprint,
    owner: o.ownerId,
    leaseMs: o.leaseMs,
    // The deadline (store/deadline.ts) abandons it then: a store that can refuses it later.
    abandonAfterMs: o.storeTimeoutMs,
  };
  // Absent rather than undefined, as stores have always seen it (and set, not spread: cheaper).
  const traceId = spanRef(span);
  if (traceId !== undefined) request.traceId = traceId;
  return span.isRecording()
    ? inSpan('exactly-once begin', runCtx, {}, () => o.store.begin(request))
    : o.store.begin(request);
}

/**
 * The end of this processor's own run of `storeKey`, if one is under way that a delivery about to
 * begin, or answered busy, may wait for without a cycle: a run past its turn (it waits for no other delivery), or in an ordered
 * group an earlier delivery of the same group (deliveries of a group wait only for earlier ones).
 */
function localRunOf(shared: Shared, storeKey: string, turn: Turn | undefined): Promise<void> | undefined {
  if (!shared.waitForOwnRuns) return undefined;
  const index = turn?.group.acquired.get(storeKey);
  if (turn !== undefined && index !== undefined && index < turn.index) return turn.group.ended[index];
  return shared.publishing.get(storeKey)?.wait();
}

async function runAcquired<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  delivery: Delivery,
  span: Span,
  runCtx: Context,
  prepared: Prepared<T>,
  begun: Extract<BeginResult, { status: 'acquired' }>,
  leaseSince: number,
  shared: Shared,
  turn: Turn | undefined,
  marker: RunUnderWay,
): Promise<Disposition> {
  const { storeKey, requestId } = prepared;
  if (span.isRecording()) {
    span.setAttribute(ATTR_EO_ATTEMPT, begun.attempt);
    span.setAttribute(ATTR_EO_FENCE, begun.fence);
  }
  const takeover = begun.kind === 'takeover';
  const outcome: Outcome = takeover ? 'takeover' : 'acquired';
  const { fence, attempt } = begun;

  // A message that keeps killing its worker comes back as takeovers; stop it here (see exhausted).
  if (exhausted(o, begun, turn)) {
    if (turn && takeover) turn.group.behindExhausted = true;
    turn?.go(true);
    return failAndDeadLetter(
      o,
      delivery,
      storeKey,
      fence,
      new AttemptsExhaustedError({
        attempts: attempt - 1,
        cause:
          'none of them finished (each time the worker holding it died, whether or not it had started the handler, stalled past its lease, or ran a handler past maxRunMs that never returned)',
      }),
      attempt - 1,
      // No run: tried while the lease taken for it lasts.
      (write) => retryStoreWrite(write, { deadline: leaseSince + o.leaseMs }),
    );
  }

  if (takeover) {
    // The only trace in the logs of a worker that died or stalled mid-run (after a SIGKILL the
    // dead process logged nothing). The store cannot tell whether that run had started its
    // handler (a batch begins keys before their handlers start): the line says both.
    o.logger.warn(
      'taking over a key whose last holder died, stalled or could not reach the store past its lease; its handler runs (again, if that run had started it)',
      {
        key: storeKey,
        // Always logged, like the span's: what an operator finds the run's trace and letters by.
        requestId,
        // Where the message is (partition and offset, delivery tag), without key-bearing ones.
        destination: delivery.destination,
        message: o.recordKeys ? delivery.attributes : withoutKeys(delivery.attributes),
        attempt,
        journaledSteps: Object.keys(begun.steps).length,
      },
    );
  }
  const handled = handlerRun<R>();
  const keeper = shared.leases.hold({
    key: storeKey,
    fence,
    leaseSince,
    maxRunMs: o.maxRunMs,
    onTimeout: () => {
      const error = new RunTimeoutError({ maxRunMs: o.maxRunMs });
      keeper.abort(error);
      handled.settle({ ok: false, error });
    },
  });
  const state = createRunContext({
    key: prepared.key,
    storeKey,
    requestId,
    attempt,
    fence,
    kind: begun.kind,
    namespace: o.namespace,
    consumer: o.consumer,
    delivery,
    lease: keeper,
    span,
    otelContext: runCtx,
    steps: begun.steps,
    store: o.store,
    blobStore: o.blobs,
    canPublish: o.publisher !== undefined,
    onStepEvent: o.onStepEvent,
    logger: o.logger,
  });

  const started = startHandler(o, prepared.payload, state.ctx, runCtx, handled);
  const ran = await handled.outcome;
  recordHandlerDuration(o.consumer, started);
  state.close();
  // The next delivery of an ordered group may run unless this one will be tried again; after a
  // handler given up at maxRunMs (still running), only once it has ended (see handleFailure).
  const proceed =
    !keeper.lost &&
    (ran.ok ||
      (!keeper.cut &&
        !(ran.error instanceof LeaseLostError) &&
        (!isRetryable(ran.error) || attempt >= o.retry.maxAttempts)));
  const givenUp = !ran.ok && ran.error instanceof RunTimeoutError;
  if (!givenUp) turn?.go(proceed);
  if (keeper.lost) {
    // A newer fence owns the key; whatever this run did must not be recorded or acked.
    await keeper.stop();
    await discardBlobs(o, state);
    return leaseLost(storeKey, fence);
  }
  if (!ran.ok && keeper.cut) {
    // Aborted by the consumer's stop (abortRuns): a shutdown, not the message's failure.
    await keeper.stop();
    recordError(span, ran.error, scrubOf(runCtx));
    // Given up at maxRunMs after the abort, the handler still runs: the key goes back once it
    // has ended, never while it runs (a redelivered copy would run beside it).
    const stillRunning = givenUp ? handled.ended.then(() => state.stepsRunning()) : undefined;
    if (stillRunning !== undefined) marker.outlivedBy(stillRunning, o.maxRunMs);
    return giveBackCut(o, shared, storeKey, begun, state, keeper.deadline, turn, stillRunning);
  }
  if (!ran.ok) {
    await keeper.stop();
    recordError(span, ran.error, scrubOf(runCtx));
    // Given up at maxRunMs, the handler is still running; a handler that failed may have left
    // steps running beside it: see handleFailure.
    const stillRunning = givenUp ? handled.ended.then(() => state.stepsRunning()) : state.stepsRunning();
    // A retry of the key in this process (a copy taking it over once the lease, no longer
    // heartbeated, ran out) then waits for it rather than run beside it.
    if (stillRunning !== undefined) marker.outlivedBy(stillRunning, o.maxRunMs);
    const d = await handleFailure(
      o,
      delivery,
      storeKey,
      fence,
      attempt,
      outcome,
      ran.error,
      state,
      keeper,
      stillRunning,
    );
    if (givenUp) turn?.go(proceed && d.action === 'dead-letter');
    return d;
  }

  // The heartbeat goes on while a large result uploads: a slow upload must not lose the lease.
  let stored: StoredResult | undefined;
  try {
    const storing = storeResult(o, runCtx, storeKey, ran.value, () => keeper.signal);
    stored = storing instanceof Promise ? await storing : storing;
  } catch (error) {
    await keeper.stop();
    // The upload was given up because a newer fence took the key over: nothing to record.
    if (keeper.lost) {
      await discardBlobs(o, state);
      return leaseLost(storeKey, fence);
    }
    // Given up because the consumer is stopping (abortRuns): a shutdown, not the message's
    // failure; the key goes back uncounted, as for a handler that failed on the abort.
    if (keeper.cut) {
      recordError(span, error instanceof ResultSourceFailure ? error.cause : error, scrubOf(runCtx));
      return giveBackCut(o, shared, storeKey, begun, state, keeper.deadline, turn);
    }
    if (error instanceof ResultSourceFailure) {
      // The handler's result stream failed (or cannot be stored): a failure of the handler.
      recordError(span, error.cause, scrubOf(runCtx));
      return handleFailure(o, delivery, storeKey, fence, attempt, outcome, error.cause, state, keeper);
    }
    // The run does not complete: its blobs go, but for those a journaled step names.
    await discardBlobs(o, state);
    await release(o, storeKey, fence, error);
    return { action: 'defer', outcome: 'store-unavailable', delayMs: 1000, error: toErrorInfo(error) };
  }
  const extending = keeper.stop();
  if (extending !== undefined) await extending;
  // The run's blobs and the result's, if a blob: deleted should the completion not land.
  const run: RunBlobs =
    stored?.kind === 'blob'
      ? { blobs: [...state.blobs, stored.pointer], isJournaled: (pointer) => state.isJournaled(pointer) }
      : state;
  if (keeper.lost) {
    await discardBlobs(o, run);
    return leaseLost(storeKey, fence);
  }

  let completed: 'ok' | 'lost';
  // A write that failed may still have landed, and a store answers the repeat of a landed
  // complete `ok` (see ProcessedStore.complete): so a failed one is tried again until the store
  // answers, past the lease's local end too, rather than left to a takeover that would run the
  // handler again (a Cluster slot in migration refuses a call for milliseconds, a busy server
  // for seconds, an outage for longer than a lease).
  let tries = 0;
  const request: Writable<CompleteRequest> = {
    key: storeKey,
    fence,
    outgoing: state.outgoing,
    retentionMs: o.retentionMs,
  };
  if (stored !== undefined) request.result = stored;
  const traceId = spanRef(span);
  if (traceId !== undefined) request.traceId = traceId;
  const complete = () => {
    tries++;
    return o.store.complete(request);
  };
  try {
    completed = await (span.isRecording()
      ? inSpan('exactly-once complete', runCtx, {}, () => keeper.writeUntilAnswered(complete))
      : keeper.writeUntilAnswered(complete));
  } catch (error) {
    if (!isRetryable(error)) {
      // The store refused the record itself (e.g. too large): the same write would fail again.
      await discardBlobs(o, run);
      return failAndDeadLetter(o, delivery, storeKey, fence, error, attempt, (write) =>
        keeper.writeUntilAnswered(write),
      );
    }
    // Unknown whether the write landed: keep the blobs, redeliver; the next run resolves it.
    return storeDown(o, error, storeKey);
  }
  // Anything but an acknowledged write (a store breaking its contract) is not a completion.
  if (completed !== 'ok') {
    // After a failed try, a store that answers a landed write's repeat `lost` (a custom one of
    // an earlier contract) may hold a record naming these blobs: keep them.
    if (tries === 1) await discardBlobs(o, run);
    return leaseLost(storeKey, fence);
  }
  return publishThenAck(o, runCtx, delivery, storeKey, fence, state.outgoing, outcome, stored, shared, turn);
}

/**
 * A store call before the run (the payload guard's claim, the begin) that failed: a damaged
 * record is the store's answer for this message alone, dead-lettered unrun (nothing can say
 * whether it ran; see CorruptRecordError); anything else, an outage.
 */
async function beforeRunFailed<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  delivery: Delivery,
  turn: Turn | undefined,
  storeKey: string,
  error: unknown,
): Promise<Disposition> {
  if (!(error instanceof CorruptRecordError)) return storeDown(o, error, storeKey);
  await passOn(turn);
  return deadLetter(o, delivery, 'corrupt-record', error, 0);
}

/** A delivery needing no handler run lets the next one go as soon as the one before it did. */
async function passOn(turn: Turn | undefined): Promise<void> {
  if (turn !== undefined) turn.go(await turn.previous);
}

/** Delivery attributes without the ones that carry keys (message id, Kafka message key). */
function withoutKeys(attributes: Delivery['attributes']): Delivery['attributes'] {
  if (attributes === undefined) return undefined;
  const kept: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(attributes)) {
    if (!KEY_ATTRIBUTES.includes(name)) kept[name] = value;
  }
  return kept as Delivery['attributes'];
}
