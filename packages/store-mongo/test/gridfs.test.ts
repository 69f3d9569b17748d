/**
 * The GridFS blob store against the real test server: streaming, integrity checks, cleanup.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { BlobIntegrityError, ConfigError, collectOrphanBlobs } from '@exactly-once/core';
import { Binary, type Document, ObjectId } from 'mongodb';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createGridFsBlobStore, createMongoStore, type SweeperPass } from '../src/index.js';
import { MONGO_SERVERS, openTestDatabase, type TestDatabase } from './helpers.js';

let test: TestDatabase;
const closeLast = async () => {
  await test?.drop();
};
afterAll(closeLast);

const bucket = (name: string) => ({
  blobs: createGridFsBlobStore({ db: test.db, bucketName: name }),
  files: test.db.collection<Document>(`${name}.files`),
  chunks: test.db.collection<Document>(`${name}.chunks`),
});
const idOf = (uri: string) => ObjectId.createFromHexString(uri.slice('gridfs:'.length));
const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');

async function drain(source: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const part of source) parts.push(part);
  return Buffer.concat(parts);
}

// On each local server: FerretDB 1.x and mongo-java-server.
describe.each(MONGO_SERVERS)('$name', (server) => {
  beforeAll(async () => {
    await closeLast();
    test = await openTestDatabase('gridfs', server.url);
  });

  describe('GridFS blob store', () => {
    it('streams a multi-MB source in odd-sized chunks into GridFS while still reading it', async () => {
      const { blobs, chunks } = bucket('stream');
      const parts = Array.from({ length: 40 }, (_, i) => new Uint8Array(randomBytes(150_000 + i * 1_001)));
      const whole = Buffer.concat(parts);
      let chunksWhileReading = -1;
      async function* source() {
        for (const [i, part] of parts.entries()) {
          if (i === parts.length - 1) chunksWhileReading = await chunks.countDocuments({});
          yield part;
        }
      }
      const pointer = await blobs.put(source());
      expect(pointer).toMatchObject({ size: whole.byteLength, sha256: sha256(whole) });
      // Chunks were written before the source ended: the blob was never held whole in memory.
      expect(chunksWhileReading).toBeGreaterThan(10);
      expect(await chunks.countDocuments({ files_id: idOf(pointer.uri) })).toBe(
        Math.ceil(whole.byteLength / (255 * 1024)),
      );
      expect(sha256(await drain(blobs.stream(pointer)))).toBe(pointer.sha256);
      expect(sha256(await blobs.get(pointer))).toBe(pointer.sha256);
    });

    it('detects a chunk whose bytes were changed, a missing chunk and a missing file', async () => {
      const { blobs, chunks, files } = bucket('corrupt');
      const data = new Uint8Array(randomBytes(700_000));
      const flipped = await blobs.put(data);
      const truncated = await blobs.put(data);
      const vanished = await blobs.put(data);

      const chunk = await chunks.findOne({ files_id: idOf(flipped.uri), n: 1 });
      if (chunk === null) throw new Error('chunk 1 not found');
      const bytes = Buffer.from((chunk.data as Binary).value());
      bytes[100] = (bytes[100] ?? 0) ^ 0xff;
      await chunks.updateOne({ _id: chunk._id }, { $set: { data: new Binary(bytes) } });
      await chunks.deleteOne({ files_id: idOf(truncated.uri), n: 1 });
      await files.deleteOne({ _id: idOf(vanished.uri) });

      for (const [name, pointer] of [
        ['flipped', flipped],
        ['truncated', truncated],
        ['vanished', vanished],
      ] as const) {
        await expect(blobs.get(pointer), name).rejects.toBeInstanceOf(BlobIntegrityError);
        await expect(drain(blobs.stream(pointer)), name).rejects.toBeInstanceOf(BlobIntegrityError);
      }
    });

    it('rejects pointers that are not its own before any I/O', async () => {
      const { blobs } = bucket('pointers');
      for (const uri of ['fs:0123', 'gridfs:xyz', `gridfs:${'a'.repeat(24)}/x`, '']) {
        const pointer = { uri, size: 1, sha256: 'a'.repeat(64) };
        expect(() => blobs.stream(pointer), uri).toThrow(BlobIntegrityError);
        await expect(blobs.delete(pointer), uri).rejects.toBeInstanceOf(BlobIntegrityError);
      }
      const real = await blobs.put(Uint8Array.of(1));
      expect(() => blobs.stream({ ...real, size: -1 })).toThrow(BlobIntegrityError);
      expect(() => blobs.stream({ ...real, sha256: 'XYZ' })).toThrow(BlobIntegrityError);
    });

    it('a source that fails mid-way rejects put with its error and leaves no chunks or file behind', async () => {
      const { blobs, chunks, files } = bucket('aborted');
      async function* failing() {
        for (let i = 0; i < 6; i++) yield new Uint8Array(200_000);
        throw new Error('source broke');
      }
      await expect(blobs.put(failing())).rejects.toThrow('source broke');
      expect(await chunks.countDocuments({})).toBe(0);
      expect(await files.countDocuments({})).toBe(0);
      const notBytes = (async function* () {
        yield 'text' as unknown as Uint8Array;
      })();
      await expect(blobs.put(notBytes)).rejects.toBeInstanceOf(TypeError);
    });

    it('copies chunks on the way in: a source reusing its buffer stores what it yielded', async () => {
      const { blobs } = bucket('reuse');
      const buffer = new Uint8Array(100_000);
      const expected = createHash('sha256');
      async function* reusing() {
        for (let i = 0; i < 30; i++) {
          buffer.fill(i);
          expected.update(buffer);
          yield buffer;
        }
      }
      const pointer = await blobs.put(reusing());
      expect(pointer.sha256).toBe(expected.digest('hex'));
      expect(sha256(await blobs.get(pointer))).toBe(pointer.sha256);
    });

    it('removes the chunks of a put whose process was killed, once its last chunk is abandonedAfterMs old', async () => {
      // Prepare: a complete blob, then a worker streaming into the same bucket is SIGKILLed after
      // writing some chunks.
      const { blobs, chunks } = bucket('killed');
      const kept = await blobs.put(new Uint8Array(3000).fill(7));
      const worker = spawn(
        process.execPath,
        [
          '--import',
          'tsx',
          '--conditions=@exactly-once/source',
          '--input-type=module',
          '-e',
          KILLED_PUT,
          server.url,
          test.db.databaseName,
        ],
        { stdio: ['ignore', 'inherit', 'inherit'] },
      );
      const orphanIds = async () =>
        (await chunks.distinct('files_id')).filter((id) => String(id) !== kept.uri.slice('gridfs:'.length));
      try {
        await vi.waitFor(async () => expect((await orphanIds()).length).toBe(1), {
          timeout: 20_000,
          interval: 100,
        });
        const [upload] = await orphanIds();
        await vi.waitFor(
          async () => expect(await chunks.countDocuments({ files_id: upload })).toBeGreaterThan(2),
          {
            timeout: 20_000,
            interval: 100,
          },
        );
      } finally {
        worker.kill('SIGKILL');
      }
      await new Promise((resolve) => worker.once('exit', resolve));
      const [upload] = await orphanIds();
      // Act: while its last chunk is fresh the upload may still be streaming, so it stays; once it
      // is abandonedAfterMs old (ObjectId times have a one-second grain), a put removes it.
      expect(
        await createGridFsBlobStore({
          db: test.db,
          bucketName: 'killed',
          abandonedAfterMs: 60_000,
        }).removeAbandoned(),
      ).toBe(0);
      expect(await chunks.countDocuments({ files_id: upload })).toBeGreaterThan(2);
      await new Promise((resolve) => setTimeout(resolve, 2_500));
      const restarted = createGridFsBlobStore({ db: test.db, bucketName: 'killed', abandonedAfterMs: 1_000 });
      const fresh = await restarted.put(new Uint8Array(10));
      // Assess: the sweep runs beside the put; complete blobs stay readable.
      await vi.waitFor(async () => expect(await chunks.countDocuments({ files_id: upload })).toBe(0), {
        timeout: 10_000,
        interval: 100,
      });
      expect(await restarted.removeAbandoned()).toBe(0);
      expect((await blobs.get(kept)).byteLength).toBe(3000);
      expect((await blobs.get(fresh)).byteLength).toBe(10);
    });

    it('refuses an abandonedAfterMs that is not a positive number', () => {
      for (const abandonedAfterMs of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
        expect(() => createGridFsBlobStore({ db: test.db, abandonedAfterMs })).toThrow(ConfigError);
      }
    });

    it('delete removes the file and its chunks and tolerates a missing blob', async () => {
      const { blobs, chunks, files } = bucket('delete');
      const pointer = await blobs.put(new Uint8Array(600_000));
      await blobs.delete(pointer);
      expect(await files.countDocuments({})).toBe(0);
      expect(await chunks.countDocuments({})).toBe(0);
      await blobs.delete(pointer);
      await expect(blobs.get(pointer)).rejects.toBeInstanceOf(BlobIntegrityError);
    });

    it("collectOrphanBlobs on the Mongo store: a dead run's blob goes once a takeover completed the key; its result blob stays", async () => {
      const { blobs, files } = bucket('orphans');
      const store = createMongoStore({ db: test.db, collectionName: 'orphan_records' });
      const key = 'shop:billing:invoice-1';
      const dead = await store.begin({ key, fingerprint: 'fp', owner: 'dead', leaseMs: 1 });
      if (dead.status !== 'acquired') throw new Error(dead.status);
      const orphan = await blobs.put(new Uint8Array(10), { owner: key });
      await new Promise((r) => setTimeout(r, 20));
      const taken = await store.begin({ key, fingerprint: 'fp', owner: 'w', leaseMs: 30_000 });
      if (taken.status !== 'acquired') throw new Error(taken.status);
      const result = { kind: 'blob', pointer: await blobs.put(new Uint8Array(20), { owner: key }) } as const;
      expect(
        await store.complete({ key, fence: taken.fence, result, outgoing: [], retentionMs: 60_000 }),
      ).toBe('ok');

      expect(await collectOrphanBlobs({ store, blobs, olderThanMs: 0 })).toEqual({
        examined: 2,
        deleted: 1,
        abandonedUploads: 0,
      });
      expect(await files.countDocuments({ _id: idOf(orphan.uri) })).toBe(0);
      expect((await blobs.get(result.pointer)).byteLength).toBe(20);
      await store.close();
    });

    it('startSweeper with orphanBlobs: a storeBlob blob goes once the sweeper removed the record naming it, and a killed upload goes', async () => {
      // Before, nothing collected either: the sweeper deletes result blobs only, and a killed
      // upload's chunks went only when a later put happened to look.
      const { files, chunks } = bucket('swept');
      const blobs = createGridFsBlobStore({ db: test.db, bucketName: 'swept', abandonedAfterMs: 1_000 });
      const errors: unknown[] = [];
      const store = createMongoStore({
        db: test.db,
        collectionName: 'swept_records',
        blobs,
        expiredGraceMs: 0,
        onSweepError: (error) => errors.push(error),
      });
      await store.ensureIndexes();
      const key = 'shop:billing:invoice-2';
      const begun = await store.begin({ key, fingerprint: 'fp', owner: 'w', leaseMs: 30_000 });
      if (begun.status !== 'acquired') throw new Error(begun.status);
      // What `ctx.storeBlob` does: a blob owned by the run, its pointer inside the JSON result.
      const stored = await blobs.put(new Uint8Array(30).fill(3), { owner: key });
      const data = new TextEncoder().encode(JSON.stringify({ invoice: stored }));
      const result = { kind: 'inline', data } as const;
      expect(await store.complete({ key, fence: begun.fence, result, outgoing: [], retentionMs: 300 })).toBe(
        'ok',
      );
      // An upload killed after its first chunk, 10 s ago: chunks and no files document.
      const upload = ObjectId.createFromTime(Math.floor(Date.now() / 1000) - 10);
      await chunks.insertOne({
        _id: ObjectId.createFromTime(Math.floor(Date.now() / 1000) - 10),
        files_id: upload,
        n: 0,
        data: new Binary(new Uint8Array(8)),
      });

      const passes: SweeperPass[] = [];
      const stop = store.startSweeper(100, {
        orphanBlobs: { olderThanMs: 0, whenRecordGone: 'delete', everyMs: 100 },
        onPass: (pass) => passes.push(pass),
      });
      try {
        await vi.waitFor(
          async () => {
            expect(await files.countDocuments({ _id: idOf(stored.uri) })).toBe(0);
            expect(await chunks.countDocuments({ files_id: upload })).toBe(0);
            // The blob can go as soon as the record expired, before a sweep deletes the record.
            expect(passes.some((pass) => (pass.sweep?.deleted ?? 0) > 0)).toBe(true);
          },
          { timeout: 30_000, interval: 200 },
        );
        expect(await store.get(key)).toBeUndefined();
        expect(errors).toEqual([]);
        // onPass reports what the rounds did: the record swept, the blob it named, the upload.
        const total = (figure: (pass: SweeperPass) => number | undefined) =>
          passes.reduce((sum, pass) => sum + (figure(pass) ?? 0), 0);
        expect(passes.every((pass) => pass.sweep !== undefined && pass.durationMs >= 0)).toBe(true);
        expect(total((pass) => pass.sweep?.deleted)).toBeGreaterThan(0);
        expect(total((pass) => pass.orphanBlobs?.deleted)).toBe(1);
        expect(total((pass) => pass.orphanBlobs?.abandonedUploads)).toBe(1);
      } finally {
        stop();
        await store.close();
      }
    });

    it("startSweeper refuses orphanBlobs without the store's blobs", async () => {
      const store = createMongoStore({ db: test.db, collectionName: 'swept_none' });
      expect(() => store.startSweeper(1_000, { orphanBlobs: {} })).toThrow(ConfigError);
      await store.close();
    });
  });
});

/** A worker that streams a blob into bucket `killed` in 1 KiB chunks and never finishes it. */
const KILLED_PUT = `
import { MongoClient } from 'mongodb';
import { createGridFsBlobStore } from '@exactly-once/store-mongo';
const [url, database] = process.argv.slice(1);
const client = await MongoClient.connect(url);
const blobs = createGridFsBlobStore({ db: client.db(database), bucketName: 'killed', chunkSizeBytes: 1024 });
async function* source() {
  for (let i = 0; i < 8; i++) yield new Uint8Array(1024).fill(i);
  await new Promise(() => setInterval(() => {}, 1000));
}
await blobs.put(source());
`;
