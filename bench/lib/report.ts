/** Text tables and the targets check. Targets are reported next to the figures, never asserted. */
import type { AccumulationRow } from './accumulation.js';
import { type ConsumeSummary, type ConsumeVariant, rawOf } from './consume.js';
import type { LatencySummary, PingSummary } from './latency.js';
import type { OutboxSummary } from './outbox.js';
import type { ProfileSummary } from './profile.js';
import type { StorageFigure } from './storage.js';

/** Section titles; the CI test looks for these. */
export const HEADERS = {
  consume: '== Consume throughput',
  latency: '== Added latency per message, serial',
  storage: '== Storage per key',
  outbox: '== Outbox drain',
  outboxRelay: '== Document outbox relay drain to Kafka',
  accumulation: '== Mongo store as records accumulate',
  cpu: '== CPU per message by process',
  profiles: '== CPU profiles',
  targets: '== Targets',
} as const;

type Cell = string | number;

function fmt(v: Cell, digits: number): string {
  if (typeof v === 'string') return v;
  if (!Number.isFinite(v)) return '-';
  return v.toFixed(digits);
}

/** Columns: [title, digits]; the first `left` columns are left-aligned. */
export function table(columns: [string, number][], rows: Cell[][], left = 1): string {
  const cells = rows.map((r) => r.map((v, i) => fmt(v, columns[i]?.[1] ?? 0)));
  const widths = columns.map(([title], i) =>
    Math.max(title.length, ...cells.map((r) => (r[i] ?? '').length)),
  );
  const line = (r: string[]) =>
    r
      .map((c, i) => (i < left ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  const head = line(columns.map(([t]) => t));
  return [head, '-'.repeat(head.length), ...cells.map(line)].join('\n');
}

export function consumeTable(rows: readonly ConsumeSummary[]): string {
  return table(
    [
      ['broker', 0],
      ['variant', 0],
      ['msgs', 0],
      ['msgs/s', 0],
      ['x raw', 2],
      ['x powertools', 2],
      ['p50 ms', 2],
      ['p99 ms', 2],
      ['+p50 ms', 2],
      ['+p99 ms', 2],
      ['store calls/msg', 2],
      ['keys/batch', 1],
      ['srv cmds/msg*', 2],
      ['srv us/msg*', 1],
      ['load', 1],
    ],
    rows.map((r) => [
      r.broker,
      r.variant,
      r.messages,
      r.rate,
      r.vsRaw,
      r.vsPowertools,
      r.p50Ms,
      r.p99Ms,
      r.variant === 'raw' ? '' : r.addedP50Ms,
      r.variant === 'raw' ? '' : r.addedP99Ms,
      r.storeCallsPerMsg,
      r.keysPerBatch,
      r.serverCmdsPerMsg,
      r.serverUsPerMsg,
      r.load,
    ]),
    2,
  );
}

/**
 * Where each variant's CPU goes, from the same runs as the throughput table. `CPU-bound x raw`:
 * raw's total over the variant's, the ratio the variant would reach if every process shared the
 * CPUs and nothing else limited either run.
 */
export function cpuTable(rows: readonly ConsumeSummary[]): string {
  const totalOf = (r: ConsumeSummary) =>
    r.consumerCpuUs +
    (Number.isFinite(r.brokerCpuUs) ? r.brokerCpuUs : 0) +
    (Number.isFinite(r.redisCpuUs) ? r.redisCpuUs : 0);
  // Paired as the throughput table pairs them (rawOf), so `x raw` and this column agree.
  const raw = (broker: string, variant: ConsumeVariant) =>
    rows.find((r) => r.broker === broker && r.variant === rawOf(variant));
  return table(
    [
      ['broker', 0],
      ['variant', 0],
      ['consumer us', 1],
      ['broker us', 1],
      ['redis us', 1],
      ['total us', 1],
      ['+total us', 1],
      ['CPU-bound x raw', 2],
      ['x raw', 2],
    ],
    rows.map((r) => {
      const ref = raw(r.broker, r.variant);
      const total = totalOf(r);
      const refTotal = ref ? totalOf(ref) : Number.NaN;
      return [
        r.broker,
        r.variant,
        r.consumerCpuUs,
        r.brokerCpuUs,
        r.redisCpuUs,
        total,
        ref === r ? '' : total - refTotal,
        refTotal / total,
        r.vsRaw,
      ];
    }),
    2,
  );
}

export function latencyTable(rows: readonly LatencySummary[]): string {
  return table(
    [
      ['variant', 0],
      ['p50 us', 1],
      ['p99 us', 1],
      ['+p50 us', 1],
      ['+p99 us', 1],
      ['store calls/msg', 2],
    ],
    rows.map((r) => [
      r.variant,
      r.p50Us,
      r.p99Us,
      r.variant === 'raw' ? '' : r.addedP50Us,
      r.variant === 'raw' ? '' : r.addedP99Us,
      r.storeCallsPerMsg,
    ]),
  );
}

export function storageTable(rows: readonly StorageFigure[]): string {
  return table(
    [
      ['figure', 0],
      ['bytes/key', 1],
      ['at 30M keys (GiB)', 2],
    ],
    rows.map((r) => [r.figure, r.bytes, r.at30MGiB]),
  );
}

export function outboxTable(rows: readonly OutboxSummary[]): string {
  return table(
    [
      ['variant', 0],
      ['msgs', 0],
      ['window', 0],
      ['msgs/s', 0],
      ['x raw', 2],
      ['max in-flight', 0],
      ['store calls/msg', 2],
      ['load', 1],
    ],
    rows.map((r) => [
      r.variant,
      r.messages,
      r.window,
      r.rate,
      r.vsRaw,
      r.maxInFlight,
      r.storeCallsPerMsg,
      r.load,
    ]),
  );
}

export function accumulationTable(rows: readonly AccumulationRow[]): string {
  return table(
    [
      ['server', 0],
      ['records', 0],
      ['docs', 0],
      ['fill keys/s', 0],
      ['new-key msgs/s', 0],
      ['duplicate msgs/s', 0],
      ['retries', 0],
      ['load start', 2],
      ['load end', 2],
    ],
    rows.map((r) => [
      r.server,
      r.records,
      r.docs,
      r.fillRate,
      r.newKeyRate,
      r.duplicateRate,
      r.retries,
      r.loadStart,
      r.loadEnd,
    ]),
  );
}

export interface Target {
  target: string;
  figure: number;
  threshold: number;
  /** `min`: figure >= threshold; `max`: figure <= threshold. */
  kind: 'min' | 'max';
  /** How the threshold was derived, when it is not a constant (e.g. `2 x PING 61.2 us`). */
  basis?: string;
  /** `undefined` (`n/a`): the figure or the threshold was not measured in this run. */
  met: boolean | undefined;
}

/**
 * The targets of the performance issue, each with the figure of this run it is judged on: the
 * consume ratios and per-message costs per broker, the serial added latency in Redis round trips,
 * and the storage sizes.
 */
export function targets(
  consume: readonly ConsumeSummary[],
  latency: { summary: readonly LatencySummary[]; pings: PingSummary } | undefined,
  storage: readonly StorageFigure[] | undefined,
): Target[] {
  const out: Target[] = [];
  const add = (
    target: string,
    figure: number | undefined,
    threshold: number,
    kind: 'min' | 'max',
    basis?: string,
  ) => {
    const f = figure ?? Number.NaN;
    const met =
      Number.isFinite(f) && Number.isFinite(threshold)
        ? kind === 'min'
          ? f >= threshold
          : f <= threshold
        : undefined;
    out.push({ target, figure: f, threshold, kind, ...(basis ? { basis } : {}), met });
  };
  for (const broker of ['kafka', 'rabbitmq'] as const) {
    if (!consume.some((r) => r.broker === broker)) continue;
    const row = (variant: ConsumeSummary['variant']) =>
      consume.find((r) => r.broker === broker && r.variant === variant);
    add(`${broker}: sdk-redis / raw, msgs/s`, row('sdk-redis')?.vsRaw, 0.9, 'min');
    add(`${broker}: sdk-redis / powertools, msgs/s`, row('sdk-redis')?.vsPowertools, 2.5, 'min');
    add(`${broker}: sdk-memory / raw, msgs/s`, row('sdk-memory')?.vsRaw, 0.97, 'min');
    add(`${broker}: sdk-redis-cluster / raw, msgs/s`, row('sdk-redis-cluster')?.vsRaw, 0.8, 'min');
    add(`${broker}: sdk-redis Redis CPU us/msg`, row('sdk-redis')?.serverUsPerMsg, 6, 'max');
    add(
      `${broker}: sdk-redis-cluster Redis CPU us/msg (3 masters)`,
      row('sdk-redis-cluster')?.serverUsPerMsg,
      6,
      'max',
    );
    add(`${broker}: sdk-redis store calls/msg`, row('sdk-redis')?.storeCallsPerMsg, 0.1, 'max');
  }
  if (latency) {
    const rtt = latency.pings.redisP50Us;
    add(
      'serial: sdk-redis +p50 us',
      latency.summary.find((r) => r.variant === 'sdk-redis')?.addedP50Us,
      2 * rtt,
      'max',
      `2 x PING ${Number.isFinite(rtt) ? rtt.toFixed(1) : '-'} us`,
    );
  }
  if (storage) {
    const get = (name: string) => storage.find((f) => f.figure === name)?.bytes;
    add('redis bytes per long-term marker', get('redis long-term marker, used_memory'), 24, 'max');
    add('redis bytes per COMPLETED key (small result)', get('redis COMPLETED key, used_memory'), 120, 'max');
  }
  return out;
}

export function targetsTable(rows: readonly Target[]): string {
  const threshold = (t: Target) => {
    const n = Number.isFinite(t.threshold)
      ? Number.isInteger(t.threshold * 100)
        ? String(t.threshold)
        : t.threshold.toFixed(1)
      : '-';
    return `${t.kind === 'min' ? '>=' : '<='} ${n}${t.basis ? ` (${t.basis})` : ''}`;
  };
  return table(
    [
      ['target', 0],
      ['figure', 2],
      ['wanted', 0],
      ['met', 0],
    ],
    rows.map((t) => [t.target, t.figure, threshold(t), t.met === undefined ? 'n/a' : t.met ? 'yes' : 'NO']),
  );
}

/** One line per profile: CPU per message and the share of the main layers. */
export function profileTable(rows: readonly ProfileSummary[]): string {
  const share = (p: ProfileSummary, test: (name: string) => boolean) =>
    p.byPackage.filter((b) => test(b.name)).reduce((sum, b) => sum + b.percent, 0);
  const clients =
    /^(kafkajs|amqplib|amqp-connection-manager|ioredis|redis-parser|@redis\/client|mongodb|denque)$/;
  return table(
    [
      ['run', 0],
      ['CPU us/msg', 1],
      ['idle %', 1],
      ['@exactly-once %', 1],
      ['powertools %', 1],
      ['clients %', 1],
      ['node+native %', 1],
      ['GC %', 1],
      ['other %', 1],
    ],
    rows.map((p) => {
      const idle = share(p, (n) => n === '(idle)');
      const sdk = share(p, (n) => n.startsWith('@exactly-once/'));
      const pt = share(p, (n) => n.startsWith('@aws-lambda-powertools/'));
      const client = share(p, (n) => clients.test(n));
      const node = share(p, (n) => n === 'node internals' || n === '(native)' || n === '(program)');
      const gc = share(p, (n) => n === '(garbage collector)');
      return [
        p.label,
        p.busyUsPerMsg ?? Number.NaN,
        idle,
        sdk,
        pt,
        client,
        node,
        gc,
        100 - idle - sdk - pt - client - node - gc,
      ];
    }),
  );
}
