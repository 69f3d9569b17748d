/**
 * Child process of large-result.test.ts: streams a generated result of EO_RESULT_BYTES through the
 * pipeline (memory record store; fs blob store in EO_BLOB_DIR, or GridFS in EO_MONGO_DB), answers
 * a duplicate, reads the blob back by pointer, and prints one JSON line: the peak RSS growth over
 * the baseline taken before the run, and the hashes. Run alone so the RSS is this run's only.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import {
  type BlobStore,
  createFsBlobStore,
  createMemoryStore,
  createProcessor,
  Headers,
  resultStream,
} from '@exactly-once/core';
import { createGridFsBlobStore } from '@exactly-once/store-mongo';
import { MongoClient } from 'mongodb';

const size = Number(process.env.EO_RESULT_BYTES);
const CHUNK = 1024 * 1024;
const rss = () => process.memoryUsage.rss();

let client: MongoClient | undefined;
let blobs: BlobStore;
if (process.env.EO_MONGO_DB) {
  client = new MongoClient(process.env.EO_MONGO_URL ?? 'mongodb://127.0.0.1:27017');
  await client.connect();
  blobs = createGridFsBlobStore({ db: client.db(process.env.EO_MONGO_DB) });
} else {
  blobs = createFsBlobStore({ directory: process.env.EO_BLOB_DIR as string });
}

// Baseline after everything is loaded and connected, with a settled heap.
globalThis.gc?.();
const baseline = rss();
let peak = baseline;
const sample = () => {
  const now = rss();
  if (now > peak) peak = now;
};
const timer = setInterval(sample, 5);

const expected = createHash('sha256');
async function* generate(): AsyncGenerator<Buffer> {
  for (let offset = 0, i = 0; offset < size; offset += CHUNK, i++) {
    // A fresh buffer per chunk, as a real producer makes them; distinct content per chunk.
    const chunk = Buffer.allocUnsafe(Math.min(CHUNK, size - offset)).fill(i % 251);
    chunk.writeUInt32BE(i, 0);
    expected.update(chunk);
    sample();
    yield chunk;
  }
}

const processor = createProcessor({
  consumer: 'reports',
  store: createMemoryStore(),
  blobs,
  retentionCheck: 'off',
  // A slow disk must not lose the lease: the heartbeat runs while the result uploads.
  leaseMs: 60_000,
  handler: () => resultStream(Readable.from(generate())),
});
const delivery = {
  body: new TextEncoder().encode(JSON.stringify({ report: 'yearly' })),
  headers: { [Headers.IdempotencyKey]: 'report-2026' },
  destination: 'reports',
  system: 'test',
};
const first = await processor.process(delivery);
const duplicate = await processor.process(delivery);
if (first.action !== 'ack' || first.result?.kind !== 'blob')
  throw new Error(`unexpected ${JSON.stringify(first)}`);
const pointer = first.result.pointer;
const peakWrite = peak;
globalThis.gc?.();
const readBaseline = rss();

// Read it back by pointer, streaming; the store verifies size and sha256 at the end.
const read = createHash('sha256');
let readBytes = 0;
for await (const chunk of blobs.stream(pointer)) {
  read.update(chunk);
  readBytes += chunk.byteLength;
  sample();
}
clearInterval(timer);
sample();
await client?.close();
process.stdout.write(
  `${JSON.stringify({
    baseline,
    peak,
    growth: peak - baseline,
    writeGrowth: peakWrite - baseline,
    readBaseline,
    pointer,
    expectedSha256: expected.digest('hex'),
    readSha256: read.digest('hex'),
    readBytes,
    duplicate:
      duplicate.action === 'ack' ? { outcome: duplicate.outcome, result: duplicate.result } : duplicate,
  })}\n`,
);
