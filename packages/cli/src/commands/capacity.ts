/**
 * `capacity`: Redis memory for a retention policy, split between full records (kept for the
 * record window, answering duplicates with their result) and compaction markers (the rest of the
 * retention, answering "already processed"). Defaults are `used_memory` figures measured with
 * the Redis store on Redis 7.0 (store-redis README "Memory figures", bench/RESULTS.md "Storage").
 * With `--tiered-hot`, the tiered store instead: Redis for the hot window, MongoDB for the whole
 * retention (BSON figures measured with the MongoDB store, store-mongo README "Sizes").
 */
import { ConfigError, createMemoryStore, resolveProcessorOptions } from '@exactly-once/core';
import { UsageError } from '../errors.js';
import { formatBytes, formatCount, formatSpan, type Io, printJson, printLines, table } from '../output.js';

/** A COMPLETED record (11-byte result, sha256 fingerprint, trace ref), no compaction: 240.8 B/key at 1M keys. */
export const RECORD_BYTES = 241;
/** The same record with compaction on (its entry in the compaction index): 311.6 B/key at 1M keys. */
export const RECORD_WITH_INDEX_BYTES = 312;
/**
 * One compaction marker: an 18-byte entry in its slot's bucket, with allocator rounding. Measured
 * 37.9 B/key at 100K markers, 21.7 at 1M, 20.3 at 30M; fit: 20.2 B + 134 B per bucket, rounded up.
 */
export const MARKER_BYTES = 21;
/** Fixed cost of one marker bucket (key, value object, dictionary and expiry entries, header). */
export const MARKER_BUCKET_BYTES = 134;
/** A marker's entry in its bucket (id, expiry, fingerprint hash), before allocator rounding. */
export const MARKER_ENTRY_BYTES = 18;
/** Marker buckets: one per cluster slot that the 65,536 hash tags hash to. */
export const MARKER_BUCKETS = 13_152;
/** Bucket size above which the warning says what each compaction call rewrites (a bucket is rewritten whole). */
export const LARGE_BUCKET_BYTES = 64 * 1024;
/**
 * The maintenance interval the estimate suggests: an hour, or the record window when shorter. A
 * record stays whole until the pass after its window, so records count for the window plus it.
 */
export const MAINTENANCE_EVERY_MS = 3_600_000;
const DAY_MS = 86_400_000;

/**
 * A COMPLETED record in the MongoDB store: its head, its lease element cut to a tombstone by the
 * sweeper (`finishedLeaseMs`, 1 hour) and its COMPLETED element, 346 B of BSON with an 11-byte
 * result and a 49-character key (545 B in its first hour; store-mongo README "Sizes").
 */
export const MONGO_RECORD_BYTES = 346;
/** Documents a COMPLETED record takes in the MongoDB store (head, lease, COMPLETED element). */
export const MONGO_RECORD_DOCUMENTS = 3;

export interface CapacityInput {
  readonly keysPerDay: number;
  readonly retentionDays: number;
  /** Days a record is kept whole before compaction. @defaultValue 1 */
  readonly recordWindowDays?: number;
  /** Overrides the per-record figure. */
  readonly recordBytes?: number;
  /** Overrides the per-marker figure (then no bucket overhead is added). */
  readonly markerBytes?: number;
}

export interface CapacityEstimate {
  readonly keysPerDay: number;
  readonly retentionDays: number;
  readonly recordWindowDays: number;
  readonly compaction: boolean;
  /** `startMaintenance`'s `everyMs` assumed (with compaction): records count for the window plus it. */
  readonly maintenanceEveryMs: number;
  readonly records: { readonly count: number; readonly bytesPerRecord: number; readonly bytes: number };
  readonly markers: {
    readonly count: number;
    /** Total marker bytes divided by the markers (bucket overhead included). */
    readonly bytesPerMarker: number;
    readonly bucketOverheadBytes: number;
    readonly bytes: number;
  };
  readonly totalBytes: number;
  /** The same retention with full records only (no compaction). */
  readonly recordsOnlyBytes: number;
  readonly warnings: string[];
}

