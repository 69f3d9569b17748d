/**
 * Does throughput fall as records accumulate? Per server, in a fresh database, COMPLETED records are
 * written through the real store (begin + complete of new keys, sha256 fingerprint, trace ref, an
 * 11-byte inline result) up to each size of `--records`; at each size, `--ops` operations of two
 * kinds are timed, each at `--concurrency` (StoreUnavailableError is retried, as the pipeline would):
 *
 * - new keys: begin + complete of keys never seen (one message each);
 * - duplicates: begin of a key that is COMPLETED (answers `duplicate`), keys drawn at random from
 *   the records written before the timed operations.
 *
 *   npx tsx --conditions=@exactly-once/source packages/store-mongo/bench/accumulation.ts \
 *     [--servers ferretdb,mongo-java] [--records 10000,100000] [--ops 2000] [--concurrency 32] \
 *     [--sweep-ms 60000] [--json]
 *
 * Flags win over env: EO_BENCH_SERVERS, EO_BENCH_RECORDS, EO_BENCH_OPS, EO_BENCH_CONCURRENCY,
 * EO_BENCH_SWEEP_MS. Servers: `ferretdb` at EO_MONGO_URL (default mongodb://127.0.0.1:27017) and
 * `mongo-java` (mongo-java-server) at EO_MONGO_JAVA_URL (default mongodb://127.0.0.1:27018), as
 * `scripts/infra.sh` starts them. The store's sweeper runs every `--sweep-ms` (default 60 s, as
 * the README deploys it; 0: none): nothing expires here, so a sweep only reads, but that read is
 * part of what a deployment pays as records accumulate. The load is `os.loadavg()[0]` before the
 * timed operations of a size and after them. Progress goes to stderr; `--json` adds a last line
 * with every figure. Each database is dropped afterwards, on SIGINT too.
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { type Document, MongoClient } from 'mongodb';
import { createMongoStore, type MongoProcessedStore } from '../src/index.js';
import { retried, retries } from './retried.js';

const SERVERS = {
  ferretdb: process.env.EO_MONGO_URL ?? 'mongodb://127.0.0.1:27017',
  'mongo-java': process.env.EO_MONGO_JAVA_URL ?? 'mongodb://127.0.0.1:27018',
} as const;
type ServerName = keyof typeof SERVERS;

const { values: flags } = parseArgs({
  options: {
    servers: { type: 'string' },
    records: { type: 'string' },
    ops: { type: 'string' },
    concurrency: { type: 'string' },
    'sweep-ms': { type: 'string' },
    json: { type: 'boolean', default: false },
  },
});

const positive = (name: string, value: string): number => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0)
    throw new Error(`${name}: expected a non-negative integer, got ${value}`);
  return n;
};
const servers = (flags.servers ?? process.env.EO_BENCH_SERVERS ?? 'ferretdb,mongo-java')
  .split(',')
  .map((s) => s.trim()) as ServerName[];
for (const s of servers) {
  if (!(s in SERVERS)) throw new Error(`--servers: unknown ${s} (one of ${Object.keys(SERVERS).join(', ')})`);
}
const sizes = (flags.records ?? process.env.EO_BENCH_RECORDS ?? '10000,100000')
  .split(',')
  .map((s) => positive('--records', s.trim()));
if (sizes.some((n, i) => i > 0 && n <= (sizes[i - 1] as number))) {
  throw new Error('--records: sizes must increase');
}
const ops = positive('--ops', flags.ops ?? process.env.EO_BENCH_OPS ?? '2000');
const concurrency = Math.max(
  1,
  positive('--concurrency', flags.concurrency ?? process.env.EO_BENCH_CONCURRENCY ?? '32'),
);
const sweepMs = positive('--sweep-ms', flags['sweep-ms'] ?? process.env.EO_BENCH_SWEEP_MS ?? '60000');

const out = (line = '') => process.stdout.write(`${line}\n`);
const note = (line: string) => process.stderr.write(`${line}\n`);
const load1 = () => Number((loadavg()[0] ?? 0).toFixed(2));

let interrupted = false;
process.once('SIGINT', () => {
  interrupted = true;
  note('interrupted: stopping the workers, then dropping the database');
});

/**
 * Runs `op(i)` for i in [0, count) on `concurrency` workers; seconds taken. Every worker settles
 * before it returns (or throws): the database must not be dropped under a write.
 */
