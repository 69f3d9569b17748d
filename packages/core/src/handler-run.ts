/** Running the handler under its lease, and storing its result (inline, or as a blob first). */
import type { Context } from '@opentelemetry/api';
import { encodeResult } from './codec.js';
import type { Handler, HandlerContext } from './context.js';
import type { ResolvedProcessorOptions } from './options.js';
import type { StoredResult } from './store/types.js';
import { inSpan, instrumentsFor, withContext } from './tracing.js';

export type HandlerRun<R> = { ok: true; value: R | undefined } | { ok: false; error: unknown };

/** One run's outcome, settled by the handler or, past `maxRunMs`, by the lease board. */
export function handlerRun<R>() {
  let settle!: (outcome: HandlerRun<R>) => void;
  const outcome = new Promise<HandlerRun<R>>((resolve) => {
    settle = resolve;
  });
  return { outcome, settle };
}

/**
 * Runs the handler under the lease. A handler still running after `maxRunMs` is abandoned (the
 * lease board settles the run with a RunTimeoutError and aborts its signal); its context is
 * closed, and every store write it could still make is fenced.
 */
export async function runHandler<T, R>(
  o: ResolvedProcessorOptions<T, R>,
  payload: T,
  ctx: HandlerContext,
  runCtx: Context,
  run: ReturnType<typeof handlerRun<R>>,
): Promise<HandlerRun<R>> {
  const started = performance.now();
  try {
    const value = withContext(runCtx, () => (o.handler as Handler<T, R>)(payload, ctx));
    Promise.resolve(value).then(
      (v) => run.settle({ ok: true, value: v }),
      (error: unknown) => run.settle({ ok: false, error }),
    );
  } catch (error) {
    run.settle({ ok: false, error });
  }
  const outcome = await run.outcome;
  instrumentsFor().handlerDuration.record((performance.now() - started) / 1000, { consumer: o.consumer });
  return outcome;
}

export async function storeResult<T, R>(
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
