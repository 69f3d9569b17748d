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
import { type Context, context, propagation, type Span, SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { decodeJson, encodeResult } from './codec.js';
import { createRunContext, type Handler, type HandlerContext } from './context.js';
import {
  AttemptsExhaustedError,
  ExactlyOnceError,
  IdempotencyKeyReuseError,
  isRetryable,
  KeyMissingError,
  MalformedMessageError,
  PreviouslyFailedError,
  PublishError,
  RunTimeoutError,
  toErrorInfo,
} from './errors.js';
import {
  deadLetter,
  discardBlobs,
  failAndDeadLetter,
  handleFailure,
  leaseLost,
  type RunBlobs,
  release,
  storeDown,
} from './failure.js';
import { Headers, readIdentityHeader, textHeaders } from './headers.js';
import { fingerprint, normalizeKey, scopeKey } from './keys.js';
import { keepLease, type LeaseKeeper } from './lease-keeper.js';
import { coalescing } from './store/coalesce.js';
import { type ProcessorOptions, type ResolvedProcessorOptions, resolveProcessorOptions } from './options.js';
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
} from './semconv.js';
import type { Delivery, Disposition, Outcome } from './spi.js';
import type {
  BeginResult,
  CompletedRecord,
  OutgoingMessage,
  ProcessedStore,
  StoredResult,
} from './store/types.js';
import { inSpan, instrumentsFor, linkToRef, recordError, spanRef, startProcessSpan } from './tracing.js';

export interface Processor {
  /** Runs the pipeline for one delivery and says how to settle it. Never throws. */
  process(delivery: Delivery): Promise<Disposition>;
  readonly options: ResolvedProcessorOptions<unknown, unknown>;
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
  const resolved = resolveProcessorOptions(options);
  // Concurrent runs share store round trips (see store/coalesce.ts).
  const o: ResolvedProcessorOptions<T, R> = Object.freeze({ ...resolved, store: coalescing(resolved.store) });
  const shared: Shared = { publishing: new Map(), publishFailures: new Map() };
  return {
    options: o as ResolvedProcessorOptions<unknown, unknown>,
    process: (delivery) => processDelivery(o, delivery, shared),
  };
}

/** What the runs of one processor share. */
interface Shared {
  /** Publishes under way, by store key (see finishCompleted). */
  readonly publishing: Map<string, Promise<unknown>>;
  /** Consecutive unconfirmed publishes, by store key (see publishThenAck). */
  readonly publishFailures: Map<string, number>;
}

/** Keys whose publish failures are remembered at once; the oldest is forgotten first. */
const MAX_TRACKED_PUBLISH_FAILURES = 10_000;

interface Prepared<T> {
  payload: T;
  key: string;
  storeKey: string;
  requestId: string;
  fingerprint: string;
}

async function processDelivery<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  delivery: Delivery,
  shared: Shared,
): Promise<Disposition> {
  const started = performance.now();
  const baseAttrs = {
    [ATTR_MESSAGING_SYSTEM]: delivery.system,
    [ATTR_MESSAGING_DESTINATION_NAME]: delivery.destination,
    [ATTR_MESSAGING_OPERATION_TYPE]: 'process',
    [ATTR_MESSAGING_OPERATION_NAME]: 'process',
    [ATTR_MESSAGING_BODY_SIZE]: delivery.body.byteLength,
    [ATTR_EO_CONSUMER]: o.consumer,
    ...delivery.attributes,
  };
  const { span, ctx } = startProcessSpan(o.spanKind, delivery.destination, delivery.headers, baseAttrs);
  let disposition: Disposition;
  try {
    disposition = await context.with(ctx, () => run(o, delivery, span, ctx, shared));
  } catch (error) {
    // Only a bug gets here; never ack what we do not understand.
    recordError(span, error);
    o.logger.error('unexpected pipeline error; message will be redelivered', { error: toErrorInfo(error) });
    disposition = { action: 'defer', outcome: 'store-unavailable', delayMs: 1000, error: toErrorInfo(error) };
  }
  span.setAttribute(ATTR_EO_OUTCOME, disposition.outcome);
  span.setAttribute(ATTR_EO_ACTION, disposition.action);
  if (disposition.action === 'dead-letter' || disposition.action === 'retry') {
    const error = disposition.action === 'retry' ? disposition.error : disposition.reason.error;
    span.setStatus({ code: SpanStatusCode.ERROR, message: `${error.name}: ${error.message}` });
  }
  span.end();
  const attrs = { consumer: o.consumer, outcome: disposition.outcome, action: disposition.action };
  const m = instrumentsFor();
  m.deliveries.add(1, attrs);
  m.processDuration.record((performance.now() - started) / 1000, attrs);
  return disposition;
}

