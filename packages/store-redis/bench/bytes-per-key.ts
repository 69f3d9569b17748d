/**
 * Memory per processed key, measured on a real server through the real scripts.
 *
 *   npx tsx --conditions=@exactly-once/source packages/store-redis/bench/bytes-per-key.ts [N] [--plain] [--chunk C] [--blob]
 *
 * Writes N COMPLETED records (scoped key `orders:billing:<uuid>`, sha256 fingerprint, trace ref,
 * an 11-byte inline result, no outgoing messages) under a fresh prefix in DB 15 of EO_REDIS_URL
 * (default redis://127.0.0.1:6379), reads INFO used_memory before and after, then compacts them
 * into markers and measures again; with --plain, the store has no compactAfterMs (no index, no
 * markers). With --chunk C, records are written and compacted C at a time, so N markers (30M) can
 * be measured without holding N full records; the record figures are then the first chunk's.
 * With --blob (and --plain), each result is a blob pointer (an fs blob's uri, size and sha256)
 * instead, and `complete` indexes it for blob collection: what a record with a blob result costs.
 * Deletes only its own keys at the end. Run it on an otherwise
 * idle server: used_memory is server-wide.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import { createRedisStore } from '../src/index.js';
import { deletePrefix } from './own-keys.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    plain: { type: 'boolean', default: false },
    chunk: { type: 'string' },
    blob: { type: 'boolean', default: false },
  },
});
const n = Number(positionals[0] ?? process.env.EO_BENCH_N ?? 1_000_000);
const plain = values.plain;
const chunk = values.chunk === undefined ? n : Number(values.chunk);
const url = process.env.EO_REDIS_URL ?? 'redis://127.0.0.1:6379';
const client = new Redis(url, { db: 15, maxRetriesPerRequest: 1 });
// As short as the default `eo`, so the figures hold for it; random, so runs never collide.
const keyPrefix = `b${randomBytes(1).toString('hex')}`;
const store = createRedisStore({ client, keyPrefix, ...(plain ? {} : { compactAfterMs: 0 }) });
const inline = { kind: 'inline' as const, data: new TextEncoder().encode('{"ok":true}') };
// A pointer as the fs blob store makes one: `fs:<32 hex>`, the size and the content's sha256.
const blobResult = () => ({
  kind: 'blob' as const,
  pointer: {
    uri: `fs:${randomBytes(16).toString('hex')}`,
    size: 250_000,
    sha256: randomBytes(32).toString('hex'),
  },
});
if (values.blob && !plain) throw new Error('--blob measures records only: pass --plain too');
const traceId = `${randomBytes(16).toString('hex')}-${randomBytes(8).toString('hex')}`;
const fingerprint = randomBytes(32).toString('hex');
const retentionMs = 7 * 86_400_000;

async function usedMemory(): Promise<number> {
  const info = await client.info('memory');
  return Number(/used_memory:(\d+)/.exec(info)?.[1]);
}

async function writeOne(i: number): Promise<void> {
  const key = `orders:billing:${randomUUID()}`;
  const begun = await store.begin({ key, fingerprint, owner: `worker-${i % 16}`, leaseMs: 60_000, traceId });
  if (begun.status !== 'acquired') throw new Error(`key ${i}: ${begun.status}`);
  const result = values.blob ? blobResult() : inline;
  const done = await store.complete({ key, fence: begun.fence, result, outgoing: [], retentionMs, traceId });
  if (done !== 'ok') throw new Error(`key ${i}: complete ${done}`);
}

try {
  await store.checkServer();
  const base = await usedMemory();
  const started = performance.now();
  const window = 2000;
  const writeChunk = async (from: number, count: number) => {
    for (let i = from; i < from + count; i += window) {
      await Promise.all(
        Array.from({ length: Math.min(window, from + count - i) }, (_, j) => writeOne(i + j)),
      );
    }
  };
  await writeChunk(0, Math.min(chunk, n));
  const writeSeconds = (performance.now() - started) / 1000;
  const written = Math.min(chunk, n);
  const withRecords = await usedMemory();
  const perRecord = (withRecords - base) / written;
  console.log(`N=${written} keys, written in ${writeSeconds.toFixed(1)} s (begin + complete each)`);
  if (plain && values.blob) {
    console.log(
      `COMPLETED records with a blob result, blob index included: ${perRecord.toFixed(1)} bytes/key`,
    );
  } else if (plain) {
    console.log(`COMPLETED records (no compaction index): ${perRecord.toFixed(1)} bytes/key`);
  } else {
    // Records written by a store with compactAfterMs are also indexed; sample the index apart.
    let indexBytes = 0;
    for (let tag = 0; tag < 65_536; tag += 4096) {
      const key = `${keyPrefix}:{${tag.toString(16).padStart(4, '0')}}i`;
      indexBytes += Number((await client.memory('USAGE', key)) ?? 0);
    }
    console.log(`COMPLETED records + compaction index: ${perRecord.toFixed(1)} bytes/key`);
    console.log(
      `  of which index (sampled 16 of 65,536 tags): ~${((indexBytes * 4096) / written).toFixed(1)} bytes/key`,
    );
    let compactSeconds = 0;
    let compacted = 0;
    for (let from = written; ; from += chunk) {
      const compactStart = performance.now();
      compacted += (await store.compactCompleted({ batchSize: 200, concurrency: 64 })).compacted;
      compactSeconds += (performance.now() - compactStart) / 1000;
      if (from >= n) break;
      await writeChunk(from, Math.min(chunk, n - from));
      if (chunk < n) console.log(`  ${Math.min(from + chunk, n)} written, ${compacted} compacted`);
    }
    const withMarkers = await usedMemory();
    console.log(`compacted ${compacted} in ${compactSeconds.toFixed(1)} s`);
    console.log(`markers: ${((withMarkers - base) / n).toFixed(1)} bytes/key`);
  }
} finally {
  await deletePrefix(client, keyPrefix);
  await client.quit();
}