export function estimateCapacity(input: CapacityInput): CapacityEstimate {
  const { keysPerDay, retentionDays } = input;
  if (!(keysPerDay >= 0) || !(retentionDays > 0)) {
    throw new UsageError('--keys-per-day must be >= 0 and --retention > 0');
  }
  const window = Math.min(input.recordWindowDays ?? 1, retentionDays);
  const compaction = window < retentionDays;
  const maintenanceEveryMs = Math.max(1_000, Math.min(MAINTENANCE_EVERY_MS, Math.round(window * DAY_MS)));
  // Whole until the maintenance pass after the window compacts them.
  const whole = compaction ? Math.min(retentionDays, window + maintenanceEveryMs / DAY_MS) : window;
  const recordCount = Math.ceil(keysPerDay * whole);
  const bytesPerRecord = input.recordBytes ?? (compaction ? RECORD_WITH_INDEX_BYTES : RECORD_BYTES);
  // The rest of the retention's keys (not rounded on its own: records + markers = all the keys).
  const markerCount = compaction ? Math.max(0, Math.ceil(keysPerDay * retentionDays) - recordCount) : 0;
  const bucketOverheadBytes =
    input.markerBytes === undefined && markerCount > 0 ? MARKER_BUCKETS * MARKER_BUCKET_BYTES : 0;
  const markerBytes = markerCount * (input.markerBytes ?? MARKER_BYTES) + bucketOverheadBytes;
  const recordBytes = recordCount * bytesPerRecord;
  const warnings: string[] = [];
  const refused = retentionRefusal(retentionDays);
  if (refused !== undefined) warnings.push(refused);
  const bucketBytes = (markerCount / MARKER_BUCKETS) * MARKER_ENTRY_BYTES;
  if (bucketBytes > LARGE_BUCKET_BYTES) {
    warnings.push(
      `about ${formatBytes(bucketBytes)} of markers per bucket: each compaction call rewrites its slot's bucket ` +
        'whole, blocking the server while it copies it, and sends it to replicas and the AOF: run passes rarely (daily)',
    );
  }
  return {
    keysPerDay,
    retentionDays,
    recordWindowDays: window,
    compaction,
    maintenanceEveryMs,
    records: { count: recordCount, bytesPerRecord, bytes: recordBytes },
    markers: {
      count: markerCount,
      bytesPerMarker: markerCount === 0 ? 0 : markerBytes / markerCount,
      bucketOverheadBytes,
      bytes: markerBytes,
    },
    totalBytes: recordBytes + markerBytes,
    recordsOnlyBytes: Math.ceil(keysPerDay * retentionDays) * (input.recordBytes ?? RECORD_BYTES),
    warnings,
  };
}

export interface TieredCapacityInput {
  readonly keysPerDay: number;
  readonly retentionDays: number;
  /** Days the hot Redis keeps a terminal record (`hotRetentionMs`). */
  readonly hotDays: number;
  /** Overrides the hot (Redis) per-record figure. */
  readonly recordBytes?: number;
  /** Overrides the cold (MongoDB) per-record figure, BSON bytes. */
  readonly coldBytes?: number;
}

export interface TieredCapacityEstimate {
  readonly tiered: true;
  readonly keysPerDay: number;
  readonly retentionDays: number;
  readonly hotDays: number;
  /** Redis memory (`used_memory`): the records of the hot window. */
  readonly hot: { readonly count: number; readonly bytesPerRecord: number; readonly bytes: number };
  /** MongoDB data (BSON, before compression and indexes): every record of the retention. */
  readonly cold: {
    readonly count: number;
    readonly documents: number;
    readonly bytesPerRecord: number;
    readonly bytes: number;
  };
  /** The same retention as full records in Redis alone. */
  readonly redisOnlyBytes: number;
  readonly warnings: string[];
}

