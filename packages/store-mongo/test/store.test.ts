/**
 * Behaviour specific to the Mongo store, against the real test server: races decided by the
 * server, the document layout, the sweeper, index creation, outages and the clock.
 */
import { connect, createServer, type Socket } from 'node:net';
import { StoreUnavailableError } from '@exactly-once/core';
import type { Collection } from 'mongodb';
import { MongoClient } from 'mongodb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serverClock } from '../src/clock.js';
import type { RecordDoc } from '../src/codec.js';
import { createGridFsBlobStore, createMongoStore, type MongoProcessedStore } from '../src/index.js';
import { sweepExpired } from '../src/sweep.js';
import { MONGO_URL, openTestDatabase, type TestDatabase } from './helpers.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const begin = (store: MongoProcessedStore, key: string, owner = 'w', leaseMs = 300) =>
  store.begin({ key, fingerprint: 'fp', owner, leaseMs });
const acquired = async (store: MongoProcessedStore, key: string, leaseMs = 300) => {
  const result = await begin(store, key, 'w', leaseMs);
  if (result.status !== 'acquired') throw new Error(`expected acquired, got ${result.status}`);
  return result;
};

let test: TestDatabase;
let store: MongoProcessedStore;
let raw: Collection<RecordDoc>;

beforeAll(async () => {
  test = await openTestDatabase('store');
  store = createMongoStore({ db: test.db });
  raw = store.collection;
});
afterAll(async () => {
  await store?.close();
  await test?.drop();
});

describe('races', () => {
  it('50 concurrent begins on a fresh key, from two clients: exactly one acquires', async () => {
    const second = new MongoClient(MONGO_URL);
    const other = createMongoStore({ db: second.db(test.db.databaseName) });
    try {
      for (let k = 0; k < 5; k++) {
        const key = `race:${k}`;
        const results = await Promise.all(
          // A lease long enough that no begin of the race can see it pass, however loaded the machine.
          Array.from({ length: 50 }, (_, i) => begin(i % 2 === 0 ? store : other, key, `w${i}`, 60_000)),
        );
        const winners = results.filter((r) => r.status === 'acquired');
        expect(winners).toHaveLength(1);
        expect(results.filter((r) => r.status === 'busy')).toHaveLength(49);
      }
    } finally {
      await second.close();
    }
  });

  // Races on an existing record are in the conformance kit (conformance.test.ts).
});

