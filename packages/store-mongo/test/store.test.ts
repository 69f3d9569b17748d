/**
 * Behaviour specific to the Mongo store, against the real test server: races decided by the
 * server, the document layout, the sweeper, index creation, outages and the clock.
 */
import { connect, createServer, type Socket } from 'node:net';
import { CorruptRecordError, ErrorCode, PartialBatchError, StoreUnavailableError } from '@exactly-once/core';
import type { Collection, Db } from 'mongodb';
import { Binary, MongoClient, MongoNetworkError } from 'mongodb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readChain } from '../src/chain.js';
import { clientClock, serverClock } from '../src/clock.js';
import { elementId, elementPlace, type HeadDoc, type RecordDoc, State } from '../src/codec.js';
import {
  createGridFsBlobStore,
  createMongoOutboxSource,
  createMongoStore,
  type MongoProcessedStore,
} from '../src/index.js';
import { dismantle } from '../src/sweep.js';
import {
  MONGO_SERVERS,
  MONGO_URL,
  openTestDatabase,
  type TestDatabase,
  takeoverWindow,
  type WindowFault,
} from './helpers.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/** A takeover's catch-up: its re-read of the lease it took over (steps, error, attempt). */
const isCatchUpRead = (args: unknown[]) =>
  (args[1] as { projection?: Record<string, unknown> } | undefined)?.projection?.a === 1;
const setsField = (args: unknown[], field: string) => field in ((args[1] as { $set?: object }).$set ?? {});
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

/** Opens a fresh database on `url` for the describe blocks that follow (closing the last one). */
const useServer = (url: string) =>
  beforeAll(async () => {
    await store?.close();
    await test?.drop();
    test = await openTestDatabase('store', url);
    store = createMongoStore({ db: test.db });
    raw = store.collection;
  });
afterAll(async () => {
  await store?.close();
  await test?.drop();
});

describe('options', () => {
  it('refuses an option name it does not know: a misspelt collectionName would move the key space', () => {
    const db = new MongoClient('mongodb://127.0.0.1:1').db('never-used');
    expect(() => createMongoStore({ db, colectionName: 'records' } as never)).toThrow(
      'unknown option "colectionName" (did you mean "collectionName"?)',
    );
  });
});

