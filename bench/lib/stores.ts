/**
 * The processed-stores under test, each behind a wrapper that counts calls per operation, so
 * "store round trips per message" is measured rather than assumed. Everything a store writes is
 * scoped to the run (a Redis key prefix in the bench's own DB, a Mongo database of the run) and
 * removed by `cleanup`.
 */
import { createMemoryStore, type ProcessedStore } from '@exactly-once/core';
import { createMongoStore } from '@exactly-once/store-mongo';
import { createRedisStore } from '@exactly-once/store-redis';
import { Redis } from 'ioredis';
import { type Db, MongoClient } from 'mongodb';
import { env, uniqueName } from './env.js';

export type StoreKind = 'memory' | 'redis' | 'mongo';
export const STORE_KINDS: readonly StoreKind[] = ['memory', 'redis', 'mongo'];

const OPERATIONS = [
  'begin',
  'extend',
  'complete',
  'release',
  'fail',
  'markPublished',
  'saveStep',
  'get',
] as const;
export type StoreCalls = Record<(typeof OPERATIONS)[number], number>;

export interface BenchStore {
  readonly kind: StoreKind;
  readonly store: ProcessedStore;
  readonly calls: StoreCalls;
  /** Redis: the prefix (with its `:`) of every key the store writes. */
  readonly keyPrefix?: string;
  /** Sum of all calls. */
  total(): number;
  /** Removes what this store wrote. */
  cleanup(): Promise<void>;
}

/** A store that forwards every operation and counts it. */
export function counted(inner: ProcessedStore): { store: ProcessedStore; calls: StoreCalls } {
  const calls = Object.fromEntries(OPERATIONS.map((op) => [op, 0])) as StoreCalls;
  const count = <A extends unknown[], R>(op: keyof StoreCalls, fn: (...args: A) => R) => {
    return (...args: A): R => {
      calls[op]++;
      return fn(...args);
    };
  };
  const store: ProcessedStore = {
    begin: count('begin', (r) => inner.begin(r)),
    extend: count('extend', (k, f, l) => inner.extend(k, f, l)),
    complete: count('complete', (r) => inner.complete(r)),
    release: count('release', (k, f, e) => inner.release(k, f, e)),
    fail: count('fail', (k, f, e, r) => inner.fail(k, f, e, r)),
    markPublished: count('markPublished', (k, f, ids) => inner.markPublished(k, f, ids)),
    saveStep: count('saveStep', (k, f, n, r) => inner.saveStep(k, f, n, r)),
    get: count('get', (k) => inner.get(k)),
  };
  return { store, calls };
}

/** Deletes the keys under `prefix` (SCAN + UNLINK): only the bench's own keys, never a flush. */
export async function deleteByPrefix(client: Redis, prefix: string): Promise<number> {
  let cursor = '0';
  let deleted = 0;
  do {
    const [next, keys] = await client.scanBuffer(cursor, 'MATCH', `${prefix}*`, 'COUNT', 2000);
    cursor = next.toString();
    if (keys.length > 0) deleted += await client.unlink(...keys);
  } while (cursor !== '0');
  return deleted;
}

export interface CommandStat {
  calls: number;
  /** Server CPU time spent in the command, µs. */
  usec: number;
}

/** `INFO commandstats` by command. Server-wide: other clients' commands count too. */
export async function commandStats(client: Redis): Promise<Map<string, CommandStat>> {
  const info = await client.info('commandstats');
  const stats = new Map<string, CommandStat>();
  for (const m of info.matchAll(/^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/gm)) {
    stats.set(m[1] as string, { calls: Number(m[2]), usec: Number(m[3]) });
  }
  return stats;
}

/** Calls and server µs of `names` between two snapshots. */
export function commandDelta(
  before: Map<string, CommandStat>,
  after: Map<string, CommandStat>,
  names: string[],
): CommandStat {
  const sum = (m: Map<string, CommandStat>, k: keyof CommandStat) =>
    names.reduce((acc, n) => acc + (m.get(n)?.[k] ?? 0), 0);
  return {
    calls: sum(after, 'calls') - sum(before, 'calls'),
    usec: sum(after, 'usec') - sum(before, 'usec'),
  };
}

/** Opens the clients once per run and hands out fresh, counted stores. */
export class StoreKit {
  readonly redis: Redis;
  private mongo: MongoClient | undefined;
  private db: Db | undefined;
  readonly runId = uniqueName('eb').replace('-', '');

  /**
   * Plain settings by default: the figures should be those of a default ioredis client.
   * `autoPipelining` turns on ioredis' `enableAutoPipelining` for the stores' client (an experiment:
   * commands issued in the same tick share one socket write).
   */
  constructor(autoPipelining = false) {
    this.redis = new Redis(env.redisUrl, {
      db: env.redisDb,
      maxRetriesPerRequest: 2,
      enableAutoPipelining: autoPipelining,
    });
  }

  private async mongoDb(): Promise<Db> {
    if (this.db) return this.db;
    this.mongo = new MongoClient(env.mongoUrl, { serverSelectionTimeoutMS: 10_000 });
    await this.mongo.connect();
    this.db = this.mongo.db(`eo_bench_${this.runId}`);
    return this.db;
  }

  /**
   * A fresh store. Redis key prefixes are random so concurrent runs never share keys; at 7
   * characters they make key names (and `MEMORY USAGE`) 16 bytes bigger than the default `eo`,
   * so the storage sample asks for `shortPrefix`: 2 random characters, like `eo`.
   */
  async make(kind: StoreKind, options: { shortPrefix?: boolean } = {}): Promise<BenchStore> {
    let inner: ProcessedStore;
    let cleanup: () => Promise<void>;
    let scope: string | undefined;
    if (kind === 'memory') {
      inner = createMemoryStore();
      cleanup = async () => {};
    } else if (kind === 'redis') {
      const random = uniqueName('b').replace('-', '');
      const keyPrefix = options.shortPrefix ? random.slice(-2) : random.slice(0, 7);
      const store = createRedisStore({ client: this.redis, keyPrefix });
      await store.checkServer();
      inner = store;
      scope = `${keyPrefix}:`;
      cleanup = async () => {
        await deleteByPrefix(this.redis, `${keyPrefix}:`);
      };
    } else {
      const db = await this.mongoDb();
      const collectionName = uniqueName('r').replace('-', '');
      const store = createMongoStore({ db, collectionName });
      await store.ensureIndexes();
      inner = store;
      cleanup = async () => {
        await store.close();
        await db
          .collection(collectionName)
          .drop()
          .catch(() => {});
      };
    }
    const { store, calls } = counted(inner);
    return {
      kind,
      store,
      calls,
      ...(scope ? { keyPrefix: scope } : {}),
      total: () => Object.values(calls).reduce((a, b) => a + b, 0),
      cleanup,
    };
  }

  async close(): Promise<void> {
    if (this.db) await this.db.dropDatabase().catch(() => {});
    await this.mongo?.close();
    await this.redis.quit();
  }
}
