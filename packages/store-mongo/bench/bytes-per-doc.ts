/**
 * Bytes per COMPLETED record with a tiny result, written through the real store (begin + complete),
 * as the server reports them (collStats/dbStats) and as BSON (`BSON.calculateObjectSize`, which is
 * what MongoDB's collStats `size` adds up, before compression), extrapolated to 30 M records.
 *
 *   npx tsx --conditions=@exactly-once/source packages/store-mongo/bench/bytes-per-doc.ts
 *
 * Env: EO_MONGO_URL (default mongodb://127.0.0.1:27017), EO_BENCH_DOCS (default 100000),
 * EO_BENCH_COLLECTIONS (default 1 on MongoDB; on FerretDB 1.x one per 200 records, because there
 * every conditional write scans its whole collection; runs with 1000 collections of 100 records
 * hit SQLITE_BUSY within two minutes), EO_BENCH_CONCURRENCY (default 32; 1 on FerretDB
 * 1.x, whose SQLite writers share one lock per database and give up with SQLITE_BUSY after 10 s).
 * A StoreUnavailableError is retried, as the pipeline would.
 * The database is dropped afterwards.
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { BSON, type Document, MongoClient } from 'mongodb';
import { elementId } from '../src/codec.js';
import { createMongoStore, type MongoProcessedStore } from '../src/index.js';
import { retried, retries } from './retried.js';

const url = process.env.EO_MONGO_URL ?? 'mongodb://127.0.0.1:27017';
const total = Number(process.env.EO_BENCH_DOCS ?? 100_000);
const TARGET = 30_000_000;
const out = (line = '') => process.stdout.write(`${line}\n`);

const client = new MongoClient(url);
await client.connect();
const db = client.db(`eo_bench_bytes_${Date.now().toString(36)}`);
const info = await db.command({ buildInfo: 1 });
const ferret = typeof info.ferretdbVersion === 'string' ? String(info.ferretdbVersion) : undefined;
const concurrency = Number(process.env.EO_BENCH_CONCURRENCY ?? (ferret?.startsWith('v1.') ? 1 : 32));
const collections = Number(
  process.env.EO_BENCH_COLLECTIONS ?? (ferret?.startsWith('v1.') ? Math.ceil(total / 200) : 1),
);

try {
  const stores: MongoProcessedStore[] = Array.from({ length: collections }, (_, i) =>
    createMongoStore({ db, collectionName: `eo_records_${i}` }),
  );
  // What a pipeline writes: a scoped key, a sha256 fingerprint, a trace reference, a tiny result.
  const result = new TextEncoder().encode('{"ok":true}');
  const hex = (bytes: number) => randomBytes(bytes).toString('hex');
  let next = 0;
  let failure: unknown;
  const started = performance.now();
  const worker = async () => {
    for (let i = next++; i < total && failure === undefined; i = next++) {
      const store = stores[i % collections] as MongoProcessedStore;
      const key = `shop:billing:${randomUUID()}`;
      const fingerprint = createHash('sha256').update(key).digest('hex');
      const traceId = `${hex(16)}-${hex(8)}`;
      const begun = await retried(() =>
        store.begin({ key, fingerprint, owner: 'bench-worker-1', leaseMs: 60_000, traceId }),
      );
      if (begun.status !== 'acquired') throw new Error(`begin: ${begun.status}`);
      const request = { key, fence: begun.fence, outgoing: [], retentionMs: 7 * 24 * 3600_000, traceId };
      const ok = await retried(() =>
        store.complete({ ...request, result: { kind: 'inline', data: result } }),
      );
      // 'lost' after a retry: the first attempt may have been applied after all.
      if (ok !== 'ok' && (await store.get(key))?.state !== 'COMPLETED') throw new Error('complete lost');
    }
  };
  // Every worker settles before the database is dropped: FerretDB must not lose files under a write.
  await Promise.all(
    Array.from({ length: concurrency }, () =>
      worker().catch((error: unknown) => {
        failure ??= error;
      }),
    ),
  );
  if (failure !== undefined) throw failure;
  const seconds = (performance.now() - started) / 1000;

  let count = 0;
  let size = 0;
  let storageSize = 0;
  let indexSize = 0;
  for (const store of stores) {
    const stats = await db.command({ collStats: store.collection.collectionName });
    count += Number(stats.count);
    size += Number(stats.size);
    storageSize += Number(stats.storageSize);
    indexSize += Number(stats.totalIndexSize);
  }
  const dbStats: Document = await db.command({ dbStats: 1 });
  // A record is its key's head and its chain's elements (a lease, then the COMPLETED element).
  const records = stores[0] as MongoProcessedStore;
  const heads = await records.collection
    .find({ c: { $exists: true }, k: { $exists: false } })
    .limit(200)
    .toArray();
  const sampleBson = async (): Promise<number> => {
    let bytes = 0;
    for (const head of heads) {
      const chain = String(head.c);
      const ids = [1, 2, 3].map((position) => elementId(chain, position));
      const elements = await records.collection.find({ _id: { $in: ids } }).toArray();
      bytes += [head, ...elements].reduce((sum, doc) => sum + BSON.calculateObjectSize(doc), 0);
    }
    return bytes / heads.length;
  };
  const bson = await sampleBson();
  // The sweeper's pass once `finishedLeaseMs` has gone by (here 0): each finished lease becomes a
  // tombstone, which is what a record weighs for the rest of its retention.
  const sweepers = stores.map((store) =>
    createMongoStore({ db, collectionName: store.collection.collectionName, finishedLeaseMs: 0 }),
  );
  for (const sweeper of sweepers) await retried(() => sweeper.sweepExpired());
  const swept = await sampleBson();
  let sweptSize = 0;
  for (const store of stores) {
    const stats = await db.command({ collStats: store.collection.collectionName });
    sweptSize += Number(stats.size);
  }

  const perDoc = (bytes: number) => bytes / total;
  const at30M = (bytes: number) => `${((perDoc(bytes) * TARGET) / 1024 ** 3).toFixed(1)} GiB`;
  out(`server: ${ferret === undefined ? `MongoDB ${info.version}` : `FerretDB ${ferret}`} at ${url}`);
  out(
    `records: ${total} COMPLETED (${count} documents) in ${collections} collection(s), ${(total / seconds).toFixed(0)}/s, ${retries.count} retries`,
  );
  out(`sample head: ${JSON.stringify(heads[0])}`);
  out();
  out('                               bytes/record   at 30 M');
  const row = (label: string, bytes: number) =>
    out(
      `${label.padEnd(30)} ${bytes.toFixed(0).padStart(12)}   ${((bytes * TARGET) / 1024 ** 3).toFixed(1)} GiB`,
    );
  row('BSON (calculateObjectSize)', bson);
  row('BSON after the sweeper', swept);
  row('collStats size', perDoc(size));
  row('collStats size after sweeper', perDoc(sweptSize));
  row('collStats storageSize', perDoc(storageSize));
  row('collStats totalIndexSize', perDoc(indexSize));
  row('dbStats totalSize', perDoc(Number(dbStats.totalSize)));
  out();
  out(`dbStats: ${JSON.stringify(dbStats)}`);
  out(`at 30 M, data + indexes as reported: ${at30M(storageSize + indexSize)}`);
} finally {
  await db.dropDatabase();
  await client.close();
}