/** A tiered store: the hot Redis keeps the window's records, the cold MongoDB all of them. */
export function estimateTieredCapacity(input: TieredCapacityInput): TieredCapacityEstimate {
  const { keysPerDay, retentionDays } = input;
  if (!(keysPerDay >= 0) || !(retentionDays > 0) || !(input.hotDays > 0)) {
    throw new UsageError('--keys-per-day must be >= 0, --retention and --tiered-hot > 0');
  }
  const hotDays = Math.min(input.hotDays, retentionDays);
  const all = Math.ceil(keysPerDay * retentionDays);
  const hotCount = Math.ceil(keysPerDay * hotDays);
  const hotBytesPerRecord = input.recordBytes ?? RECORD_BYTES;
  const coldBytesPerRecord = input.coldBytes ?? MONGO_RECORD_BYTES;
  const warnings: string[] = [];
  if (hotDays >= retentionDays) {
    warnings.push(
      'the hot window covers the retention: every duplicate is answered by Redis, and the cold tier only adds its writes (a plain Redis store does the same)',
    );
  }
  return {
    tiered: true,
    keysPerDay,
    retentionDays,
    hotDays,
    hot: { count: hotCount, bytesPerRecord: hotBytesPerRecord, bytes: hotCount * hotBytesPerRecord },
    cold: {
      count: all,
      documents: all * MONGO_RECORD_DOCUMENTS,
      bytesPerRecord: coldBytesPerRecord,
      bytes: all * coldBytesPerRecord,
    },
    redisOnlyBytes: all * hotBytesPerRecord,
    warnings,
  };
}

/**
 * Why consumers with the default retry and redelivery options would refuse `retentionDays` at
 * start (core's retention check), or undefined when they accept it.
 */
function retentionRefusal(retentionDays: number): string | undefined {
  try {
    resolveProcessorOptions({
      consumer: 'capacity',
      store: createMemoryStore(),
      handler: () => undefined,
      retentionMs: Math.round(retentionDays * DAY_MS),
    });
    return undefined;
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    return (
      'with the default retry and redelivery options consumers refuse this retention at start: it must cover ' +
      'the retry schedule, the attempts and redeliveryHorizonMs (1 day by default; core README, "Retention")'
    );
  }
}

/** A duration in days as text: whole days as `N days`, less than a day as a span (`5 s`, `2.5 h`). */
const days = (d: number) => {
  if (d < 1) return formatSpan(d * DAY_MS);
  const shown = Number(d.toFixed(3));
  return `${shown} day${shown === 1 ? '' : 's'}`;
};

export function renderCapacity(e: CapacityEstimate): string[] {
  const perKey = (b: number) => (Number.isInteger(b) ? `${b} B` : `${b.toFixed(1)} B`);
  const rows = [
    ['', 'keys', 'per key', 'memory'],
    ['records', formatCount(e.records.count), perKey(e.records.bytesPerRecord), formatBytes(e.records.bytes)],
  ];
  if (e.compaction) {
    rows.push([
      'markers',
      formatCount(e.markers.count),
      perKey(e.markers.bytesPerMarker),
      formatBytes(e.markers.bytes),
    ]);
  }
  rows.push(['total', formatCount(e.records.count + e.markers.count), '', formatBytes(e.totalBytes)]);
  const head = e.compaction
    ? `Redis memory for ${formatCount(e.keysPerDay)} keys/day kept ${days(e.retentionDays)}: full records for ` +
      `${days(e.recordWindowDays)} (and up to ${formatSpan(e.maintenanceEveryMs)} more, until the maintenance pass that compacts them), ` +
      `compaction markers for the rest`
    : `Redis memory for ${formatCount(e.keysPerDay)} keys/day kept ${days(e.retentionDays)} as full records (no compaction)`;
  const lines = ['', head, '', ...table(rows).map((l) => `  ${l}`), ''];
  if (e.compaction) {
    lines.push(
      `without compaction (full records for ${days(e.retentionDays)}): ${formatBytes(e.recordsOnlyBytes)}`,
    );
    lines.push(
      `store: createRedisStore({ compactAfterMs: ${Math.round(e.recordWindowDays * DAY_MS)} }) with ` +
        `store.startMaintenance({ everyMs: ${e.maintenanceEveryMs} }) running (it compacts);`,
      `consumers: retentionMs: ${Math.round(e.retentionDays * DAY_MS)} (the default keeps 7 days)`,
    );
  }
  const measured = e.records.bytesPerRecord === (e.compaction ? RECORD_WITH_INDEX_BYTES : RECORD_BYTES);
  lines.push(
    measured
      ? `per key: used_memory measured on Redis 7.0 with an 11-byte result (${RECORD_BYTES} B a record, ` +
          `${RECORD_WITH_INDEX_BYTES} B with its compaction index entry; a marker ${MARKER_BYTES} B plus ` +
          `${MARKER_BUCKET_BYTES} B per bucket, ${formatCount(MARKER_BUCKETS)} buckets)`
      : 'per key: as given',
    'larger results, outgoing messages (kept in the record beside it until compaction), steps and in-flight records cost more; leave maxmemory headroom for',
    'fragmentation and replication buffers',
  );
  for (const w of e.warnings) lines.push(`warning: ${w}`);
  return lines.slice(1);
}