// The store's own behaviour on each server: FerretDB 1.x (no atomic filtered updates) and
// mongo-java-server (atomic per document, no TTL, no `hello`).
describe.each(MONGO_SERVERS)('$name', (server) => {
  useServer(server.url);

  describe('races', () => {
    it('50 concurrent begins on a fresh key, from two clients: exactly one acquires', async () => {
      const second = new MongoClient(server.url);
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

  /** The elements of `key`'s chain, in order, as stored. */
  const elementsOf = async (collection: Collection<RecordDoc>, key: string) =>
    (await collection.find({ k: key }).toArray()).sort(
      (x, y) => elementPlace(x._id).position - elementPlace(y._id).position,
    );

  describe('document layout', () => {
    it('a head names the chain; each state is its own element with short field names', async () => {
      const key = 'layout:$gt.{"a":1}\u0000end';
      const lease = await acquired(store, key);
      expect(await store.saveStep(key, lease.fence, 'a.b$c', Uint8Array.of(1))).toBe('ok');
      const head = (await raw.findOne({ _id: key })) as unknown as HeadDoc;
      expect(Object.keys(head).sort()).toEqual(['_id', 'c', 'h']);
      const [first] = await elementsOf(raw, key);
      expect(first?._id).toBe(elementId(head.c, 1));
      // Chain id and position are read from the _id: an element does not store them again.
      expect(Object.keys(first ?? {}).sort()).toEqual(
        ['_id', 'k', 's', 'a', 'f', 'n', 'o', 'l', 'sa', 'st'].sort(),
      );
      expect(first?.st?.[0]).toMatchObject({ k: 'a.b$c' });

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
      const [, done, extra] = await elementsOf(raw, key);
      expect(extra).toBeUndefined();
      expect(done?._id).toBe(elementId(head.c, 2));
      expect(Object.keys(done ?? {}).sort()).toEqual(
        ['_id', 'k', 's', 'a', 'd', 'e', 'f', 'n', 'ob', 'r'].sort(),
      );
      expect(done?.e).toBeInstanceOf(Date);
      const record = await store.get(key);
      expect(record?.state === 'COMPLETED' && record.outgoing[0]?.headers).toEqual(headers);
    });

    it('elements written with their chain id and position (c, i: earlier versions) read, continue and are swept as before', async () => {
      const earlier = createMongoStore({
        db: test.db,
        collectionName: 'earlier_elements',
        expiredGraceMs: 0,
      });
      const elements = earlier.collection;
      /** Gives every element of `key` the two fields earlier versions wrote. */
      const asWrittenEarlier = async (key: string) => {
        for (const doc of await elements.find({ k: key }).toArray()) {
          const { chain, position } = elementPlace(doc._id);
          await elements.updateOne({ _id: doc._id }, { $set: { c: chain, i: position } });
        }
      };
      // A completed key: answered as a duplicate, then swept whole once expired.
      const done = await acquired(earlier, 'earlier:done');
      await earlier.complete({
        key: 'earlier:done',
        fence: done.fence,
        result: { kind: 'inline', data: Uint8Array.of(7) },
        outgoing: [],
        // Long enough for the rewrite below on a loaded server, still answered as a duplicate.
        retentionMs: 1_000,
      });
      await asWrittenEarlier('earlier:done');
      expect(await begin(earlier, 'earlier:done')).toMatchObject({ status: 'duplicate' });
      // A lapsed lease: taken over (its step journal kept), completed, and listed as stuck before.
      const lapsed = await acquired(earlier, 'earlier:lapsed', 50);
      expect(await earlier.saveStep('earlier:lapsed', lapsed.fence, 'charge', Uint8Array.of(1))).toBe('ok');
      await asWrittenEarlier('earlier:lapsed');
      await sleep(80);
      const stuck = (await earlier.listInProgress?.({ olderThanMs: 0, limit: 10 })) ?? [];
      expect(stuck.map((e) => e.key)).toEqual(['earlier:lapsed']);
      const taken = await begin(earlier, 'earlier:lapsed');
      expect(taken).toMatchObject({ status: 'acquired', kind: 'takeover', attempt: 2 });
      if (taken.status !== 'acquired') throw new Error('not acquired');
      expect(Object.keys(taken.steps)).toEqual(['charge']);
      expect(
        // A second, like the first key's: 100 ms had expired before the read below, under load.
        await earlier.complete({
          key: 'earlier:lapsed',
          fence: taken.fence,
          outgoing: [],
          retentionMs: 1_000,
        }),
      ).toBe('ok');
      expect(await earlier.get('earlier:lapsed')).toMatchObject({ state: 'COMPLETED', attempt: 2 });
      await sleep(1_100);
      await earlier.sweepExpired();
      expect(await elements.countDocuments({})).toBe(0);
      await earlier.close();
    });

    it('an element whose state was edited by hand is refused as CorruptRecordError, not read as FAILED; the batch beside it is begun', async () => {
      const key = 'damaged:state';
      const held = await acquired(store, key);
      await store.complete({ key, fence: held.fence, outgoing: [], retentionMs: 60_000 });
      const [, done] = await elementsOf(raw, key);
      await raw.updateOne({ _id: done?._id }, { $set: { s: 'garbage' as never } });
      const refused = { code: ErrorCode.CorruptRecord, key, retryable: false };
      await expect(begin(store, key)).rejects.toMatchObject(refused);
      await expect(store.get(key)).rejects.toBeInstanceOf(CorruptRecordError);
      const beside = 'damaged:beside';
      const error = await store
        .beginMany?.([key, beside].map((k) => ({ key: k, fingerprint: 'fp', owner: 'w', leaseMs: 300 })))
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      expect(error).toBeInstanceOf(PartialBatchError);
      expect((error as PartialBatchError).errors.get(0)).toMatchObject(refused);
      expect((error as PartialBatchError).answers[1]).toMatchObject({ status: 'acquired' });
    });

    it.each([
      ['its fingerprint', { f: 12345 }],
      ['its expiry', { e: 'yesterday' }],
      ['its time', { d: 'yesterday' }],
      ['its result', { r: 42 }],
    ])(
      'an element with %s of another type is refused as CorruptRecordError, not taken for an outage',
      async (_, edit) => {
        const key = `damaged:field:${Object.keys(edit)[0]}`;
        const held = await acquired(store, key);
        await store.complete({ key, fence: held.fence, outgoing: [], retentionMs: 60_000 });
        const [, done] = await elementsOf(raw, key);
        await raw.updateOne({ _id: done?._id }, { $set: edit as never });
        await expect(begin(store, key)).rejects.toMatchObject({ code: ErrorCode.CorruptRecord, key });
        await expect(store.get(key)).rejects.toBeInstanceOf(CorruptRecordError);
      },
    );

    it('a chain whose last element was emptied, or deleted behind a tombstone, is refused, not taken for a sweep', async () => {
      // Before: read as a chain being swept, every begin gave up after 8 rounds as an outage, for
      // ever (a Kafka partition held behind the key).
      const emptied = 'damaged:emptied';
      const held = await acquired(store, emptied);
      await store.complete({ key: emptied, fence: held.fence, outgoing: [], retentionMs: 60_000 });
      const [, done] = await elementsOf(raw, emptied);
      await raw.replaceOne({ _id: done?._id }, {} as never);
      const refused = { code: ErrorCode.CorruptRecord, key: emptied, retryable: false };
      await expect(begin(store, emptied)).rejects.toMatchObject(refused);
      await expect(store.get(emptied)).rejects.toBeInstanceOf(CorruptRecordError);
      // The COMPLETED element deleted once the sweeper had cut the lease before it to a tombstone.
      const cut = 'damaged:cut';
      const lease = await acquired(store, cut);
      await store.complete({ key: cut, fence: lease.fence, outgoing: [], retentionMs: 60_000 });
      const [first, completed] = await elementsOf(raw, cut);
      await raw.replaceOne({ _id: first?._id }, {} as never);
      await raw.deleteOne({ _id: completed?._id });
      await expect(begin(store, cut)).rejects.toMatchObject({ code: ErrorCode.CorruptRecord, key: cut });
    });

    it('the sweeper leaves a damaged chain, counts it, and sweeps the others', async () => {
      // Before: one damaged expired chain failed every sweep at that document.
      const swept = createMongoStore({ db: test.db, collectionName: 'damaged_sweep', expiredGraceMs: 0 });
      for (const key of ['bad', 'good']) {
        const lease = await acquired(swept, key);
        await swept.complete({ key, fence: lease.fence, outgoing: [], retentionMs: 50 });
      }
      const [, done] = await elementsOf(swept.collection, 'bad');
      await swept.collection.updateOne({ _id: done?._id }, { $set: { f: 12345 } as never });
      await sleep(150);
      expect(await swept.sweepExpired()).toEqual({ deleted: 4, blobsDeleted: 0, abandoned: 0, damaged: 1 });
      expect(await swept.collection.countDocuments({ k: 'good' })).toBe(0);
      expect(await swept.collection.countDocuments({ k: 'bad' })).toBe(2);
      await swept.close();
    });

    it('a head whose chain id was edited to another type is refused, not read as a new key', async () => {
      const key = 'damaged:head';
      const held = await acquired(store, key);
      await store.complete({ key, fence: held.fence, outgoing: [], retentionMs: 60_000 });
      await store.collection.updateOne({ _id: key } as never, { $set: { c: 12345 } as never });
      await expect(begin(store, key)).rejects.toMatchObject({ code: ErrorCode.CorruptRecord, key });
      // Its position hint: before, a string there made every begin give up as an outage.
      await store.collection.updateOne(
        { _id: key } as never,
        { $unset: { c: 1 }, $set: { h: 'x' } } as never,
      );
      await expect(begin(store, key)).rejects.toMatchObject({ code: ErrorCode.CorruptRecord, key });
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
        // A lease no slow server outlasts: the second begin below must find it held.
        const lease = await store.begin({ key, fingerprint, owner: 'w', leaseMs: 60_000, traceId });
        expect(lease.status).toBe('acquired');
        const [doc] = await elementsOf(raw, key);
        expect(typeof doc?.f === 'string' && typeof doc?.t === 'string').toBe(!packed);
        expect(await store.get(key)).toMatchObject({ fingerprint, traceId });
        const again = await store.begin({ key, fingerprint, owner: 'w2', leaseMs: 60_000 });
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

    it('steps and extensions sent at once by the holder are all kept', async () => {
      const key = 'steps:concurrent';
      const lease = await acquired(store, key, 60_000);
      const writes = Array.from({ length: 20 }, (_, i) =>
        i % 4 === 0
          ? store.extend(key, lease.fence, 60_000)
          : store.saveStep(key, lease.fence, `s${i}`, Uint8Array.of(i)),
      );
      expect(new Set(await Promise.all(writes))).toEqual(new Set(['ok']));
      const record = await store.get(key);
      expect(record?.state === 'IN_PROGRESS' && Object.keys(record.steps)).toHaveLength(15);
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

    it('reads a record of the previous layout (state in the head) and continues its chain', async () => {
      const key = 'legacy:completed';
      const now = Date.now();
      await raw.insertOne({
        _id: key,
        s: State.Completed,
        f: 'fp',
        n: now,
        a: 1,
        d: now,
        e: new Date(now + 60_000),
        r: new Binary(Buffer.from([5])),
      } as unknown as RecordDoc);
      expect(await begin(store, key)).toMatchObject({ status: 'duplicate', record: { fence: now } });
      expect(await store.clear(key)).toBe('cleared');
      const renewed = await acquired(store, key);
      expect(renewed.fence).toBeGreaterThan(now);
      expect(await store.complete({ key, fence: renewed.fence, outgoing: [], retentionMs: 60_000 })).toBe(
        'ok',
      );
      expect((await store.get(key))?.state).toBe('COMPLETED');
    });
  });

  describe('history', () => {
    it('lists every state of the key, oldest first: each attempt as it was left, then the completion', async () => {
      const key = 'history:k';
      expect(await store.history(key)).toEqual([]);
      const first = await begin(store, key, 'dead', 100);
      if (first.status !== 'acquired') throw new Error(first.status);
      expect(await store.saveStep(key, first.fence, 'charge', Uint8Array.of(1))).toBe('ok');
      await sleep(150);
      const second = await begin(store, key, 'taker', 300);
      expect(second).toMatchObject({ status: 'acquired', kind: 'takeover', attempt: 2 });
      if (second.status !== 'acquired') throw new Error(second.status);
      expect(await store.complete({ key, fence: second.fence, outgoing: [], retentionMs: 60_000 })).toBe(
        'ok',
      );
      const history = await store.history(key);
      expect(history.map((h) => [h.record.state, h.record.attempt, h.record.fence])).toEqual([
        ['IN_PROGRESS', 1, first.fence],
        ['IN_PROGRESS', 2, second.fence],
        ['COMPLETED', 2, second.fence],
      ]);
      expect(history[0]?.record).toMatchObject({ owner: 'dead', steps: { charge: { state: 'done' } } });
      expect(history[1]?.record).toMatchObject({ owner: 'taker' });
      expect(history[0]?.startedAt).toBeGreaterThan(0);
      expect(history[1]?.startedAt).toBeGreaterThanOrEqual(history[0]?.startedAt ?? 0);
      expect(history[2]?.startedAt).toBeUndefined();
    });
  });

  describe('getMany', () => {
    it('answers for each key what get answers, in the order asked, in a few queries', async () => {
      const k = (name: string) => `many:${name}`;
      const completed = await acquired(store, k('completed'));
      await store.complete({
        key: k('completed'),
        fence: completed.fence,
        outgoing: [],
        retentionMs: 60_000,
      });
      await acquired(store, k('in-progress'), 60_000);
      const failed = await acquired(store, k('failed'));
      await store.fail(k('failed'), failed.fence, { name: 'E', code: 'E', message: 'no' }, 60_000);
      const released = await acquired(store, k('released'));
      await store.release(k('released'), released.fence, { name: 'E', code: 'E', message: 'again' });
      // A long chain: five takeovers after lapsed leases, then completed.
      let fence = (await acquired(store, k('long'), 1)).fence;
      for (let i = 0; i < 5; i++) {
        await sleep(5);
        fence = (await acquired(store, k('long'), 1)).fence;
      }
      await sleep(5);
      fence = (await acquired(store, k('long'))).fence;
      await store.complete({ key: k('long'), fence, outgoing: [], retentionMs: 60_000 });
      const expired = await acquired(store, k('expired'));
      await store.complete({ key: k('expired'), fence: expired.fence, outgoing: [], retentionMs: 1 });
      await sleep(10);
      const legacyAt = Date.now();
      await raw.insertOne({
        _id: k('legacy'),
        s: State.Completed,
        f: 'fp',
        n: legacyAt,
        a: 1,
        d: legacyAt,
        e: new Date(legacyAt + 60_000),
      } as unknown as RecordDoc);
      const many = Array.from({ length: 30 }, (_, i) => k(`bulk-${i}`));
      for (const key of many) {
        const r = await acquired(store, key);
        await store.complete({ key, fence: r.fence, outgoing: [], retentionMs: 60_000 });
      }
      const keys = [
        ...['completed', 'in-progress', 'failed', 'released', 'long', 'expired', 'legacy', 'absent'].map(k),
        k('completed'),
        ...many,
      ];

      // A second client that reports its commands, to count the finds.
      const watched = new MongoClient(server.url, { monitorCommands: true });
      const finds: string[] = [];
      watched.on('commandStarted', (e) => {
        if (e.commandName === 'find') finds.push(e.commandName);
      });
      let answers: Awaited<ReturnType<MongoProcessedStore['getMany']>>;
      try {
        answers = await createMongoStore({ db: watched.db(test.db.databaseName) }).getMany(keys);
      } finally {
        await watched.close();
      }
      const one = await Promise.all(keys.map((key) => store.get(key)));
      expect(answers).toEqual(one);
      expect(answers.map((r) => r?.state)).toEqual([
        'COMPLETED',
        'IN_PROGRESS',
        'FAILED',
        'IN_PROGRESS',
        'COMPLETED',
        undefined,
        'COMPLETED',
        undefined,
        'COMPLETED',
        ...many.map(() => 'COMPLETED'),
      ]);
      expect(answers[4]?.attempt).toBe(7);
      // The heads, then one find per step of the longest walk (attempt 7: the hint may be stale).
      expect(finds.length).toBeLessThanOrEqual(6);
    });
  });

  describe('expiry', () => {
    it('ensureIndexes creates the sweeper’s and the stuck-work indexes, and is idempotent', async () => {
      await store.ensureIndexes();
      const names = (await raw.listIndexes().toArray()).map((index) => String(index.name));
      expect(names).toEqual(expect.arrayContaining(['eo_expiry', 'eo_in_progress']));
      await store.ensureIndexes();
    });

    it('a stale holder whose chain was cleared and swept meanwhile is told lost, and leaves nothing behind', async () => {
      // Before: its complete went into the deleted chain at a free position and answered ok.
      const swept = createMongoStore({ db: test.db, collectionName: 'stale_holder', expiredGraceMs: 0 });
      const stale = await acquired(swept, 'k', 100);
      await sleep(150); // the holder stalls past its lease
      expect(await swept.clear('k')).toBeTruthy();
      await sleep(5);
      await swept.sweepExpired();
      const next = await acquired(swept, 'k', 10_000);
      expect(await swept.complete({ key: 'k', fence: stale.fence, outgoing: [], retentionMs: 60_000 })).toBe(
        'lost',
      );
      expect((await swept.get('k'))?.fence).toBe(next.fence);
      expect(await swept.collection.countDocuments({ s: State.Completed })).toBe(0);
      await swept.close();
    });

    /**
     * A holder whose 100 ms lease is passing, on collection `name`, and a taker on the same one
     * through {@link takeoverWindow} (`fault` as there).
     */
    const holderAndTaker = async (name: string, fault?: WindowFault) => {
      const window = takeoverWindow(test.db.collection<RecordDoc>(name), fault);
      const holder = createMongoStore({ db: test.db, collectionName: name });
      const taker = createMongoStore({ db: test.db, collection: window.collection as never });
      const stale = await acquired(holder, 'k', 100);
      return { window, holder, taker, stale, close: () => Promise.all([holder.close(), taker.close()]) };
    };

    it('a step a stale holder journals while a takeover is between its read and its insert reaches the taker', async () => {
      // Before: the holder's saveStep found no successor yet and was answered ok, but the taker
      // had read the element before it and its attempt started without the step (run again).
      const { window, holder, taker, stale, close } = await holderAndTaker('takeover_window');
      expect(await holder.saveStep('k', stale.fence, 'before', Uint8Array.of(1))).toBe('ok');
      await sleep(150); // the holder stalls past its lease
      let answer: string | undefined;
      window.open(async () => {
        answer = await holder.saveStep('k', stale.fence, 'charge', Uint8Array.of(2));
      });
      const next = await begin(taker, 'k', 'w2', 10_000);
      expect(next).toMatchObject({ status: 'acquired', kind: 'takeover', attempt: 2 });
      expect(answer).toBe('ok');
      expect(Object.keys(next.status === 'acquired' ? next.steps : {})).toEqual(['before', 'charge']);
      const record = await taker.get('k');
      expect(Object.keys(record?.state === 'IN_PROGRESS' ? record.steps : {})).toEqual(['before', 'charge']);
      // A holder write after the taker's insert is refused.
      expect(await holder.saveStep('k', stale.fence, 'late', Uint8Array.of(3))).toBe('lost');
      await close();
    });

    const catchUpFaults: [string, WindowFault][] = [
      ['its catch-up read', (method, args) => method === 'findOne' && isCatchUpRead(args)],
      ['its catch-up update', (method, args) => method === 'updateOne' && setsField(args, 'a')],
      ['its head hint update', (method, args) => method === 'updateOne' && setsField(args, 'h')],
    ];
    it.each(catchUpFaults)(
      'a step the stale holder journaled (answered ok) reaches the next attempt when a takeover fails %s',
      async (label, fault) => {
        // Before: the taker's element went in without the step and its begin threw; the next
        // takeover copied that element and ran the step's effect again.
        const name = `catch_up_${label.replace(/\W/g, '_')}`;
        // Once, at the first call it names.
        const { window, holder, taker, stale, close } = await holderAndTaker(
          name,
          (method, args) => window.faulted === 0 && fault(method, args),
        );
        expect(await holder.saveStep('k', stale.fence, 'before', Uint8Array.of(1))).toBe('ok');
        await sleep(150); // the holder stalls past its lease
        let answer: string | undefined;
        window.open(async () => {
          answer = await holder.saveStep('k', stale.fence, 'charge', Uint8Array.of(2));
        });
        await expect(begin(taker, 'k', 't', 200)).rejects.toThrow();
        expect(window.faulted).toBe(1);
        expect(answer).toBe('ok'); // the holder was told its step is journaled
        await sleep(300); // the failed begin's lease runs out
        const next = await begin(holder, 'k', 'w3', 10_000);
        expect(next).toMatchObject({ status: 'acquired', kind: 'takeover' });
        expect(Object.keys(next.status === 'acquired' ? next.steps : {}).sort()).toEqual([
          'before',
          'charge',
        ]);
        await close();
      },
    );

    it("two takeovers in a row that fail their catch-up still pass the first holder's step on", async () => {
      // The first two catch-up reads fail.
      const { window, holder, taker, stale, close } = await holderAndTaker(
        'catch_up_twice',
        (method, args) => window.faulted < 2 && method === 'findOne' && isCatchUpRead(args),
      );
      await sleep(200);
      let answer: string | undefined;
      window.open(async () => {
        answer = await holder.saveStep('k', stale.fence, 'charge', Uint8Array.of(2));
      });
      await expect(begin(taker, 'k', 't', 100)).rejects.toThrow();
      await sleep(200);
      await expect(begin(taker, 'k', 't', 100)).rejects.toThrow();
      expect({ faulted: window.faulted, answer }).toEqual({ faulted: 2, answer: 'ok' });
      await sleep(200);
      const next = await begin(holder, 'k', 'w4', 10_000);
      expect(next).toMatchObject({ status: 'acquired', kind: 'takeover', attempt: 4 });
      expect(Object.keys(next.status === 'acquired' ? next.steps : {})).toEqual(['charge']);
      await close();
    });

    it('an extension answered ok while a takeover is between its read and its insert keeps the key its holder’s', async () => {
      // Before: the extension (the processor's, before a handler whose lease ran out meanwhile)
      // found no successor and was answered ok, and the taker was answered acquired: both ran.
      const { window, holder, stale, close, taker } = await holderAndTaker('extend_race');
      await sleep(200); // the holder's begin was answered late: its lease ran out before it started
      let extended: string | undefined;
      window.open(async () => {
        extended = await holder.extend('k', stale.fence, 400);
      });
      const next = await begin(taker, 'k', 't', 60_000);
      expect({ extended, taken: next.status }).toEqual({ extended: 'ok', taken: 'busy' });
      // The holder's next write finds the key moved on; after the lease it extended the key is
      // taken over once, with what the holder journaled.
      expect(await holder.saveStep('k', stale.fence, 'charge', Uint8Array.of(2))).toBe('lost');
      await sleep(500);
      const after = await begin(holder, 'k', 'w3', 60_000);
      expect(after).toMatchObject({ status: 'acquired', kind: 'takeover', attempt: 2 });
      expect(Object.keys(after.status === 'acquired' ? after.steps : {})).toEqual(['charge']);
      await close();
    });

    it('a release answered ok while a takeover is between its read and its insert makes the begin a retry', async () => {
      const { window, holder, taker, stale, close } = await holderAndTaker('release_race');
      await sleep(200);
      let released: string | undefined;
      window.open(async () => {
        released = await holder.release('k', stale.fence, { name: 'E', code: 'RETRY', message: 'boom' });
      });
      const next = await begin(taker, 'k', 't', 60_000);
      expect(released).toBe('ok');
      // Before: 'takeover', from the lease as first read.
      expect(next).toMatchObject({ status: 'acquired', attempt: 2, kind: 'retry' });
      await close();
    });

    it('a batch completion whose reply was lost after the server applied it answers ok, not lost', async () => {
      // Before: retried key by key, each insert met its own element and answered lost, and core
      // then deleted the blobs the COMPLETED records name.
      let failNext = true;
      const target = test.db.collection<RecordDoc>('lost_reply');
      const collection = new Proxy(target, {
        get(t, prop) {
          const value = Reflect.get(t, prop, t);
          if (prop !== 'insertMany' || typeof value !== 'function') {
            return typeof value === 'function' ? value.bind(t) : value;
          }
          return async (...args: unknown[]) => {
            const applied = await value.apply(t, args);
            const docs = args[0] as RecordDoc[];
            if (failNext && docs[0]?.s === State.Completed) {
              failNext = false;
              throw new MongoNetworkError('connection reset after the server applied the insert');
            }
            return applied;
          };
        },
      });
      const lossy = createMongoStore({ db: test.db, collection: collection as never });
      const leases = await (lossy.beginMany as NonNullable<typeof lossy.beginMany>)([
        { key: 'a', fingerprint: 'fp', owner: 'w', leaseMs: 10_000 },
        { key: 'b', fingerprint: 'fp', owner: 'w', leaseMs: 10_000 },
      ]);
      const fences = leases.map((l) => (l.status === 'acquired' ? l.fence : -1));
      const answers = await lossy.completeMany?.(
        ['a', 'b'].map((key, i) => ({ key, fence: fences[i] as number, outgoing: [], retentionMs: 60_000 })),
      );
      expect(answers).toEqual(['ok', 'ok']);
      expect(failNext).toBe(false);
      expect((await lossy.get('a'))?.state).toBe('COMPLETED');
      await lossy.close();
    });

    it('leaves an expired record and its blob for expiredGraceMs: a duplicate answered just before can still read it', async () => {
      // Before: swept at its expiry, the blob went while a duplicate answered a moment earlier
      // was still streaming it (BlobIntegrityError half-way).
      const blobs = createGridFsBlobStore({ db: test.db, bucketName: 'grace_blobs' });
      const swept = createMongoStore({
        db: test.db,
        collectionName: 'grace_records',
        blobs,
        expiredGraceMs: 600,
      });
      const blob = await blobs.put(Uint8Array.of(7, 7, 7));
      const lease = await acquired(swept, 'graced');
      const result = { kind: 'blob', pointer: blob } as const;
      expect(
        await swept.complete({ key: 'graced', fence: lease.fence, outgoing: [], retentionMs: 50, result }),
      ).toBe('ok');
      await sleep(150);
      expect(await swept.get('graced')).toBeUndefined(); // expired: it reads as absent
      expect(await swept.sweepExpired()).toEqual({ deleted: 0, blobsDeleted: 0, abandoned: 0, damaged: 0 });
      expect(Array.from(await blobs.get(blob))).toEqual([7, 7, 7]);
      await sleep(600);
      expect(await swept.sweepExpired()).toEqual({ deleted: 4, blobsDeleted: 1, abandoned: 0, damaged: 0 });
      await expect(blobs.get(blob)).rejects.toMatchObject({ code: 'BLOB_INTEGRITY' });
      await swept.close();
    });

    it("a pointer the blob store refuses (another store's) is swept like a blob already gone; the pass goes on", async () => {
      // Before: its BlobIntegrityError failed every pass at that chain, and nothing after it in
      // the pass was swept (records written with another blob store, e.g. files, before a move).
      const blobs = createGridFsBlobStore({ db: test.db, bucketName: 'foreign_blobs' });
      const swept = createMongoStore({
        db: test.db,
        collectionName: 'foreign_records',
        blobs,
        expiredGraceMs: 0,
      });
      const files = { uri: `fs:${'c'.repeat(64)}`, size: 3, sha256: 'd'.repeat(64) };
      const own = await blobs.put(Uint8Array.of(4, 4, 4));
      for (const [key, pointer] of [
        ['foreign', files],
        ['own', own],
      ] as const) {
        const lease = await acquired(swept, key);
        const result = { kind: 'blob', pointer } as const;
        expect(await swept.complete({ key, fence: lease.fence, outgoing: [], retentionMs: 50, result })).toBe(
          'ok',
        );
      }
      await sleep(150);
      expect(await swept.sweepExpired()).toEqual({ deleted: 8, blobsDeleted: 1, abandoned: 0, damaged: 0 });
      await expect(blobs.get(own)).rejects.toMatchObject({ code: 'BLOB_INTEGRITY' });
      expect(await swept.collection.countDocuments({})).toBe(0);
      await swept.close();
    });

    it('the sweeper deletes expired chains and their blobs, never a live record or its blob', async () => {
      const blobs = createGridFsBlobStore({ db: test.db, bucketName: 'sweep_blobs' });
      const swept = createMongoStore({
        db: test.db,
        collectionName: 'sweep_records',
        blobs,
        expiredGraceMs: 0,
      });
      const put = (byte: number) => blobs.put(Uint8Array.of(byte, byte, byte));
      const finish = async (key: string, retentionMs: number, blob?: Awaited<ReturnType<typeof put>>) => {
        const lease = await acquired(swept, key);
        const result = blob === undefined ? undefined : ({ kind: 'blob', pointer: blob } as const);
        expect(await swept.complete({ key, fence: lease.fence, outgoing: [], retentionMs, result })).toBe(
          'ok',
        );
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

      // Three chains of head + lease + terminal + the sweeper's seal.
      expect(await swept.sweepExpired()).toEqual({ deleted: 12, blobsDeleted: 1, abandoned: 0, damaged: 0 });
      const left = await swept.collection.find({}).toArray();
      expect(new Set(left.map((d) => d.k ?? d._id))).toEqual(new Set(['in-progress', 'live-with-blob']));
      await expect(blobs.get(expiredBlob)).rejects.toMatchObject({ code: 'BLOB_INTEGRITY' });
      expect(Array.from(await blobs.get(liveBlob))).toEqual([2, 2, 2]);
      expect(await swept.sweepExpired()).toEqual({ deleted: 0, blobsDeleted: 0, abandoned: 0, damaged: 0 });
      expect((await begin(swept, 'expired-plain')).status).toBe('acquired');
      await swept.close();
    });

    it('drops a lease abandoned past inProgressTtlMs, never a live or a finished one', async () => {
      // Before: an IN_PROGRESS record whose key never came again was never swept.
      const swept = createMongoStore({
        db: test.db,
        collectionName: 'abandoned_records',
        inProgressTtlMs: 400,
        expiredGraceMs: 0,
      });
      const docsOf = async (key: string) =>
        (await swept.collection.find({}).toArray()).filter((d) => (d.k ?? d._id) === key);
      await acquired(swept, 'died', 50); // its worker died: nobody extends, nobody comes back
      const released = await acquired(swept, 'released', 50);
      expect(await swept.release('released', released.fence, { name: 'E', code: 'E', message: 'm' })).toBe(
        'ok',
      );
      const finished = await acquired(swept, 'finished', 50);
      expect(
        await swept.complete({ key: 'finished', fence: finished.fence, outgoing: [], retentionMs: 600_000 }),
      ).toBe('ok');
      const live = await acquired(swept, 'live', 300);
      await sleep(250);
      expect(await swept.extend('live', live.fence, 600_000)).toBe('ok'); // a long run, still extending
      await sleep(300);

      expect(await swept.sweepExpired()).toEqual({ deleted: 6, blobsDeleted: 0, abandoned: 2, damaged: 0 });
      expect(await docsOf('died')).toEqual([]);
      expect(await docsOf('released')).toEqual([]);
      expect((await swept.get('live'))?.state).toBe('IN_PROGRESS');
      expect((await swept.get('finished'))?.state).toBe('COMPLETED');
      // The finished record's lease is read once, then left out of every later query.
      const leftLeases = await swept.collection
        .find({ s: State.InProgress, sa: { $exists: true } })
        .toArray();
      expect(leftLeases.map((d) => d.k)).toEqual(['live']);
      expect(await swept.sweepExpired()).toEqual({ deleted: 0, blobsDeleted: 0, abandoned: 0, damaged: 0 });
      // The key runs anew when it comes back, at a higher fence.
      const again = await acquired(swept, 'died');
      expect(again.kind).toBe('new');
      expect(again.attempt).toBe(1);
      await swept.close();
    });

    it('cuts the lease of an attempt that ended with a result to its _id after finishedLeaseMs; the record reads as before', async () => {
      // Before: a finished attempt's lease (~260 of a record's ~600 bytes of BSON) stayed whole
      // until the record expired.
      const swept = createMongoStore({
        db: test.db,
        collectionName: 'tombstone_records',
        finishedLeaseMs: 200,
        expiredGraceMs: 0,
      });
      const chainOfKey = async (key: string) => {
        const head = (await swept.collection.findOne({ _id: key })) as unknown as HeadDoc;
        return head.c;
      };
      const elementOf = async (key: string, position: number) =>
        swept.collection.findOne({ _id: elementId(await chainOfKey(key), position) });
      const paid = await acquired(swept, 'paid');
      expect(await swept.saveStep('paid', paid.fence, 'charge', Uint8Array.of(1))).toBe('ok');
      const result = { kind: 'inline', data: Uint8Array.of(4, 2) } as const;
      expect(
        await swept.complete({ key: 'paid', fence: paid.fence, outgoing: [], retentionMs: 600_000, result }),
      ).toBe('ok');
      const refused = await acquired(swept, 'refused');
      const error = { name: 'E', code: 'E', message: 'm' };
      expect(await swept.fail('refused', refused.fence, error, 600_000)).toBe('ok');
      await acquired(swept, 'taken', 50); // its worker died: the next copy takes it over
      await sleep(100);
      expect((await begin(swept, 'taken', 'taker', 600_000)).status).toBe('acquired');
      await acquired(swept, 'live', 600_000);
      await sleep(300);

      expect(await swept.sweepExpired()).toEqual({ deleted: 0, blobsDeleted: 0, abandoned: 0, damaged: 0 });
      for (const key of ['paid', 'refused']) {
        expect(await elementOf(key, 1)).toEqual({ _id: elementId(await chainOfKey(key), 1) });
      }
      // A lease followed by another lease stays whole (its successor copied its steps from it);
      // only its `sa` goes. The live lease is untouched.
      expect(await elementOf('taken', 1)).toMatchObject({ s: State.InProgress, o: 'w' });
      expect((await elementOf('taken', 1))?.sa).toBeUndefined();
      expect(await elementOf('live', 1)).toMatchObject({ s: State.InProgress, sa: expect.any(Number) });

      expect(await swept.get('paid')).toMatchObject({ state: 'COMPLETED', fence: paid.fence, result });
      expect(await begin(swept, 'paid')).toMatchObject({ status: 'duplicate' });
      expect((await swept.getMany(['paid', 'refused'])).map((r) => r?.state)).toEqual([
        'COMPLETED',
        'FAILED',
      ]);
      expect(await begin(swept, 'refused')).toMatchObject({ status: 'failed' });
      expect((await swept.history('paid')).map((h) => h.record.state)).toEqual(['COMPLETED']);
      // The tombstone still holds its place: a stalled worker's late insert there is refused.
      await expect(
        swept.collection.insertOne({ _id: elementId(await chainOfKey('paid'), 1) } as unknown as RecordDoc),
      ).rejects.toMatchObject({ code: 11000 });
      expect(await swept.sweepExpired()).toEqual({ deleted: 0, blobsDeleted: 0, abandoned: 0, damaged: 0 });
      await swept.close();
    });

    it("a chain whose last element is a tombstone is being swept: it is never read as the key's state", async () => {
      const key = 'tomb:last';
      const lease = await acquired(store, key);
      expect(await store.complete({ key, fence: lease.fence, outgoing: [], retentionMs: 600_000 })).toBe(
        'ok',
      );
      const head = (await raw.findOne({ _id: key })) as unknown as HeadDoc;
      // What a walker that read the head before the sweeper deleted it (head first, then the
      // elements) can meet: element 2 gone first, element 1 already a tombstone.
      await raw.deleteOne({ _id: elementId(head.c, 2) });
      await raw.replaceOne({ _id: elementId(head.c, 1) }, {} as RecordDoc);
      await raw.deleteOne({ _id: key });
      const reads = [head]; // the walker's read of the head, before the sweeper deleted it
      const heads = { findOne: async () => reads.shift() ?? null } as unknown as Collection<HeadDoc>;
      expect(await readChain({ collection: raw, heads }, key)).toBe('gone');
      await raw.deleteMany({ _id: { $in: [elementId(head.c, 1)] } });
    });

    it('a takeover racing the sweep of its abandoned lease: the taker keeps the key, or the key is gone and runs anew', async () => {
      const swept = createMongoStore({ db: test.db, collectionName: 'abandoned_race', inProgressTtlMs: 100 });
      const keys = Array.from({ length: 20 }, (_, i) => `abandoned-${i}`);
      for (const key of keys) await acquired(swept, key, 20);
      await sleep(250);
      const [, ...begins] = await Promise.all([
        swept.sweepExpired(),
        ...keys.map((key) => begin(swept, key, 'taker', 60_000)),
      ]);
      for (const [i, key] of keys.entries()) {
        const answer = begins[i];
        const record = await swept.get(key);
        if (answer?.status === 'acquired') {
          // Won the race (a takeover, or a new key after the sweep): its lease is the key's state.
          expect(record).toMatchObject({ state: 'IN_PROGRESS', fence: answer.fence, owner: 'taker' });
        } else {
          // Met the seal: busy until the sweep is done, then the key is new.
          expect(answer?.status).toBe('busy');
          expect(record === undefined || record.state === 'IN_PROGRESS').toBe(true);
          expect((await begin(swept, key, 'later', 60_000)).status).toBe('acquired');
        }
      }
      await swept.close();
    });

    it('a record renewed between the sweeper’s read and its seal survives, and so does its blob', async () => {
      const blobs = createGridFsBlobStore({ db: test.db, bucketName: 'renew_blobs' });
      const swept = createMongoStore({
        db: test.db,
        collectionName: 'renew_records',
        blobs,
        expiredGraceMs: 0,
      });
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
      const stale = await readChain({ collection: swept.collection, heads: swept.collection as never }, key);
      if (stale === undefined || stale === 'gone') throw new Error('no chain');
      expect((await begin(swept, key)).status).toBe('acquired'); // renews the expired record
      const context = {
        collection: swept.collection,
        heads: swept.collection as never,
        write: { writeConcern: {} },
        blobs,
        clock: clientClock(),
      };
      expect(await dismantle(context, stale, 30_000)).toEqual({ deleted: 0, blobsDeleted: 0 });
      expect((await swept.get(key))?.state).toBe('IN_PROGRESS');
      expect(Array.from(await blobs.get(blob))).toEqual([7]);
      await swept.close();
    });

    it('a takeover that lands in a chain swept meanwhile is undone; the key starts a new chain', async () => {
      const name = 'void_records';
      const key = 'late';
      const swept = createMongoStore({ db: test.db, collectionName: name, expiredGraceMs: 0 });
      const lease = await acquired(swept, key);
      await swept.complete({ key, fence: lease.fence, outgoing: [], retentionMs: 50 });
      await sleep(120);
      // A worker reads the expired record, then stalls: the sweeper deletes the whole chain before
      // the worker's insert of the next element arrives.
      const target = test.db.collection<RecordDoc>(name);
      let swept1 = false;
      const slow = new Proxy(target, {
        get(object, property, receiver) {
          if (property !== 'insertOne') return Reflect.get(object, property, receiver);
          return async (...args: Parameters<typeof object.insertOne>) => {
            if (!swept1) {
              swept1 = true;
              expect((await swept.sweepExpired()).deleted).toBe(4);
            }
            return object.insertOne(...args);
          };
        },
      });
      const late = createMongoStore({ db: test.db, collection: slow as never });
      const result = await late.begin({ key, fingerprint: 'fp', owner: 'late', leaseMs: 300 });
      expect(result).toMatchObject({ status: 'acquired', kind: 'new' });
      const head = (await target.findOne({ _id: key })) as unknown as HeadDoc;
      const left = await target.find({}).toArray();
      // Only the new head and its first lease: the insert into the deleted chain was undone.
      expect(left.map((d) => d._id).sort()).toEqual([key, elementId(head.c, 1)].sort());
      await swept.close();
    });

    it('a sweeper that died after sealing is finished by the next sweep after the seal timeout', async () => {
      const swept = createMongoStore({
        db: test.db,
        collectionName: 'sealed_records',
        // Long enough that the begin below comes before the seal times out, however loaded.
        sealTimeoutMs: 1_500,
        expiredGraceMs: 0,
      });
      const key = 'sealed';
      const lease = await acquired(swept, key);
      await swept.complete({ key, fence: lease.fence, outgoing: [], retentionMs: 20 });
      await sleep(60);
      const chain = await readChain({ collection: swept.collection, heads: swept.collection as never }, key);
      if (chain === undefined || chain === 'gone') throw new Error('no chain');
      // The seal alone, as a sweeper that died right after inserting it leaves it.
      await swept.collection.insertOne({
        _id: elementId(chain.chain, 3),
        k: key,
        s: State.Sealed,
        d: Date.now(),
        e: new Date(),
      } as RecordDoc);
      expect((await begin(swept, key)).status).toBe('busy');
      await sleep(1_600);
      expect((await swept.sweepExpired()).deleted).toBe(5);
      expect(await begin(swept, key)).toMatchObject({ status: 'acquired', kind: 'new' });
      await swept.close();
    });

    it('startSweeper runs in the background until stopped; close stops it', async () => {
      const swept = createMongoStore({ db: test.db, collectionName: 'bg_records', expiredGraceMs: 0 });
      const lease = await acquired(swept, 'bg');
      await swept.complete({ key: 'bg', fence: lease.fence, outgoing: [], retentionMs: 20 });
      swept.startSweeper(50);
      for (let i = 0; i < 40 && (await swept.collection.countDocuments({})) > 0; i++) await sleep(50);
      expect(await swept.collection.countDocuments({})).toBe(0);
      await swept.close();
    });
  });
});

describe('outage', () => {
  useServer(MONGO_URL);
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

describe('a process started while the server is down', () => {
  useServer(MONGO_URL);

  /**
   * A client first used while its server is unreachable (a proxy refusing connections), the
   * database it opens, and `serverBack()`; closed with the proxy afterwards.
   */
  async function startedDuringOutage(use: (db: Db, serverBack: () => void) => Promise<void>): Promise<void> {
    const proxy = await startProxy(new URL(MONGO_URL.replace(/^mongodb:/, 'http:')));
    proxy.down();
    const client = new MongoClient(`mongodb://127.0.0.1:${proxy.port}/?directConnection=true`, {
      serverSelectionTimeoutMS: 300,
    });
    try {
      await use(client.db(test.db.databaseName), () => proxy.up());
    } finally {
      await client.close();
      await proxy.close();
    }
  }

  /** The first answer of `call` within 4 s, retried every 100 ms while it fails. */
  async function firstAnswer<T>(call: () => Promise<T>): Promise<T | undefined> {
    for (let i = 0; i < 40; i++) {
      try {
        return await call();
      } catch {
        await sleep(100);
      }
    }
    return undefined;
  }

  it('its store reaches the server once it is back (the driver closed the client after the failed first connection)', async () => {
    // Before: every operation failed with "Topology is closed" for good, as long as the process
    // lived (an outside test's API answered 503 for 90 s after the server was back).
    await startedDuringOutage(async (db, serverBack) => {
      const late = createMongoStore({ db, collectionName: 'late_start' });
      await expect(late.ensureIndexes()).rejects.toBeInstanceOf(StoreUnavailableError);
      serverBack();
      const begun = await firstAnswer(() =>
        late.begin({ key: 'late:1', fingerprint: 'f', owner: 'o', leaseMs: 1_000 }),
      );
      expect(begun?.status, 'a begin acquired once the server was back').toBe('acquired');
      await late.close();
    });
  });

  it("its outbox source reaches the server once it is back (a relay's reads and marks)", async () => {
    await startedDuringOutage(async (db, serverBack) => {
      const source = createMongoOutboxSource({ collection: db.collection('late_outbox') });
      await expect(source.countPending()).rejects.toThrow();
      serverBack();
      expect(await firstAnswer(() => source.countPending())).toBe(0);
    });
  });

  it('a client closed on purpose stays closed', async () => {
    const client = new MongoClient(MONGO_URL, { serverSelectionTimeoutMS: 300 });
    const store = createMongoStore({
      db: client.db(test.db.databaseName),
      collectionName: 'closed_on_purpose',
    });
    await store.get('closed:1');
    await client.close();
    await expect(store.get('closed:1')).rejects.toBeInstanceOf(StoreUnavailableError);
    await sleep(200);
    // Not opened again by the store: no topology, as close() left it.
    expect((client as unknown as { topology?: unknown }).topology).toBeUndefined();
    await store.close();
  });
});

describe('clock', () => {
  useServer(MONGO_URL);
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