async function run<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  delivery: Delivery,
  span: Span,
  ctx: Context,
  shared: Shared,
): Promise<Disposition> {
  let prepared: Prepared<T>;
  try {
    prepared = prepare(o, delivery);
  } catch (error) {
    // A user hook or a hostile payload may throw anything; the reason is always a library error.
    const reason =
      error instanceof ExactlyOnceError
        ? error
        : new MalformedMessageError(`message could not be read: ${describe(error)}`, { cause: error });
    return deadLetter(o, delivery, 'invalid', reason, 0);
  }
  const { storeKey, requestId } = prepared;
  span.setAttribute(ATTR_EO_KEY, prepared.key);
  span.setAttribute(ATTR_EO_REQUEST_ID, requestId);
  // Downstream spans and messages find the request by its id through baggage.
  const bag = (propagation.getBaggage(ctx) ?? propagation.createBaggage()).setEntry(BAGGAGE_REQUEST_ID, {
    value: requestId,
  });
  const runCtx = propagation.setBaggage(ctx, bag);

  let begun: Awaited<ReturnType<ProcessedStore['begin']>>;
  try {
    begun = await inSpan('exactly-once begin', runCtx, {}, () =>
      o.store.begin({
        key: storeKey,
        fingerprint: prepared.fingerprint,
        owner: o.ownerId,
        leaseMs: o.leaseMs,
        ...(spanRef(span) ? { traceId: spanRef(span) as string } : {}),
      }),
    );
  } catch (error) {
    return storeDown(o, error);
  }

  switch (begun.status) {
    case 'duplicate': {
      span.addLinks(linkToRef(begun.record.traceId));
      return finishCompleted(o, runCtx, delivery, storeKey, begun.record, shared);
    }
    case 'busy':
      // Poll well before the other lease ends: the other worker usually finishes early.
      return {
        action: 'defer',
        outcome: 'busy',
        delayMs: Math.max(50, Math.min(begun.retryAfterMs, Math.ceil(o.leaseMs / 10))),
      };
    case 'mismatch':
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
    case 'acquired':
      break;
  }
  // Copies of this key that arrive while this run completes and publishes wait for it instead
  // of publishing the same outgoing messages again (see finishCompleted).
  let finished!: () => void;
  const marker = new Promise<void>((resolve) => {
    finished = resolve;
  });
  shared.publishing.set(storeKey, marker);
  try {
    return await runAcquired(o, delivery, span, runCtx, prepared, begun, shared);
  } finally {
    if (shared.publishing.get(storeKey) === marker) shared.publishing.delete(storeKey);
    finished();
  }
}

async function runAcquired<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  delivery: Delivery,
  span: Span,
  runCtx: Context,
  prepared: Prepared<T>,
  begun: Extract<BeginResult, { status: 'acquired' }>,
  shared: Shared,
): Promise<Disposition> {
  const { storeKey, requestId } = prepared;
  span.setAttribute(ATTR_EO_ATTEMPT, begun.attempt);
  span.setAttribute(ATTR_EO_FENCE, begun.fence);
  const outcome: Outcome = begun.kind === 'takeover' ? 'takeover' : 'acquired';
  const { fence, attempt } = begun;

  // A message that keeps killing its worker comes back as takeovers; stop it here.
  if (attempt > o.retry.maxAttempts) {
    return failAndDeadLetter(
      o,
      delivery,
      storeKey,
      fence,
      new AttemptsExhaustedError({ attempts: attempt - 1 }),
      attempt - 1,
    );
  }

  const keeper = keepLease({
    store: o.store,
    key: storeKey,
    fence,
    leaseMs: o.leaseMs,
    intervalMs: o.heartbeatMs,
    onError: (error) => o.logger.warn('lease heartbeat failed', { key: storeKey, error: toErrorInfo(error) }),
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
    headers: textHeaders(delivery.headers),
    signal: keeper.signal,
    span,
    otelContext: runCtx,
    steps: begun.steps,
    store: o.store,
    blobStore: o.blobs,
    canPublish: o.publisher !== undefined,
  });

  const ran = await runHandler(o, prepared.payload, state.ctx, runCtx, keeper);
  state.close();
  if (keeper.lost) {
    // A newer fence owns the key; whatever this run did must not be recorded or acked.
    await keeper.stop();
    await discardBlobs(o, state);
    return leaseLost(storeKey, fence);
  }
  if (!ran.ok) {
    await keeper.stop();
    recordError(span, ran.error);
    return handleFailure(o, delivery, storeKey, fence, attempt, outcome, ran.error, state);
  }

  // The heartbeat goes on while a large result uploads: a slow upload must not lose the lease.
  let stored: StoredResult | undefined;
  try {
    stored = await storeResult(o, runCtx, ran.value);
  } catch (error) {
    await keeper.stop();
    await release(o, storeKey, fence, error);
    return { action: 'defer', outcome: 'store-unavailable', delayMs: 1000, error: toErrorInfo(error) };
  }
  await keeper.stop();
  const run: RunBlobs = {
    blobs: stored?.kind === 'blob' ? [...state.blobs, stored.pointer] : state.blobs,
    isJournaled: state.isJournaled,
  };
  if (keeper.lost) {
    await discardBlobs(o, run);
    return leaseLost(storeKey, fence);
  }

  let completed: 'ok' | 'lost';
  try {
    completed = await inSpan('exactly-once complete', runCtx, {}, () =>
      o.store.complete({
        key: storeKey,
        fence,
        ...(stored ? { result: stored } : {}),
        outgoing: state.outgoing,
        retentionMs: o.retentionMs,
        ...(spanRef(span) ? { traceId: spanRef(span) as string } : {}),
      }),
    );
  } catch (error) {
    if (!isRetryable(error)) {
      // The store refused the record itself (e.g. too large): the same write would fail again.
      await discardBlobs(o, run);
      return failAndDeadLetter(o, delivery, storeKey, fence, error, attempt);
    }
    // Unknown whether the write landed: keep the blobs, redeliver; the next run resolves it.
    return storeDown(o, error);
  }
  if (completed === 'lost') {
    await discardBlobs(o, run);
    return leaseLost(storeKey, fence);
  }
  return publishThenAck(o, runCtx, delivery, storeKey, fence, state.outgoing, outcome, stored, shared);
}

