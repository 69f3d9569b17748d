/**
 * Journaled steps (`ctx.step`): replay, in-doubt reconciling, in-process retries, give-up and
 * alerts. The run context (context.ts) owns naming and the blob journal; this module runs one step.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import type { Span } from '@opentelemetry/api';
import { decodeResult, encodeResult } from './codec.js';
import {
  ConfigError,
  describeThrown,
  isRetryable,
  LeaseLostError,
  PermanentError,
  toErrorInfo,
} from './errors.js';
import type { Logger } from './logger.js';
import { delayAfterFailure, type RetryPolicyOptions, resolveRetryPolicy } from './retry.js';
import { ATTR_EO_STEP_REPLAYED } from './semconv.js';
import type { ProcessedStore, StepRecord } from './store/types.js';
import { instrumentsFor } from './tracing.js';
import { sleep } from './wait.js';

/** What `reconcile` is told about a step an earlier attempt started and never finished. */
export interface StepReconcileInfo {
  /** The step's name. */
  readonly name: string;
  /** `ctx.keyFor(name)`: the idempotency key the step's effect was made with, to look it up by. */
  readonly key: string;
  /** The message's idempotency key. */
  readonly messageKey: string;
  /** This run's attempt (the one that found the step in doubt). */
  readonly attempt: number;
  /** Store time (ms) when the earlier attempt journaled that the step started. */
  readonly startedAt: number;
  /** Aborts when this run's lease is lost. */
  readonly signal: AbortSignal;
}

/** `reconcile`'s answer: the effect happened (`value` becomes the step's result), or it did not. */
export type StepReconcileResult<S> = { readonly done: true; readonly value: S } | { readonly done: false };

export interface StepOptions<S = unknown> {
  /** In-process retries of the step's function before it gives up. @defaultValue one try */
  retry?: RetryPolicyOptions;
  /**
   * Makes the step's effect checkable after a crash. The step journals that it started (one
   * store write) before `fn` runs; a later attempt that finds it started but not done calls
   * `reconcile` instead of running `fn` blind: `{ done: true, value }` journals `value` as the
   * step's result, `{ done: false }` runs `fn`. Without `reconcile` nothing is written before `fn`,
   * and an in-doubt step simply runs `fn` again (make it idempotent with `ctx.keyFor(name)`).
   * With `retry`, `reconcile` is also asked before each in-process retry (the failed call may
   * have reached the provider); an error it throws there counts as one more failure of the step.
   * An error thrown by `reconcile` for an earlier attempt's start reaches the handler, and `fn`
   * does not run.
   */
  // NoInfer: the step's type comes from `fn`; reconcile's `{ done: false }` must not widen it.
  reconcile?: (
    info: StepReconcileInfo,
  ) => Promise<StepReconcileResult<NoInfer<S>>> | StepReconcileResult<NoInfer<S>>;
  /**
   * When `fn` still fails after its retries (or fails with a non-retryable error): `fail` passes
   * the error to the handler; `continue` resolves the step with `fallback`, journaled, so later
   * attempts replay it and never run `fn` again. A lost lease always fails. @defaultValue 'fail'
   */
  onGiveUp?: 'fail' | 'continue';
  /** The value a step that gave up (`onGiveUp: 'continue'`) resolves with. @defaultValue undefined */
  fallback?: S;
  /**
   * After this many failures of `fn` within one run, a `step.alert` event and the
   * `exactly_once.step.alerts` counter fire, once per run; the retries go on.
   */
  alertAfter?: number;
}

/** Passed to the processor's `onStepEvent`. */
export interface StepEvent {
  /** `give-up`: the step resolved with its fallback; `alert`: `fn` failed `alertAfter` times. */
  readonly type: 'give-up' | 'alert';
  readonly consumer: string;
  /** The message's idempotency key. */
  readonly key: string;
  readonly step: string;
  /** The run's attempt. */
  readonly attempt: number;
  /** Failures of `fn` in this run so far. */
  readonly failures: number;
  /** The last error of `fn`. */
  readonly error: unknown;
}

export interface StepRunArgs {
  readonly storeKey: string;
  readonly messageKey: string;
  readonly consumer: string;
  readonly attempt: number;
  readonly fence: number;
  readonly store: ProcessedStore;
  readonly signal: () => AbortSignal;
  /** The journal write, tried until the store answers (see `LeaseKeeper.writeUntilAnswered`). */
  readonly writeUntilAnswered: <A>(write: () => Promise<A>) => Promise<A>;
  /** Rejects with `LeaseLostError` unless the lease is still this run's (see `LeaseKeeper.confirm`). */
  readonly confirmLease: () => Promise<void>;
  readonly keyFor: (name: string) => string;
  readonly onStepEvent: ((event: StepEvent) => void) | undefined;
  readonly logger: Logger | undefined;
  /** Throws once the run is over. */
  readonly open: () => void;
  /**
   * Records bytes that may be journaled before the write; the returned function takes them back
   * when the store said `lost` (see `RunState.isJournaled`).
   */
  readonly journal: (encoded: Uint8Array) => () => void;
}

