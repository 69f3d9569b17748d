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
import { createRunContext, type Handler } from './context.js';
import {
  AttemptsExhaustedError,
  IdempotencyKeyReuseError,
  KeyMissingError,
  MalformedMessageError,
  PreviouslyFailedError,
  PublishError,
  toErrorInfo,
} from './errors.js';
import {
  deadLetter,
  discardBlobs,
  failAndDeadLetter,
  handleFailure,
  leaseLost,
  release,
  storeDown,
} from './failure.js';
import { Headers, readHeader, textHeaders } from './headers.js';
import { fingerprint, normalizeKey, scopeKey } from './keys.js';
import { keepLease } from './lease-keeper.js';
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
  const o = resolveProcessorOptions(options);
  const publishing = new Map<string, Promise<unknown>>();
  return {
    options: o as ResolvedProcessorOptions<unknown, unknown>,
    process: (delivery) => processDelivery(o, delivery, publishing),
  };
}

/** Publishes of this processor under way, by store key (see finishCompleted). */
type Publishing = Map<string, Promise<unknown>>;

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
  publishing: Publishing,
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
    disposition = await context.with(ctx, () => run(o, delivery, span, ctx, publishing));
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
  publishing: Publishing,
): Promise<Disposition> {
  let prepared: Prepared<T>;
  try {
    prepared = prepare(o, delivery);
  } catch (error) {
    return deadLetter(o, delivery, 'invalid', error, 0);
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
      return finishCompleted(o, runCtx, storeKey, begun.record, publishing);
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
  publishing.set(storeKey, marker);
  try {
    return await runAcquired(o, delivery, span, runCtx, prepared, begun);
  } finally {
    if (publishing.get(storeKey) === marker) publishing.delete(storeKey);
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

  let result: R | undefined;
  let handlerError: unknown;
  let failedHandler = false;
  const handlerStart = performance.now();
  try {
    result = await context.with(runCtx, () => (o.handler as Handler<T, R>)(prepared.payload, state.ctx));
  } catch (error) {
    handlerError = error;
    failedHandler = true;
  } finally {
    await keeper.stop();
    instrumentsFor().handlerDuration.record((performance.now() - handlerStart) / 1000, {
      consumer: o.consumer,
    });
  }

  if (keeper.lost) {
    // A newer fence owns the key; whatever this run did must not be recorded or acked.
    await discardBlobs(o, state.blobs);
    return leaseLost(storeKey, fence);
  }

  if (failedHandler) {
    recordError(span, handlerError);
    return handleFailure(o, delivery, storeKey, fence, attempt, outcome, handlerError, state.blobs);
  }

  let stored: StoredResult | undefined;
  try {
    stored = await storeResult(o, runCtx, result);
  } catch (error) {
    await release(o, storeKey, fence, error);
    return { action: 'defer', outcome: 'store-unavailable', delayMs: 1000, error: toErrorInfo(error) };
  }
  if (stored?.kind === 'blob') state.blobs.push(stored.pointer);

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
    // Unknown whether the write landed: keep the blobs, redeliver; the next run resolves it.
    return storeDown(o, error);
  }
  if (completed === 'lost') {
    await discardBlobs(o, state.blobs);
    return leaseLost(storeKey, fence);
  }
  return publishThenAck(o, runCtx, storeKey, fence, state.outgoing, outcome, stored);
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
  let raw = readHeader(delivery.headers, Headers.IdempotencyKey);
  if (raw === undefined || raw === '') raw = keyFromPolicy(o, payload, delivery, fp);
  const key = normalizeKey(raw);
  let requestId = key;
  try {
    const header = readHeader(delivery.headers, Headers.RequestId);
    if (header) requestId = normalizeKey(header);
  } catch {
    // A broken request id only loses correlation; the key is what deduplicates.
  }
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
  storeKey: string,
  record: CompletedRecord,
  publishing: Publishing,
): Promise<Disposition> {
  let pending = record.outgoing.filter((m) => !m.published);
  const underWay = publishing.get(storeKey);
  if (pending.length > 0 && underWay) {
    // A concurrent copy in this process is publishing the same messages right now: wait for it
    // rather than send them twice, then publish only what it did not confirm.
    await underWay.catch(() => {});
    const fresh = await o.store.get(storeKey).catch(() => undefined);
    if (fresh?.state === 'COMPLETED') pending = fresh.outgoing.filter((m) => !m.published);
  }
  return publishThenAck(o, ctx, storeKey, record.fence, pending, 'duplicate', record.result);
}

async function publishThenAck<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  ctx: Context,
  storeKey: string,
  fence: number,
  outgoing: readonly OutgoingMessage[],
  outcome: Outcome,
  result: StoredResult | undefined,
): Promise<Disposition> {
  if (outgoing.length > 0) {
    const publisher = o.publisher;
    if (!publisher) {
      const error = new PublishError(
        'record has unconfirmed outgoing messages but the consumer has no publisher',
      );
      return { action: 'defer', outcome: 'publish-failed', delayMs: 5000, error: toErrorInfo(error) };
    }
    const destinations = [...new Set(outgoing.map((m) => m.destination))].join(',');
    try {
      await inSpan(
        `send ${destinations}`,
        ctx,
        { [ATTR_MESSAGING_OPERATION_TYPE]: 'send', 'messaging.batch.message_count': outgoing.length },
        () => publisher.publish(outgoing),
        SpanKind.CLIENT,
      );
    } catch (error) {
      // COMPLETED is durable; the redelivery finds it and publishes what is still unconfirmed.
      o.logger.warn('outgoing publish not confirmed; message will be redelivered', { key: storeKey });
      return { action: 'defer', outcome: 'publish-failed', delayMs: 1000, error: toErrorInfo(error) };
    }
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
