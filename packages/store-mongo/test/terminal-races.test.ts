/**
 * A holder's completion against the writers that can end its chain meanwhile (the sweeper, an
 * operator's clear), and against its own earlier try whose answer was lost: `ok` only for a
 * completion the key's record holds, and always `ok` for one it does.
 */
import { MongoNetworkError } from 'mongodb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RecordDoc, State } from '../src/codec.js';
import { createMongoStore } from '../src/index.js';
import { MONGO_SERVERS, openTestDatabase, type TestDatabase } from './helpers.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** `target` with `method` run through `hook` (which calls it, or not, around its own work). */
function hooked<T extends object>(
  target: T,
  method: string,
  hook: (args: unknown[], call: () => Promise<unknown>) => Promise<unknown>,
): T {
  return new Proxy(target, {
    get(t, prop) {
      const value = Reflect.get(t, prop, t);
      if (typeof value !== 'function') return value;
      if (prop !== method) return value.bind(t);
      return (...args: unknown[]) => hook(args, () => value.apply(t, args));
    },
  });
}

describe.each(MONGO_SERVERS)('$name', (server) => {
  let test: TestDatabase;
  beforeAll(async () => {
    test = await openTestDatabase('races', server.url);
  });
  afterAll(async () => {
    await test?.drop();
  });

  it('an extension answered ok just before the sweeper dropped the chain does not make a completion count', async () => {
    // Before: the completion trusted the lease as last extended, was answered `ok` into the
    // deleted chain, and the key was begun again as new (a processed message run twice).
    const name = 'swept_under_extend';
    const holder = createMongoStore({ db: test.db, collectionName: name });
    let inWindow: (() => Promise<void>) | undefined;
    const sweeperCollection = hooked(test.db.collection<RecordDoc>(name), 'insertOne', async (args, call) => {
      // The extension lands between the sweeper's read of the abandoned lease and its seal.
      if (inWindow && (args[0] as RecordDoc).s === State.Sealed) {
        const extend = inWindow;
        inWindow = undefined;
        await extend();
      }
      return call();
    });
    const sweeper = createMongoStore({ collection: sweeperCollection as never, inProgressTtlMs: 1 });
    const begun = await holder.begin({ key: 'k', fingerprint: 'fp', owner: 'h', leaseMs: 100 });
    if (begun.status !== 'acquired') throw new Error(begun.status);
    await sleep(200);
    let extended: string | undefined;
    inWindow = async () => {
      extended = await holder.extend('k', begun.fence, 60_000);
    };
    expect(await sweeper.sweepExpired()).toMatchObject({ abandoned: 1 });
    expect(extended).toBe('ok');
    const completed = await holder.complete({
      key: 'k',
      fence: begun.fence,
      outgoing: [],
      retentionMs: 3_600_000,
    });
    expect(completed).toBe('lost');
    expect(await holder.get('k')).toBeUndefined();
    await Promise.all([holder.close(), sweeper.close()]);
  });

  it('an extension answered ok just before an operator cleared the key does not make a completion count', async () => {
    const name = 'cleared_under_extend';
    const holder = createMongoStore({ db: test.db, collectionName: name });
    let inWindow: (() => Promise<void>) | undefined;
    const operatorCollection = hooked(
      test.db.collection<RecordDoc>(name),
      'insertOne',
      async (args, call) => {
        if (inWindow && (args[0] as RecordDoc).s === State.Failed) {
          const extend = inWindow;
          inWindow = undefined;
          await extend();
        }
        return call();
      },
    );
    const operator = createMongoStore({ collection: operatorCollection as never, expiredGraceMs: 0 });
    const begun = await holder.begin({ key: 'k', fingerprint: 'fp', owner: 'h', leaseMs: 100 });
    if (begun.status !== 'acquired') throw new Error(begun.status);
    await sleep(150);
    inWindow = async () => {
      await holder.extend('k', begun.fence, 60_000);
    };
    expect(await operator.clear('k')).toBe('cleared');
    await sleep(5);
    await operator.sweepExpired();
    expect(
      await holder.complete({ key: 'k', fence: begun.fence, outgoing: [], retentionMs: 3_600_000 }),
    ).toBe('lost');
    await Promise.all([holder.close(), operator.close()]);
  });

  it('completeMany tried again after its insert landed unanswered answers ok, as complete does', async () => {
    // Before: the batch took its own landed completion for another writer's and answered `lost`
    // (a redelivery instead of the ack).
    const name = 'complete_many_repeat';
    let failBatch = 0;
    let failOne = 0;
    let collection = hooked(test.db.collection<RecordDoc>(name), 'insertMany', async (args, call) => {
      const applied = await call();
      if (failBatch > 0 && (args[0] as RecordDoc[])[0]?.s === State.Completed) {
        failBatch--;
        throw new MongoNetworkError('reply lost');
      }
      return applied;
    });
    collection = hooked(collection, 'insertOne', async (args, call) => {
      if (failOne > 0 && (args[0] as RecordDoc).s === State.Completed) {
        failOne--;
        throw new MongoNetworkError('unreachable');
      }
      return call();
    });
    const store = createMongoStore({ collection: collection as never });
    const begun = await store.begin({ key: 'k', fingerprint: 'fp', owner: 'h', leaseMs: 10_000 });
    if (begun.status !== 'acquired') throw new Error(begun.status);
    const request = { key: 'k', fence: begun.fence, outgoing: [], retentionMs: 60_000 };
    failBatch = 1;
    failOne = 1;
    await expect(store.completeMany?.([request])).rejects.toBeDefined();
    expect(await store.completeMany?.([request])).toEqual(['ok']);
    expect(await store.get('k')).toMatchObject({ state: 'COMPLETED', fence: begun.fence });
    await store.close();
  });
});