async function pool(count: number, op: (i: number) => Promise<void>): Promise<number> {
  let next = 0;
  let failure: unknown;
  const started = performance.now();
  const worker = async () => {
    for (let i = next++; i < count && failure === undefined; i = next++) {
      if (interrupted) throw new Error('interrupted');
      await op(i);
    }
  };
  await Promise.all(
    Array.from({ length: Math.min(concurrency, count) }, () =>
      worker().catch((error: unknown) => {
        failure ??= error;
      }),
    ),
  );
  if (failure !== undefined) throw failure;
  return (performance.now() - started) / 1000;
}

// What a pipeline writes: a scoped key, a sha256 fingerprint, a trace reference, a tiny result.
const RESULT = new TextEncoder().encode('{"ok":true}');
const fingerprintOf = (key: string) => createHash('sha256').update(key).digest('hex');
const hex = (bytes: number) => randomBytes(bytes).toString('hex');

/** One message with a new key: begin + complete. The key is remembered once COMPLETED. */
async function newKey(store: MongoProcessedStore, keys: string[]): Promise<void> {
  const key = `shop:billing:${randomUUID()}`;
  const fingerprint = fingerprintOf(key);
  const traceId = `${hex(16)}-${hex(8)}`;
  const begun = await retried(() =>
    store.begin({ key, fingerprint, owner: 'bench-worker-1', leaseMs: 60_000, traceId }),
  );
  if (begun.status !== 'acquired') throw new Error(`begin of a new key: ${begun.status}`);
  const request = { key, fence: begun.fence, outgoing: [], retentionMs: 7 * 24 * 3600_000, traceId };
  const ok = await retried(() => store.complete({ ...request, result: { kind: 'inline', data: RESULT } }));
  // 'lost' after a retry: the first attempt may have been applied after all.
  if (ok !== 'ok' && (await store.get(key))?.state !== 'COMPLETED') throw new Error('complete lost');
  keys.push(key);
}

/** A redelivery of a COMPLETED key: begin answers `duplicate`. */
async function duplicate(store: MongoProcessedStore, key: string): Promise<void> {
  const begun = await retried(() =>
    store.begin({ key, fingerprint: fingerprintOf(key), owner: 'bench-worker-2', leaseMs: 60_000 }),
  );
  if (begun.status !== 'duplicate') throw new Error(`begin of a completed key: ${begun.status}`);
}

/** `count` distinct keys drawn at random (with repeats only if there are fewer keys than that). */
function sample(keys: readonly string[], count: number): string[] {
  if (count > keys.length) return Array.from({ length: count }, (_, i) => keys[i % keys.length] as string);
  const picked = new Set<number>();
  while (picked.size < count) picked.add(Math.floor(Math.random() * keys.length));
  return [...picked].map((i) => keys[i] as string);
}

interface Row {
  server: string;
  /** COMPLETED keys in the collection when the timed operations start. */
  records: number;
  /** Documents in the collection then (heads and chain elements). */
  docs: number;
  /** Writing the records from the previous size up to this one, keys/s. */
  fillRate: number;
  newKeyRate: number;
  duplicateRate: number;
  /** StoreUnavailableError retries during the timed operations. */
  retries: number;
  loadStart: number;
  loadEnd: number;
}

function describe(info: Document): string {
  if (typeof info.ferretdbVersion === 'string') return `FerretDB ${info.ferretdbVersion}`;
  if (!('gitVersion' in info)) return `mongo-java-server (wire ${info.version})`;
  return `MongoDB ${info.version}`;
}