describe('document layout', () => {
  it('uses the key verbatim as _id, short field names, and drops lease fields on completion', async () => {
    const key = 'layout:$gt.{"a":1}\u0000end';
    const lease = await acquired(store, key);
    expect(await store.saveStep(key, lease.fence, 'a.b$c', Uint8Array.of(1))).toBe('ok');
    const inProgress = await raw.findOne({ _id: key });
    expect(inProgress?._id).toBe(key);
    expect(inProgress?.st?.[0]).toMatchObject({ k: 'a.b$c' });

    const body = Uint8Array.of(9);
    const headers: Record<string, string> = Object.fromEntries([
      ['x.y', '1'],
      ['$set', '2'],
      ['__proto__', '3'],
      ['nul\u0000', '4'],
    ]);
    expect(
      await store.complete({
        key,
        fence: lease.fence,
        result: { kind: 'inline', data: Uint8Array.of(1, 2) },
        outgoing: [{ id: 'm.1', destination: 'q', body, headers }],
        retentionMs: 60_000,
      }),
    ).toBe('ok');
    const doc = await raw.findOne({ _id: key });
    expect(Object.keys(doc ?? {}).sort()).toEqual(['_id', 'a', 'd', 'e', 'f', 'n', 'ob', 'r', 's'].sort());
    expect(doc?.e).toBeInstanceOf(Date);
    const record = await store.get(key);
    expect(record?.state === 'COMPLETED' && record.outgoing[0]?.headers).toEqual(headers);
  });

  it('hex fingerprints and trace ids are stored as bytes and read back as the exact strings', async () => {
    const sha = 'ab'.repeat(32);
    const trace = `${'0f'.repeat(16)}-${'e1'.repeat(8)}`;
    const cases = [
      [sha, trace, true],
      [sha.toUpperCase(), trace.toUpperCase(), false],
      [`${sha}0`, `${trace}-x`, false],
      ['fp', 'not-a-trace', false],
    ] as const;
    for (const [i, [fingerprint, traceId, packed]] of cases.entries()) {
      const key = `packing:${i}`;
      const lease = await store.begin({ key, fingerprint, owner: 'w', leaseMs: 1000, traceId });
      expect(lease.status).toBe('acquired');
      const doc = await raw.findOne({ _id: key });
      expect(typeof doc?.f === 'string' && typeof doc?.t === 'string').toBe(!packed);
      expect(await store.get(key)).toMatchObject({ fingerprint, traceId });
      const again = await store.begin({ key, fingerprint, owner: 'w2', leaseMs: 1000 });
      expect(again.status).toBe('busy');
    }
  });

  it('steps saved twice under one name read back as the last one', async () => {
    const key = 'steps:twice';
    const lease = await acquired(store, key);
    await store.saveStep(key, lease.fence, 's', Uint8Array.of(1));
    await store.saveStep(key, lease.fence, 's', Uint8Array.of(2));
    const record = await store.get(key);
    expect(record?.state === 'IN_PROGRESS' && Array.from(record.steps.s?.result ?? [])).toEqual([2]);
  });

  it('keys differing only after a NUL, or only by a prefix, are different records', async () => {
    const keys = ['nul', 'nul\u0000', 'nul\u0000\u0000', 'nul\u0000x', 'NUL', 'nul '];
    const fences = new Map<string, number>();
    for (const key of keys) fences.set(key, (await acquired(store, key)).fence);
    await store.release('nul\u0000', fences.get('nul\u0000') ?? 0, { name: 'E', code: 'E', message: 'm' });
    for (const key of keys) {
      const record = await store.get(key);
      expect(record?.key === key).toBe(true);
      expect(record?.state === 'IN_PROGRESS' && record.leaseUntil === 0).toBe(key === 'nul\u0000');
    }
  });
});