/** The stored result of a done step: JSON, or empty bytes for `undefined`. */
export function decodeStepResult<S>(result: Uint8Array): S {
  return (result.length === 0 ? undefined : decodeResult(result)) as S;
}

/** Runs one step (its span already open). `journaled` is what earlier attempts left. */
export async function runStep<S>(
  args: StepRunArgs,
  name: string,
  fn: (signal: AbortSignal) => Promise<S> | S,
  options: StepOptions<S>,
  journaled: StepRecord | undefined,
  span: Span,
): Promise<S> {
  if (journaled?.state === 'done') {
    span.setAttribute(ATTR_EO_STEP_REPLAYED, true);
    return decodeStepResult<S>(journaled.result);
  }
  span.setAttribute(ATTR_EO_STEP_REPLAYED, false);
  // An effect starts only under a lease this worker still holds: a process that was frozen past
  // its lease (a blocked event loop) would otherwise start it before its heartbeat noticed.
  await args.confirmLease();
  const { reconcile } = options;
  // Asked whenever the effect may have happened: a start an earlier attempt journaled, and before
  // each in-process retry (the failed call may have reached the provider).
  let inDoubt: ((startedAt: number) => Promise<StepReconcileResult<S>>) | undefined;
  let startedAt = 0;
  if (reconcile !== undefined) {
    inDoubt = (at) => askReconcile(args, name, reconcile, at, span);
    if (journaled?.state === 'started') {
      span.setAttribute('exactly_once.step.in_doubt', true);
      const answer = await inDoubt(journaled.at);
      if (answer.done) return save(args, name, answer.value, 'null');
      // Not done at the provider: run fn. Its started marker is already there.
      startedAt = journaled.at;
    } else {
      const mark = args.store.markStepStarted?.bind(args.store);
      if (mark === undefined) {
        throw new ConfigError(
          `step "${name}" has reconcile, but the store does not journal step starts (markStepStarted)`,
        );
      }
      args.open();
      // This worker's clock: the store answers no time with the mark.
      startedAt = Date.now();
      // Tried again while the store is unavailable, like the journal write: a refusal thrown out
      // of the step would count as the handler's failure, and a few of them (a store's lock
      // errors) would fail the key without its effect ever having run.
      if ((await args.writeUntilAnswered(() => mark(args.storeKey, args.fence, name))) !== 'ok') {
        throw new LeaseLostError({ key: args.storeKey, fence: args.fence });
      }
    }
  }

  const ran = await runWithRetry(args, name, fn, options, inDoubt && (() => inDoubt(startedAt)));
  if (ran.ok) return save(args, name, ran.value, 'null');
  const { error, failures } = ran;
  // A misuse (ConfigError) is never given up on: the fallback would hide it.
  if (
    options.onGiveUp !== 'continue' ||
    args.signal().aborted ||
    error instanceof LeaseLostError ||
    error instanceof ConfigError
  )
    throw error;
  span.setAttribute('exactly_once.step.gave_up', true);
  instrumentsFor().stepGiveUps.add(1, { consumer: args.consumer, step: name });
  emit(args, { type: 'give-up', step: name, failures, error });
  return save(args, name, options.fallback as S, 'empty');
}

async function askReconcile<S>(
  args: StepRunArgs,
  name: string,
  reconcile: NonNullable<StepOptions<S>['reconcile']>,
  startedAt: number,
  span: Span,
): Promise<StepReconcileResult<S>> {
  const answer = await reconcile({
    name,
    key: args.keyFor(name),
    messageKey: args.messageKey,
    attempt: args.attempt,
    startedAt,
    signal: args.signal(),
  });
  // Not an answer: asking again would get the same, so it fails the message (not retried).
  if (typeof (answer as { done?: unknown } | undefined)?.done !== 'boolean') {
    throw new PermanentError(
      `step "${name}": reconcile must answer { done: true, value } or { done: false } (got ${describeThrown(answer)})`,
    );
  }
  span.setAttribute('exactly_once.step.reconciled', answer.done);
  return answer;
}

/**
 * Journals `value` as the step's result and returns what a replay would return. `undefined` is
 * journaled as JSON `null` for a step's own result (as it always was), and as empty bytes for a
 * give-up's fallback, which then resolves `undefined` on replay too.
 */