async function measure(name: ServerName): Promise<Row[]> {
  const url = SERVERS[name];
  const client = new MongoClient(url, {
    serverSelectionTimeoutMS: 10_000,
    maxPoolSize: Math.max(100, concurrency + 8),
  });
  await client.connect();
  const db = client.db(`eo_bench_accum_${Date.now().toString(36)}_${randomBytes(3).toString('hex')}`);
  const rows: Row[] = [];
  try {
    const server = describe(await db.command({ buildInfo: 1 }));
    note(`${name}: ${server} at ${url}, database ${db.databaseName}`);
    const store = createMongoStore({ db });
    await store.ensureIndexes();
    if (sweepMs > 0) store.startSweeper(sweepMs);
    const keys: string[] = [];
    try {
      for (const size of sizes) {
        const from = keys.length;
        let lastNote = performance.now();
        const fillSeconds = await pool(Math.max(0, size - from), async () => {
          await newKey(store, keys);
          if (performance.now() - lastNote > 10_000) {
            lastNote = performance.now();
            note(`${name}: ${keys.length}/${size} records`);
          }
        });
        const fillRate = (keys.length - from) / fillSeconds;
        note(`${name}: ${keys.length} records (${fillRate.toFixed(0)}/s while filling)`);
        const records = keys.length;
        const docs = await store.collection.estimatedDocumentCount();
        const retriesBefore = retries.count;
        const loadStart = load1();
        const newSeconds = await pool(ops, () => newKey(store, keys));
        const picks = sample(keys.slice(0, records), ops);
        const dupSeconds = await pool(ops, (i) => duplicate(store, picks[i] as string));
        const row: Row = {
          server: name,
          records,
          docs,
          fillRate,
          newKeyRate: ops / newSeconds,
          duplicateRate: ops / dupSeconds,
          retries: retries.count - retriesBefore,
          loadStart,
          loadEnd: load1(),
        };
        rows.push(row);
        note(
          `${name} @ ${records}: new keys ${row.newKeyRate.toFixed(0)} msgs/s, ` +
            `duplicates ${row.duplicateRate.toFixed(0)} msgs/s (load ${row.loadStart} -> ${row.loadEnd})`,
        );
      }
    } finally {
      await store.close();
    }
    return rows;
  } finally {
    await db.dropDatabase().catch((error: unknown) => note(`drop ${db.databaseName}: ${String(error)}`));
    await client.close();
  }
}

function table(rows: readonly Row[]): string {
  const columns: [string, (r: Row) => string][] = [
    ['server', (r) => r.server],
    ['records', (r) => String(r.records)],
    ['docs', (r) => String(r.docs)],
    ['fill keys/s', (r) => r.fillRate.toFixed(0)],
    ['new-key msgs/s', (r) => r.newKeyRate.toFixed(0)],
    ['duplicate msgs/s', (r) => r.duplicateRate.toFixed(0)],
    ['retries', (r) => String(r.retries)],
    ['load start', (r) => r.loadStart.toFixed(2)],
    ['load end', (r) => r.loadEnd.toFixed(2)],
  ];
  const cells = rows.map((r) => columns.map(([, f]) => f(r)));
  const widths = columns.map(([title], i) =>
    Math.max(title.length, ...cells.map((c) => (c[i] ?? '').length)),
  );
  const line = (c: string[]) =>
    c.map((v, i) => (i === 0 ? v.padEnd(widths[i] ?? 0) : v.padStart(widths[i] ?? 0))).join('  ');
  const head = line(columns.map(([t]) => t));
  return [head, '-'.repeat(head.length), ...cells.map(line)].join('\n');
}

const startLoad = loadavg().map((l) => l.toFixed(2));
const rows: Row[] = [];
for (const name of servers) rows.push(...(await measure(name)));
out(
  `store-mongo as records accumulate: ${ops} timed operations per size and kind, concurrency ${concurrency}, ` +
    `sweeper ${sweepMs > 0 ? `every ${sweepMs} ms` : 'off'}; load at start ${startLoad.join(' ')}, ` +
    `at end ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
);
out(table(rows));
out('  new-key: begin + complete of a key never seen; duplicate: begin of a COMPLETED key (random over all');
out('  records); docs: estimatedDocumentCount (heads + chain elements); load: 1-minute load average.');
if (flags.json) out(JSON.stringify({ servers, sizes, ops, concurrency, sweepMs, rows }));
