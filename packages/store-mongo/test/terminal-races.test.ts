/**
 * A holder's completion against the writers that can end its chain meanwhile (the sweeper, an
 * operator's clear), and against its own earlier try whose answer was lost: `ok` only for a
 * completion the key's record holds, and always `ok` for one it does.
 */
import { MongoNetworkError } from 'mongodb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RecordDoc, State } from '../src/codec.js';
import { createMongoStore, type MongoStoreOptions } from '../src/index.js';
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

  /**
   * A holder of key `k` in collection `name` whose lease (100 ms) has passed, and another writer
   * (a store with `options`) whose insert of an element in `state` is preceded by the holder's
   * extension, answered `ok`: the extension lands between that writer's read and its insert.
   */
  async function holderAndWriter(name: string, state: State, options: Partial<MongoStoreOptions>) {
    const holder = createMongoStore({ db: test.db, collectionName: name });
    const extensions: string[] = [];
    let armed = false;
    const begun = await holder.begin({ key: 'k', fingerprint: 'fp', owner: 'h', leaseMs: 100 });
    if (begun.status !== 'acquired') throw new Error(begun.status);
    const collection = hooked(test.db.collection<RecordDoc>(name), 'insertOne', async (args, call) => {
      if (armed && (args[0] as RecordDoc).s === state) {
        armed = false;
        extensions.push(await holder.extend('k', begun.fence, 60_000));
      }
      return call();
    });
    const writer = createMongoStore({ collection: collection as never, ...options });
    await sleep(200);
    armed = true;
    const complete = () =>
      holder.complete({ key: 'k', fence: begun.fence, outgoing: [], retentionMs: 3_600_000 });
    return { holder, writer, extensions, complete };
  }

  it('an extension answered ok just before the sweeper dropped the chain does not make a completion count', async () => {
    // Before: the completion trusted the lease as last extended, was answered `ok` into the
    // deleted chain, and the key was begun again as new (a processed message run twice).
    const { holder, writer, extensions, complete } = await holderAndWriter(
      'swept_under_extend',
      State.Sealed,
      {
        inProgressTtlMs: 1,
      },
    );
    expect(await writer.sweepExpired()).toMatchObject({ abandoned: 1 });
    expect(extensions).toEqual(['ok']);
    expect(await complete()).toBe('lost');
    expect(await holder.get('k')).toBeUndefined();
    await Promise.all([holder.close(), writer.close()]);
  });

  it('an extension answered ok just before an operator cleared the key does not make a completion count', async () => {
    const { holder, writer, extensions, complete } = await holderAndWriter(
      'cleared_under_extend',
      State.Failed,
      {
        expiredGraceMs: 0,
      },
    );
    expect(await writer.clear('k')).toBe('cleared');
    expect(extensions).toEqual(['ok']);
    await sleep(5);
    await writer.sweepExpired();
    expect(await complete()).toBe('lost');
    await Promise.all([holder.close(), writer.close()]);
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