async function save<S>(args: StepRunArgs, name: string, value: S, absent: 'null' | 'empty'): Promise<S> {
  const encoded =
    encodeResult(value, `the result of step "${name}"`) ??
    (absent === 'null' ? (encodeResult(null) as Uint8Array) : new Uint8Array(0));
  // No `open()` check: a step that started while the run was open journals its result even when
  // the run has ended meanwhile (given up at maxRunMs, or the handler failed beside it). The write
  // is fenced, and the lease is released only after running steps end, so a retry replays the
  // step instead of running its effect again.
  // Counted as journaled before the write: if the answer never arrives, it may have landed.
  const forget = args.journal(encoded);
  let tries = 0;
  const saved = await saveWithRetries(args, name, encoded, () => tries++);
  if (saved !== 'ok') {
    // Taken back only when the one write made was refused: after a failed try, the write may have
    // landed before another worker took the key over, which then replays it (its blobs included).
    if (tries === 1) forget();
    throw new LeaseLostError({ key: args.storeKey, fence: args.fence });
  }
  return decodeStepResult<S>(encoded);
}

/**
 * The journal write, tried again while the store is unavailable, until it answers: the effect has
 * happened, and a write given up on would run it again on the next attempt. Writing a step twice
 * is harmless (the last write is its result).
 */
function saveWithRetries(args: StepRunArgs, name: string, encoded: Uint8Array, onTry: () => void) {
  return args.writeUntilAnswered(() => {
    onTry();
    return args.store.saveStep(args.storeKey, args.fence, name, encoded);
  });
}

type Ran<S> = { ok: true; value: S } | { ok: false; error: unknown; failures: number };

async function runWithRetry<S>(
  args: StepRunArgs,
  name: string,
  fn: (signal: AbortSignal) => Promise<S> | S,
  options: StepOptions<S>,
  inDoubt: (() => Promise<StepReconcileResult<S>>) | undefined,
): Promise<Ran<S>> {
  const policy = resolveRetryPolicy(options.retry ?? { maxAttempts: 1 }, 'step.retry');
  const { alertAfter } = options;
  if (alertAfter !== undefined && !(Number.isInteger(alertAfter) && alertAfter >= 1)) {
    throw new ConfigError(`step.alertAfter must be an integer >= 1 (got ${alertAfter})`);
  }
  const signal = args.signal();
  for (let failures = 0; ; ) {
    signal.throwIfAborted();
    try {
      if (failures > 0 && inDoubt !== undefined) {
        // A reconcile that fails here (the provider is down as well) is one more failure of the
        // step, waited out like the others: fn runs only once reconcile answered not done.
        const answer = await inDoubt().catch((error: unknown) => {
          if (error instanceof PermanentError) throw new ReconcileRefused(error);
          throw error;
        });
        if (answer.done) return { ok: true, value: answer.value };
      }
      return { ok: true, value: await stepScope.run(args, fn, signal) };
    } catch (error) {
      if (error instanceof ReconcileRefused) throw error.cause;
      failures++;
      if (failures === alertAfter && !signal.aborted) {
        instrumentsFor().stepAlerts.add(1, { consumer: args.consumer, step: name });
        emit(args, { type: 'alert', step: name, failures, error });
      }
      if (!isRetryable(error) || failures >= policy.maxAttempts || signal.aborted) {
        return { ok: false, error, failures };
      }
      await sleep(delayAfterFailure(policy, failures, error), signal);
    }
  }
}

/** A reconcile answer that is no answer (a PermanentError): it fails the message, never retried. */
class ReconcileRefused {
  constructor(readonly cause: PermanentError) {}
}

/** The run whose step `fn` the current code runs in (see `insideStep`). */
const stepScope = new AsyncLocalStorage<StepRunArgs>();

/** Whether the caller runs inside a step's `fn` of the run `args` belongs to. */
export function insideStep(args: StepRunArgs | undefined): boolean {
  return args !== undefined && stepScope.getStore() === args;
}

/** Calls the user's hook; whatever it does (throw, reject), processing goes on. */
function emit(args: StepRunArgs, event: Omit<StepEvent, 'consumer' | 'key' | 'attempt'>): void {
  const hook = args.onStepEvent;
  if (hook === undefined) return;
  const warn = (error: unknown) =>
    args.logger?.warn('onStepEvent threw; ignored', { step: event.step, error: toErrorInfo(error) });
  try {
    const full: StepEvent = {
      ...event,
      consumer: args.consumer,
      key: args.messageKey,
      attempt: args.attempt,
    };
    const returned: unknown = hook(full);
    if (returned instanceof Promise) returned.catch(warn);
  } catch (error) {
    warn(error);
  }
}