describe('expiry', () => {
  it('ensureIndexes tolerates a server without TTL indexes and still indexes the expiry field', async () => {
    const result = await store.ensureIndexes();
    expect(result.ttl).toBe(!test.ferret1);
    const names = (await raw.listIndexes().toArray()).map((index) => String(index.name));
    expect(names).toContain(result.ttl ? 'eo_expiry_ttl' : 'eo_expiry');
    await store.ensureIndexes(); // idempotent
  });

  it('the sweeper deletes expired records and their blobs, never a live record or its blob', async () => {
    const blobs = createGridFsBlobStore({ db: test.db, bucketName: 'sweep_blobs' });
    const swept = createMongoStore({ db: test.db, collectionName: 'sweep_records', blobs });
    const put = (byte: number) => blobs.put(Uint8Array.of(byte, byte, byte));
    const finish = async (key: string, retentionMs: number, blob?: Awaited<ReturnType<typeof put>>) => {
      const lease = await acquired(swept, key);
      const result = blob === undefined ? undefined : ({ kind: 'blob', pointer: blob } as const);
      expect(await swept.complete({ key, fence: lease.fence, outgoing: [], retentionMs, result })).toBe('ok');
    };
    const expiredBlob = await put(1);
    const liveBlob = await put(2);
    await finish('expired-with-blob', 50, expiredBlob);
    await finish('expired-plain', 50);
    await finish('live-with-blob', 600_000, liveBlob);
    const failed = await acquired(swept, 'expired-failed');
    await swept.fail('expired-failed', failed.fence, { name: 'E', code: 'E', message: 'm' }, 50);
    await acquired(swept, 'in-progress', 10);
    await sleep(150);

    expect(await swept.sweepExpired()).toEqual({ deleted: 3, blobsDeleted: 1 });
    const left = await swept.collection.find({}).toArray();
    expect(left.map((d) => d._id).sort()).toEqual(['in-progress', 'live-with-blob']);
    await expect(blobs.get(expiredBlob)).rejects.toMatchObject({ code: 'BLOB_INTEGRITY' });
    expect(Array.from(await blobs.get(liveBlob))).toEqual([2, 2, 2]);
    expect(await swept.sweepExpired()).toEqual({ deleted: 0, blobsDeleted: 0 });
    await swept.close();
  });

  it('a record renewed between the sweeper’s read and its delete survives, and so does its blob', async () => {
    const blobs = createGridFsBlobStore({ db: test.db, bucketName: 'renew_blobs' });
    const swept = createMongoStore({ db: test.db, collectionName: 'renew_records', blobs });
    const key = 'renewed';
    const blob = await blobs.put(Uint8Array.of(7));
    const lease = await acquired(swept, key);
    await swept.complete({
      key,
      fence: lease.fence,
      outgoing: [],
      retentionMs: 50,
      result: { kind: 'blob', pointer: blob },
    });
    await sleep(120);
    // The sweeper's read returns the expired record; a worker renews it before the delete runs.
    const collection = new Proxy(swept.collection, {
      get(target, property, receiver) {
        if (property !== 'find') return Reflect.get(target, property, receiver);
        return (...args: Parameters<typeof target.find>) => ({
          toArray: async () => {
            const docs = await target.find(...args).toArray();
            expect((await begin(swept, key)).status).toBe('acquired');
            return docs;
          },
        });
      },
    });
    const clock = { now: async () => Date.now() };
    const result = await sweepExpired({
      collection,
      clock,
      write: { writeConcern: {} },
      blobs,
      batchSize: 10,
    });
    expect(result).toEqual({ deleted: 0, blobsDeleted: 0 });
    expect((await swept.get(key))?.state).toBe('IN_PROGRESS');
    expect(Array.from(await blobs.get(blob))).toEqual([7]);
    await swept.close();
  });

  it('startSweeper runs in the background until stopped; close stops it', async () => {
    const swept = createMongoStore({ db: test.db, collectionName: 'bg_records' });
    const lease = await acquired(swept, 'bg');
    await swept.complete({ key: 'bg', fence: lease.fence, outgoing: [], retentionMs: 20 });
    swept.startSweeper(50);
    for (let i = 0; i < 40 && (await swept.collection.countDocuments({})) > 0; i++) await sleep(50);
    expect(await swept.collection.countDocuments({})).toBe(0);
    await swept.close();
  });
});

