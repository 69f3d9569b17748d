/**
 * A 1 GiB handler result streamed through the pipeline into the fs blob store, in a child process
 * so its RSS is the run's alone: peak RSS growth stays under 128 MiB, the duplicate is answered
 * with the pointer, and the blob reads back by pointer with its sha256 verified. GridFS runs the
 * same check with 160 MiB on mongo-java-server: over the RSS bound, so a store that buffered the
 * result would fail it (FerretDB/SQLite took 4 minutes for 64 MiB; it keeps the integrity cases
 * below). Then truncated and altered blobs of both stores fail with BlobIntegrityError when read.
 * No wall-clock assertions: sizes and hashes only.
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import {
  BlobIntegrityError,
  type BlobPointer,
  type BlobStore,
  createFsBlobStore,
  createMemoryStore,
  createProcessor,
  Headers,
  resultStream,
} from '@exactly-once/core';
import { createGridFsBlobStore } from '@exactly-once/store-mongo';
import { Binary, type Document, MongoClient, ObjectId } from 'mongodb';
import { afterAll, describe, expect, it } from 'vitest';
import { workerArgs } from '../support/bundle.js';
import { env } from '../support/env.js';

const run = promisify(execFile);
const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const MONGO_URL = env.mongoUrl;
const MONGO_JAVA_URL = env.mongoJavaUrl;

interface WorkerReport {
  baseline: number;
  peak: number;
  growth: number;
  writeGrowth: number;
  readBaseline: number;
  pointer: BlobPointer;
  expectedSha256: string;
  readSha256: string;
  readBytes: number;
  duplicate: { outcome: string; result: unknown };
}

async function streamInChild(bytes: number, env: Record<string, string>): Promise<WorkerReport> {
  const { stdout } = await run(
    process.execPath,
    ['--expose-gc', ...workerArgs('test/large-result/worker.ts')],
    { env: { ...process.env, ...env, EO_RESULT_BYTES: String(bytes) }, maxBuffer: 1 << 20 },
  );
  return JSON.parse(stdout.trim().split('\n').at(-1) as string) as WorkerReport;
}

function check(report: WorkerReport, bytes: number, label: string): void {
  const mib = (n: number) => (n / MiB).toFixed(1);
  console.log(
    `${label}: ${mib(bytes)} MiB result, RSS baseline ${mib(report.baseline)} MiB, peak ${mib(report.peak)} MiB, growth ${mib(report.growth)} MiB (write phase ${mib(report.writeGrowth)} MiB)`,
  );
  expect(report.pointer.size).toBe(bytes);
  expect(report.pointer.sha256).toBe(report.expectedSha256);
  expect(report.readBytes).toBe(bytes);
  expect(report.readSha256).toBe(report.expectedSha256);
  expect(report.duplicate).toEqual({
    outcome: 'duplicate',
    // A streamed result's blob is its raw bytes, marked so a replay does not read it as JSON.
    result: { kind: 'blob', pointer: report.pointer, raw: true },
  });
  expect(report.growth).toBeLessThan(128 * MiB);
}

const cleanup: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const step of cleanup.reverse()) await step();
});

describe('large results by reference, streamed', () => {
  it('a 1 GiB result goes through the pipeline into the fs blob store with peak RSS growth under 128 MiB', async () => {
    const directory = await mkdtemp(join(tmpdir(), 'eo-1gib-'));
    try {
      const report = await streamInChild(GiB, { EO_BLOB_DIR: directory });
      check(report, GiB, 'fs blob store');
    } finally {
      await rm(directory, { recursive: true, force: true });
    }
  }, 600_000);

  it('a 160 MiB result goes through the pipeline into GridFS (mongo-java-server) with peak RSS growth under 128 MiB', async () => {
    const name = `eo_large_${Date.now().toString(36)}_${randomBytes(3).toString('hex')}`;
    const client = new MongoClient(MONGO_JAVA_URL);
    cleanup.push(async () => {
      const db = client.db(name);
      // mongo-java-server refuses to drop a database whose GridFS collections still hold documents.
      for (const { name: collection } of await db.listCollections({}, { nameOnly: true }).toArray()) {
        await db.collection(collection).deleteMany({});
      }
      await db.dropDatabase();
      await client.close();
    });
    const report = await streamInChild(160 * MiB, { EO_MONGO_DB: name, EO_MONGO_URL: MONGO_JAVA_URL });
    check(report, 160 * MiB, 'GridFS blob store');
  }, 600_000);
});

describe('truncated and altered blobs fail with BlobIntegrityError when read', () => {
  const streamed = (size: number) =>
    async function* (): AsyncGenerator<Uint8Array> {
      for (let offset = 0; offset < size; offset += 300_000)
        yield new Uint8Array(randomBytes(Math.min(300_000, size - offset)));
    };
  const drain = async (source: AsyncIterable<Uint8Array>) => {
    const hash = createHash('sha256');
    for await (const chunk of source) hash.update(chunk);
    return hash.digest('hex');
  };
  /** A streamed result stored through the pipeline; answers its pointer. */
  const storeThroughPipeline = async (blobs: BlobStore, size: number) => {
    const p = createProcessor({
      consumer: 'reports',
      store: createMemoryStore(),
      blobs,
      retentionCheck: 'off',
      handler: () => resultStream(streamed(size)()),
    });
    const d = await p.process({
      body: new TextEncoder().encode('{}'),
      headers: { [Headers.IdempotencyKey]: randomBytes(8).toString('hex') },
      destination: 'q',
      system: 'test',
    });
    if (d.action !== 'ack' || d.result?.kind !== 'blob') throw new Error(`unexpected ${JSON.stringify(d)}`);
    expect(await drain(blobs.stream(d.result.pointer))).toBe(d.result.pointer.sha256);
    return d.result.pointer;
  };
  const expectCorrupt = async (blobs: BlobStore, pointer: BlobPointer, label: string) => {
    await expect(drain(blobs.stream(pointer)), label).rejects.toBeInstanceOf(BlobIntegrityError);
    await expect(blobs.get(pointer), label).rejects.toBeInstanceOf(BlobIntegrityError);
  };

  it('fs: truncated, one byte altered, same-length overwrite, appended', async () => {
    const directory = await mkdtemp(join(tmpdir(), 'eo-corrupt-'));
    cleanup.push(() => rm(directory, { recursive: true, force: true }));
    const blobs = createFsBlobStore({ directory });
    const path = (p: BlobPointer) => {
      const id = p.uri.slice('fs:'.length);
      return join(directory, id.slice(0, 2), id);
    };
    const size = 3 * MiB + 17;
    const truncated = await storeThroughPipeline(blobs, size);
    await truncate(path(truncated), size - 1000);
    await expectCorrupt(blobs, truncated, 'truncated');

    const altered = await storeThroughPipeline(blobs, size);
    const handle = await open(path(altered), 'r+');
    const byte = Buffer.alloc(1);
    await handle.read(byte, 0, 1, 2 * MiB);
    await handle.write(Buffer.of((byte[0] ?? 0) ^ 0x01), 0, 1, 2 * MiB);
    await handle.close();
    await expectCorrupt(blobs, altered, 'altered');

    const replaced = await storeThroughPipeline(blobs, size);
    await writeFile(path(replaced), randomBytes(size));
    await expectCorrupt(blobs, replaced, 'replaced (same length)');

    const appended = await storeThroughPipeline(blobs, size);
    await writeFile(path(appended), Buffer.concat([await readFile(path(appended)), Buffer.of(0)]));
    await expectCorrupt(blobs, appended, 'appended');
  });

  it('GridFS: last chunk cut short, length lowered with the chunk, chunk missing, one byte altered', async () => {
    const name = `eo_corrupt_${Date.now().toString(36)}_${randomBytes(3).toString('hex')}`;
    const client = new MongoClient(MONGO_URL);
    await client.connect();
    cleanup.push(async () => {
      await client.db(name).dropDatabase();
      await client.close();
    });
    const db = client.db(name);
    const blobs = createGridFsBlobStore({ db });
    const files = db.collection<Document>('eo_blobs.files');
    const chunks = db.collection<Document>('eo_blobs.chunks');
    const idOf = (p: BlobPointer) => ObjectId.createFromHexString(p.uri.slice('gridfs:'.length));
    const size = 3 * MiB + 17;
    const lastN = Math.floor(size / (255 * 1024));
    const cut = async (p: BlobPointer, by: number) => {
      const last = await chunks.findOne({ files_id: idOf(p), n: lastN });
      if (last === null) throw new Error('last chunk not found');
      const data = Buffer.from((last.data as Binary).value());
      await chunks.updateOne(
        { _id: last._id },
        { $set: { data: new Binary(data.subarray(0, data.length - by)) } },
      );
    };

    const shortChunk = await storeThroughPipeline(blobs, size);
    await cut(shortChunk, 10);
    await expectCorrupt(blobs, shortChunk, 'last chunk cut short');

    // Truncated consistently: chunk and files.length agree, only the pointer knows better.
    const shortFile = await storeThroughPipeline(blobs, size);
    await cut(shortFile, 10);
    await files.updateOne({ _id: idOf(shortFile) }, { $set: { length: size - 10 } });
    await expectCorrupt(blobs, shortFile, 'file and chunk truncated together');

    const missing = await storeThroughPipeline(blobs, size);
    await chunks.deleteOne({ files_id: idOf(missing), n: lastN });
    await expectCorrupt(blobs, missing, 'last chunk missing');

    const altered = await storeThroughPipeline(blobs, size);
    const chunk = await chunks.findOne({ files_id: idOf(altered), n: 5 });
    if (chunk === null) throw new Error('chunk 5 not found');
    const data = Buffer.from((chunk.data as Binary).value());
    data[1234] = (data[1234] ?? 0) ^ 0x80;
    await chunks.updateOne({ _id: chunk._id }, { $set: { data: new Binary(data) } });
    await expectCorrupt(blobs, altered, 'one byte altered');
  });
});
