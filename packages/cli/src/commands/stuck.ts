/**
 * `stuck --older-than 5m [--consumer c]`: IN_PROGRESS records whose current attempt started
 * longer ago than the threshold (core's `findStuck`, or the store's `listInProgress` across every
 * consumer), each read again to show its steps in doubt.
 */
import { CorruptRecordError, findStuck, type InProgressEntry } from '@exactly-once/core';
import { CliError } from '../errors.js';
import {
  formatSpan,
  formatTime,
  type Io,
  printJson,
  printLines,
  progress,
  shown,
  table,
  truncate,
} from '../output.js';
import { openStore, type StoreOptions, storeError } from '../stores.js';

export interface StuckOptions extends StoreOptions {
  readonly olderThanMs: number;
  readonly consumer?: string;
  readonly namespace?: string;
  readonly limit: number;
  readonly json?: boolean;
}

export interface StuckView extends InProgressEntry {
  /** Steps journaled as started and never finished (their effect is in doubt). */
  readonly stepsStarted: string[];
  readonly stepsDone: string[];
  /** The record completed, failed or was cleared between the listing and the read. */
  readonly finished?: boolean;
  /** The record (or its steps) cannot be read: damaged by hand (see the store README). */
  readonly damaged?: string;
}

export async function stuck(io: Io, options: StuckOptions): Promise<void> {
  const opened = await openStore(options);
  try {
    const { store } = opened;
    if (!store.listInProgress) throw new CliError(`${opened.description} cannot list in-progress records`);
    let entries: InProgressEntry[];
    const scan = progress(io, 'scanning', 1);
    try {
      entries = options.consumer
        ? await findStuck(store, {
            consumer: options.consumer,
            namespace: options.namespace ?? 'default',
            olderThanMs: options.olderThanMs,
            limit: options.limit,
          })
        : (
            await store.listInProgress({
              olderThanMs: options.olderThanMs,
              limit: options.limit,
              ...(options.namespace ? { prefix: `${options.namespace}:` } : {}),
            })
          ).sort((a, b) => a.startedAt - b.startedAt);
      scan.increment();
    } catch (error) {
      throw storeError(error);
    } finally {
      scan.stop();
    }
    const bar = progress(io, 'reading records', entries.length);
    const views: StuckView[] = [];
    try {
      for (const entry of entries) {
        const record = await store.get(entry.key).catch((error: unknown) => {
          // Listed, but damaged since (or its steps are): shown as such, the others still are.
          if (error instanceof CorruptRecordError) return error;
          throw storeError(error);
        });
        if (record instanceof CorruptRecordError) {
          views.push({ ...entry, stepsStarted: [], stepsDone: [], damaged: record.detail });
          bar.increment();
          continue;
        }
        const steps = record?.state === 'IN_PROGRESS' ? Object.entries(record.steps) : [];
        views.push({
          ...entry,
          stepsStarted: steps.filter(([, s]) => s.state === 'started').map(([n]) => n),
          stepsDone: steps.filter(([, s]) => s.state === 'done').map(([n]) => n),
          ...(record?.state === 'IN_PROGRESS' ? {} : { finished: true }),
        });
        bar.increment();
      }
    } finally {
      bar.stop();
    }
    if (options.json) {
      printJson(io, {
        olderThanMs: options.olderThanMs,
        ...(options.consumer ? { consumer: options.consumer } : {}),
        namespace: options.namespace ?? (options.consumer ? 'default' : undefined),
        count: views.length,
        limited: views.length >= options.limit,
        records: views,
      });
      return;
    }
    const scope = options.consumer
      ? `consumer ${options.consumer} (namespace ${options.namespace ?? 'default'})`
      : options.namespace
        ? `namespace ${options.namespace}`
        : 'all consumers';
    if (views.length === 0) {
      const whose = options.consumer || options.namespace ? ` of ${scope}` : '';
      printLines(io, [`no record${whose} in progress for more than ${formatSpan(options.olderThanMs)}`]);
      return;
    }
    const now = Date.now();
    const rows = [
      ['in progress', 'started', 'attempt', 'owner', 'lease', 'steps in doubt', 'key'],
      ...views.map((v) => [
        formatSpan(now - v.startedAt),
        formatTime(v.startedAt),
        String(v.attempt),
        truncate(v.owner || '-', 30),
        v.damaged !== undefined
          ? `damaged: ${v.damaged}`
          : v.finished
            ? 'finished since'
            : v.leaseUntil === 0
              ? 'released'
              : v.leaseUntil === 1
                ? 'released (taken over)'
                : v.leaseUntil > now
                  ? `live, ${formatSpan(v.leaseUntil - now)} left`
                  : `expired ${formatSpan(now - v.leaseUntil)} ago`,
        v.stepsStarted.length === 0 ? '-' : v.stepsStarted.join(', '),
        shown(v.key),
      ]),
    ];
    printLines(io, [
      `${views.length}${views.length >= options.limit ? '+' : ''} record(s) of ${scope} in progress for more than ${formatSpan(options.olderThanMs)}, oldest first:`,
      '',
      ...table(rows),
    ]);
  } finally {
    await opened.close();
  }
}