type HandlerRun<R> = { ok: true; value: R | undefined } | { ok: false; error: unknown };

/**
 * Runs the handler under the lease, for at most `maxRunMs`. A handler still running then is
 * abandoned: its signal aborts, the heartbeat stops, and the run fails with a retryable
 * RunTimeoutError. Its context is closed, and every store write it could still make is fenced.
 */
async function runHandler<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  payload: T,
  ctx: HandlerContext,
  runCtx: Context,
  keeper: LeaseKeeper,
): Promise<HandlerRun<R>> {
  const started = performance.now();
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<HandlerRun<R>>((resolve) => {
    timer = setTimeout(() => {
      const error = new RunTimeoutError({ maxRunMs: o.maxRunMs });
      keeper.abort(error);
      resolve({ ok: false, error });
    }, o.maxRunMs);
  });
  try {
    const handled = (async (): Promise<HandlerRun<R>> => {
      try {
        const value = await context.with(runCtx, () => (o.handler as Handler<T, R>)(payload, ctx));
        return { ok: true, value };
      } catch (error) {
        return { ok: false, error };
      }
    })();
    return await Promise.race([handled, timedOut]);
  } finally {
    clearTimeout(timer);
    instrumentsFor().handlerDuration.record((performance.now() - started) / 1000, { consumer: o.consumer });
  }
}

function prepare<T, R>(o: ResolvedProcessorOptions<T, R>, delivery: Delivery): Prepared<T> {
  let payload: T;
  try {
    payload = o.decode ? o.decode(delivery.body, delivery) : (decodeJson(delivery.body) as T);
    o.validate?.(payload);
  } catch (error) {
    if (error instanceof MalformedMessageError) throw error;
    throw new MalformedMessageError(`message failed validation: ${(error as Error)?.message ?? error}`, {
      cause: error,
    });
  }
  const fp = fingerprint(o.fingerprint ? o.fingerprint(payload) : payload);
  let raw = readIdentityHeader(delivery.headers, Headers.IdempotencyKey);
  if (raw === undefined || raw === '') raw = keyFromPolicy(o, payload, delivery, fp);
  const key = normalizeKey(raw);
  // A request id is validated as strictly as the key: it is copied onto every downstream message.
  const header = readIdentityHeader(delivery.headers, Headers.RequestId);
  const requestId = header ? normalizeKey(header) : key;
  return { payload, key, storeKey: scopeKey(o.namespace, o.consumer, key), requestId, fingerprint: fp };
}

function keyFromPolicy<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  payload: T,
  delivery: Delivery,
  fp: string,
): string {
  const policy = o.missingKey;
  if (policy === 'broker-id') {
    if (delivery.brokerId) return delivery.brokerId;
    throw new KeyMissingError(
      'message has no idempotency key and the broker gave it no stable id (missingKey: broker-id)',
    );
  }
  if (policy === 'payload-hash') return `payload:${fp}`;
  if (typeof policy === 'function') {
    const k = policy(payload, delivery);
    if (k) return k;
  }
  throw new KeyMissingError();
}