describe('outage', () => {
  it('every operation against an unreachable server throws a retryable StoreUnavailableError', async () => {
    const port = await closedPort();
    const pointer = { uri: `gridfs:${'0'.repeat(24)}`, size: 1, sha256: '0'.repeat(64) };
    const error = { name: 'E', code: 'E', message: 'm' };
    type Down = { store: MongoProcessedStore; blobs: ReturnType<typeof createGridFsBlobStore> };
    const attempts: [string, (down: Down) => Promise<unknown>][] = [
      ['begin', ({ store }) => begin(store, 'k')],
      ['extend', ({ store }) => store.extend('k', 1, 100)],
      ['complete', ({ store }) => store.complete({ key: 'k', fence: 1, outgoing: [], retentionMs: 1 })],
      ['release', ({ store }) => store.release('k', 1, error)],
      ['fail', ({ store }) => store.fail('k', 1, error, 1)],
      ['saveStep', ({ store }) => store.saveStep('k', 1, 's', Uint8Array.of(1))],
      ['markPublished', ({ store }) => store.markPublished('k', 1, ['m'])],
      ['get', ({ store }) => store.get('k')],
      ['ensureIndexes', ({ store }) => store.ensureIndexes()],
      ['sweepExpired', ({ store }) => store.sweepExpired()],
      ['blob put', ({ blobs }) => blobs.put(Uint8Array.of(1))],
      ['blob get', ({ blobs }) => blobs.get(pointer)],
      ['blob delete', ({ blobs }) => blobs.delete(pointer)],
    ];
    for (const clock of ['server', 'client'] as const) {
      for (const [name, attempt] of attempts) {
        // A client per attempt: each one has to find the server down by itself.
        const client = new MongoClient(`mongodb://127.0.0.1:${port}`, { serverSelectionTimeoutMS: 200 });
        const db = client.db('down');
        try {
          const failure = await attempt({
            store: createMongoStore({ db, clock }),
            blobs: createGridFsBlobStore({ db }),
          }).then(
            () => new Error(`${name} succeeded`),
            (e: unknown) => e,
          );
          expect(failure, name).toBeInstanceOf(StoreUnavailableError);
          expect((failure as StoreUnavailableError).retryable, name).toBe(true);
          expect(String((failure as Error).message), name).toMatch(
            /ECONNREFUSED|Server selection timed out|Topology is closed/,
          );
        } finally {
          await client.close();
        }
      }
    }
  });

  it('a store whose server drops away fails with StoreUnavailableError, then works again', async () => {
    const proxy = await startProxy(new URL(MONGO_URL.replace(/^mongodb:/, 'http:')));
    const client = new MongoClient(`mongodb://127.0.0.1:${proxy.port}/?directConnection=true`, {
      serverSelectionTimeoutMS: 500,
      heartbeatFrequencyMS: 500,
    });
    try {
      const flaky = createMongoStore({ db: client.db(test.db.databaseName), collectionName: 'flaky' });
      const lease = await acquired(flaky, 'flaky');
      proxy.down();
      await expect(flaky.extend('flaky', lease.fence, 300)).rejects.toBeInstanceOf(StoreUnavailableError);
      await expect(flaky.get('flaky')).rejects.toBeInstanceOf(StoreUnavailableError);
      proxy.up();
      let record: Awaited<ReturnType<typeof flaky.get>>;
      for (let i = 0; ; i++) {
        try {
          record = await flaky.get('flaky');
          break;
        } catch (error) {
          if (i > 40) throw error;
          await sleep(100);
        }
      }
      expect(record?.fence).toBe(lease.fence);
      expect(await flaky.extend('flaky', lease.fence, 300)).toBe('ok');
    } finally {
      await client.close();
      await proxy.close();
    }
  });
});

describe('clock', () => {
  it('the server clock follows hello.localTime, not this host', async () => {
    const skew = 3_600_000;
    const db = { command: async () => ({ localTime: new Date(Date.now() + skew) }) };
    const clock = serverClock(db as never);
    expect(Math.abs((await clock.now()) - Date.now() - skew)).toBeLessThan(1000);
  });

  it('leases granted by the real server are on its clock', async () => {
    const hello = await test.db.command({ hello: 1 });
    const lease = await acquired(store, 'clock:lease', 10_000);
    expect(Math.abs(lease.leaseUntil - 10_000 - (hello.localTime as Date).getTime())).toBeLessThan(2000);
  });
});

async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

/** A TCP proxy to the test server that can be switched off (dropping its connections) and on. */
async function startProxy(target: URL) {
  let refusing = false;
  const sockets = new Set<Socket>();
  const server = createServer((inbound) => {
    if (refusing) {
      inbound.destroy();
      return;
    }
    const outbound = connect(Number(target.port || 27017), target.hostname);
    for (const socket of [inbound, outbound]) {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => undefined);
    }
    inbound.pipe(outbound).pipe(inbound);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  return {
    port: address.port,
    down() {
      refusing = true;
      for (const socket of sockets) socket.destroy();
    },
    up() {
      refusing = false;
    },
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}
