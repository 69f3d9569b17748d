/**
 * Stuck work: IN_PROGRESS records whose current attempt started longer ago than a threshold, per
 * consumer. `findStuck` is the query (for an alert rule or a CLI); `watchStuck` registers the
 * observable gauge `exactly_once.in_progress.stuck` (through `@opentelemetry/api` only) that
 * polls it. Both need a store with the optional `listInProgress` operation.
 */

import type { Attributes, ObservableGauge, ObservableResult } from '@opentelemetry/api';
import { ConfigError } from '../errors.js';
import { scopeKey, validateName } from '../keys.js';
import { type OptionNames, refuseUnknownOptions } from '../option-names.js';
import { observableGauge } from '../tracing.js';
import { repeatEvery } from '../wait.js';
import type { InProgressEntry, ProcessedStore } from './types.js';

export interface StuckQuery {
  readonly consumer: string;
  /** @defaultValue 'default' */
  readonly namespace?: string;
  /** An attempt running (or a lease released and not retried) longer than this is stuck. */
  readonly olderThanMs: number;
  /** At most this many records. @defaultValue 1000 */
  readonly limit?: number;
}

const STUCK_QUERY = {
  consumer: true,
  namespace: true,
  olderThanMs: true,
  limit: true,
} as const satisfies OptionNames<StuckQuery>;

/**
 * IN_PROGRESS records of one consumer whose current attempt started at least `olderThanMs` ago,
 * oldest first. The keys returned are scoped (`namespace:consumer:key`), ready for `store.get`
 * or `store.clear`.
 */
export async function findStuck(store: ProcessedStore, query: StuckQuery): Promise<InProgressEntry[]> {
  refuseUnknownOptions(query, STUCK_QUERY);
  if (!store.listInProgress) throw new ConfigError('this store does not implement listInProgress');
  const consumer = validateName('consumer', query.consumer);
  const namespace = validateName('namespace', query.namespace ?? 'default');
  if (!(query.olderThanMs >= 0)) throw new ConfigError('olderThanMs must be >= 0');
  const limit = query.limit ?? 1000;
  if (!Number.isInteger(limit) || limit <= 0) throw new ConfigError('limit must be a positive integer');
  const entries = await store.listInProgress({
    prefix: scopeKey(namespace, consumer, ''),
    olderThanMs: query.olderThanMs,
    limit,
  });
  return oldestFirst(entries, limit);
}

/** The `limit` entries whose attempt started first, oldest first: what listInProgress answers. */
export function oldestFirst(entries: InProgressEntry[], limit: number): InProgressEntry[] {
  return entries.sort((a, b) => a.startedAt - b.startedAt).slice(0, Math.max(0, limit));
}

export interface WatchStuckOptions extends StuckQuery {
  /** How often the store is queried; the gauge reports the last answer. @defaultValue 60000 */
  readonly intervalMs?: number;
  /** Called when a query fails (the gauge keeps its last value). */
  readonly onError?: (error: unknown) => void;
}

export interface StuckWatch {
  /** The last count observed (undefined before the first query answered). */
  readonly count: number | undefined;
  /** Query now (also done on every interval). */
  refresh(): Promise<number>;
  /** Stop polling and unregister the gauge callback. */
  stop(): void;
}

/**
 * Registers the observable gauge `exactly_once.in_progress.stuck` (attributes
 * `exactly_once.consumer`, `exactly_once.namespace`) and polls {@link findStuck} at once and then
 * `intervalMs` after each query ended; the gauge reports the number of stuck records (capped by
 * `limit`). The store is queried on the timer, never inside a metrics collection. Call `stop()` on
 * shutdown.
 *
 * An alert rule: `exactly_once_in_progress_stuck > 0` for a few minutes.
 */
export function watchStuck(store: ProcessedStore, options: WatchStuckOptions): StuckWatch {
  refuseUnknownOptions(options, {
    ...STUCK_QUERY,
    intervalMs: true,
    onError: true,
  } satisfies OptionNames<WatchStuckOptions>);
  const intervalMs = options.intervalMs ?? 60_000;
  if (!(intervalMs > 0)) throw new ConfigError('intervalMs must be > 0');
  if (!store.listInProgress) throw new ConfigError('this store does not implement listInProgress');
  const attributes: Attributes = {
    'exactly_once.consumer': validateName('consumer', options.consumer),
    'exactly_once.namespace': validateName('namespace', options.namespace ?? 'default'),
  };
  let count: number | undefined;
  const gauge: ObservableGauge = observableGauge('exactly_once.in_progress.stuck', {
    description: 'IN_PROGRESS records whose current attempt started longer ago than the threshold',
  });
  const observe = (result: ObservableResult) => {
    if (count !== undefined) result.observe(count, attributes);
  };
  gauge.addCallback(observe);
  const { consumer, namespace, olderThanMs, limit } = options;
  const query: StuckQuery = {
    consumer,
    olderThanMs,
    ...(namespace === undefined ? {} : { namespace }),
    ...(limit === undefined ? {} : { limit }),
  };
  const refresh = async () => {
    count = (await findStuck(store, query)).length;
    return count;
  };
  // A query slower than the interval (a scan of a large keyspace) must not pile up behind itself.
  const polling = repeatEvery(intervalMs, refresh, (error) => options.onError?.(error), {
    immediately: true,
  });
  return {
    get count() {
      return count;
    },
    refresh,
    stop() {
      polling.stop();
      gauge.removeCallback(observe);
    },
  };
}