async function storeResult<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  ctx: Context,
  result: R | undefined,
): Promise<StoredResult | undefined> {
  const bytes = encodeResult(result);
  if (!bytes) return undefined;
  if (!o.blobs || bytes.byteLength <= o.inlineResultBytes) return { kind: 'inline', data: bytes };
  const blobs = o.blobs;
  // The blob is durable before any record points at it.
  const pointer = await inSpan(
    'exactly-once blob put',
    ctx,
    { 'exactly_once.blob.size': bytes.byteLength },
    () => blobs.put(bytes),
  );
  return { kind: 'blob', pointer };
}

async function finishCompleted<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  ctx: Context,
  delivery: Delivery,
  storeKey: string,
  record: CompletedRecord,
  shared: Shared,
): Promise<Disposition> {
  let pending = record.outgoing.filter((m) => !m.published);
  const underWay = shared.publishing.get(storeKey);
  if (pending.length > 0 && underWay) {
    // A concurrent copy in this process is publishing the same messages right now: wait for it
    // rather than send them twice, then publish only what it did not confirm.
    await underWay.catch(() => {});
    const fresh = await o.store.get(storeKey).catch(() => undefined);
    if (fresh?.state === 'COMPLETED') pending = fresh.outgoing.filter((m) => !m.published);
  }
  return publishThenAck(
    o,
    ctx,
    delivery,
    storeKey,
    record.fence,
    pending,
    'duplicate',
    record.result,
    shared,
  );
}

async function publishThenAck<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  ctx: Context,
  delivery: Delivery,
  storeKey: string,
  fence: number,
  outgoing: readonly OutgoingMessage[],
  outcome: Outcome,
  result: StoredResult | undefined,
  shared: Shared,
): Promise<Disposition> {
  if (outgoing.length > 0) {
    try {
      const publisher = o.publisher;
      if (!publisher) {
        throw new PublishError('record has unconfirmed outgoing messages but the consumer has no publisher');
      }
      const destinations = [...new Set(outgoing.map((m) => m.destination))].join(',');
      await inSpan(
        `send ${destinations}`,
        ctx,
        { [ATTR_MESSAGING_OPERATION_TYPE]: 'send', 'messaging.batch.message_count': outgoing.length },
        () => publisher.publish(outgoing),
        SpanKind.CLIENT,
      );
    } catch (error) {
      return publishFailed(o, delivery, storeKey, error, shared);
    }
    shared.publishFailures.delete(storeKey);
    try {
      await o.store.markPublished(
        storeKey,
        fence,
        outgoing.map((m) => m.id),
      );
    } catch (error) {
      // Published and confirmed: a later duplicate re-sends them, and receivers dedup by child key.
      o.logger.warn('markPublished failed after a confirmed publish', {
        key: storeKey,
        error: toErrorInfo(error),
      });
    }
  }
  return result ? { action: 'ack', outcome, result } : { action: 'ack', outcome };
}

/**
 * An unconfirmed publish defers the message (COMPLETED is durable; the redelivery publishes what
 * is still unconfirmed), with a growing delay. After `maxPublishDeferrals` in a row it escalates:
 * a destination that does not exist would otherwise hold a Kafka partition or a prefetch slot for
 * ever. The message is dead-lettered with the reason; replaying it publishes the outgoing
 * messages (the record answers it as a duplicate).
 */
function publishFailed<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  delivery: Delivery,
  storeKey: string,
  error: unknown,
  shared: Shared,
): Disposition {
  const failures = (shared.publishFailures.get(storeKey) ?? 0) + 1;
  shared.publishFailures.delete(storeKey); // re-inserted last: the map forgets the oldest first
  if (failures > o.maxPublishDeferrals) {
    o.logger.error('outgoing messages never confirmed; dead-lettering the message', {
      key: storeKey,
      attempts: failures,
      error: toErrorInfo(error),
    });
    instrumentsFor().publishEscalations.add(1, { consumer: o.consumer });
    const reason = new PublishError(
      `outgoing messages not confirmed after ${failures} attempts: ${describe(error)}`,
      { cause: error },
    );
    return deadLetter(o, delivery, 'publish-failed', reason, failures);
  }
  shared.publishFailures.set(storeKey, failures);
  if (shared.publishFailures.size > MAX_TRACKED_PUBLISH_FAILURES) {
    const oldest = shared.publishFailures.keys().next().value;
    if (oldest !== undefined) shared.publishFailures.delete(oldest);
  }
  o.logger.warn('outgoing publish not confirmed; message will be redelivered', {
    key: storeKey,
    attempt: failures,
  });
  const delayMs = Math.min(30_000, 500 * 2 ** (failures - 1));
  const info = toErrorInfo(
    error instanceof ExactlyOnceError ? error : new PublishError(describe(error), { cause: error }),
  );
  return { action: 'defer', outcome: 'publish-failed', delayMs, error: info };
}

function describe(error: unknown): string {
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}