export function renderTieredCapacity(e: TieredCapacityEstimate): string[] {
  const perKey = (b: number) => `${b} B`;
  const rows = [
    ['', 'keys', 'per key', 'size', ''],
    [
      'hot (Redis)',
      formatCount(e.hot.count),
      perKey(e.hot.bytesPerRecord),
      formatBytes(e.hot.bytes),
      'memory (used_memory)',
    ],
    [
      'cold (MongoDB)',
      formatCount(e.cold.count),
      perKey(e.cold.bytesPerRecord),
      formatBytes(e.cold.bytes),
      `BSON in ${formatCount(e.cold.documents)} documents, before compression and indexes`,
    ],
  ];
  const ms = (d: number) => Math.round(d * 86_400_000);
  const lines = [
    `Tiered store for ${formatCount(e.keysPerDay)} keys/day kept ${days(e.retentionDays)}: the hot Redis keeps ` +
      `records ${days(e.hotDays)}, the cold MongoDB all ${days(e.retentionDays)}`,
    '',
    ...table(rows).map((l) => `  ${l}`),
    '',
    `Redis alone (full records for ${days(e.retentionDays)}): ${formatBytes(e.redisOnlyBytes)}`,
    `store: createTieredStore({ hot: createRedisStore({ ..., indexBlobs: false }), cold, hotRetentionMs: ${ms(e.hotDays)}, ` +
      `coldRetentionMs: ${ms(e.retentionDays)} }) with cold.startSweeper(60_000) running (it deletes expired records)`,
    e.hot.bytesPerRecord === RECORD_BYTES && e.cold.bytesPerRecord === MONGO_RECORD_BYTES
      ? `per key: measured with an 11-byte result (Redis 7.0 used_memory ${RECORD_BYTES} B; MongoDB store ` +
        `${MONGO_RECORD_BYTES} B of BSON with a 49-character key, ${MONGO_RECORD_DOCUMENTS} documents, 545 B in a record's first hour)`
      : 'per key: as given',
    'longer keys, larger results, outgoing messages, steps, retries and takeovers (one more MongoDB document each) cost more;',
    'MongoDB adds an _id index entry per document and an eo_expiry entry per record, and in-flight leases live in the hot Redis',
  ];
  for (const w of e.warnings) lines.push(`warning: ${w}`);
  return lines;
}

export function capacity(
  io: Io,
  input: CapacityInput | TieredCapacityInput,
  options: { json?: boolean },
): void {
  if ('hotDays' in input) {
    const estimate = estimateTieredCapacity(input);
    if (options.json) printJson(io, estimate);
    else printLines(io, renderTieredCapacity(estimate));
    return;
  }
  const estimate = estimateCapacity(input);
  if (options.json) printJson(io, estimate);
  else printLines(io, renderCapacity(estimate));
}
