/**
 * The processed-stores under test, each behind a wrapper that counts calls per operation, so
 * "store round trips per message" is measured rather than assumed. Everything a store writes is
 * scoped to the run (a Redis key prefix in the bench's own DB or on the cluster, a Mongo database
 * of the run on each Mongo server) and removed by `cleanup`.
 */
import { createMemoryStore, type ProcessedStore } from '@exactly-once/core';
import { createMongoStore } from '@exactly-once/store-mongo';
import { createRedisStore } from '@exactly-once/store-redis';
import { Cluster, Redis } from 'ioredis';
import { type Db, MongoClient } from 'mongodb';
import { env, uniqueName } from './env.js';

/**
 * `redis-cluster`: store-redis on an ioredis `Cluster` (the 3-master cluster of infra.sh).
 * `mongo`: store-mongo on FerretDB 1.x (EO_MONGO_URL); `mongo-java`: on mongo-java-server
 * (EO_MONGO_JAVA_URL), each with a client and a database of its own.
 */
export type StoreKind = 'memory' | 'redis' | 'redis-cluster' | 'mongo' | 'mongo-java';
export const STORE_KINDS: readonly StoreKind[] = ['memory', 'redis', 'redis-cluster', 'mongo', 'mongo-java'];
type MongoKind = Extract<StoreKind, 'mongo' | 'mongo-java'>;

/** The store-mongo kinds: they run with `--mongo-messages` messages. */
export const isMongo = (kind: StoreKind | undefined): kind is MongoKind =>
  kind === 'mongo' || kind === 'mongo-java';

/** How often the Mongo stores sweep, as a deployment would (the store has no TTL index). */
const MONGO_SWEEP_MS = 60_000;

const SINGLE_OPERATIONS = [
  'begin',
  'extend',
  'complete',
  'release',
  'fail',
  'markPublished',
  'saveStep',
  'get',
  'clear',
] as const;
/** The optional batch forms: one call (one round trip) for many keys. */
const BATCH_OPERATIONS = ['beginMany', 'completeMany', 'markPublishedMany'] as const;
type BatchOperation = (typeof BATCH_OPERATIONS)[number];
/** Calls per operation; a batch call counts as one. */
export type StoreCalls = Record<(typeof SINGLE_OPERATIONS)[number] | BatchOperation, number>;
/** Keys (requests) sent through each batch operation, summed over its calls. */
export type BatchKeys = Record<BatchOperation, number>;

export interface BenchStore {
  readonly kind: StoreKind;
  readonly store: ProcessedStore;
  readonly calls: StoreCalls;
  readonly batchKeys: BatchKeys;
  /** Redis: the prefix (with its `:`) of every key the store writes. */
  readonly keyPrefix?: string;
  /** Sum of all calls, a batch call counting as one: the store round trips. */
  total(): number;
  /** Removes what this store wrote. */
  cleanup(): Promise<void>;
}

/** Batch calls and the keys they carried, from a store's counters. */
export function batchTotals(calls: StoreCalls, keys: BatchKeys): { calls: number; keys: number } {
  return {
    calls: BATCH_OPERATIONS.reduce((sum, op) => sum + calls[op], 0),
    keys: BATCH_OPERATIONS.reduce((sum, op) => sum + keys[op], 0),
  };
}

/**
 * A store that forwards every operation and counts it. Each batch form is wrapped explicitly,
 * and only when the inner store has it: core prefers the batch forms, so a wrapper that let
 * them through uncounted (say, by spreading the inner store) would count almost nothing, and one
 * that added them to a store without them would change what core does.
 */
export function counted(inner: ProcessedStore): {
  store: ProcessedStore;
  calls: StoreCalls;
  batchKeys: BatchKeys;
} {
  const calls = Object.fromEntries(
    [...SINGLE_OPERATIONS, ...BATCH_OPERATIONS].map((op) => [op, 0]),
  ) as StoreCalls;
  const batchKeys = Object.fromEntries(BATCH_OPERATIONS.map((op) => [op, 0])) as BatchKeys;
  const count = <A extends unknown[], R>(op: keyof StoreCalls, fn: (...args: A) => R) => {
    return (...args: A): R => {
      calls[op]++;
      return fn(...args);
    };
  };
  const batch = <Q, R>(op: BatchOperation, fn: (requests: readonly Q[]) => R) => {
    return (requests: readonly Q[]): R => {
      calls[op]++;
      batchKeys[op] += requests.length;
      return fn(requests);
    };
  };
  const { beginMany, completeMany, markPublishedMany } = inner;
  const store: ProcessedStore = {
    begin: count('begin', (r) => inner.begin(r)),
    extend: count('extend', (k, f, l) => inner.extend(k, f, l)),
    complete: count('complete', (r) => inner.complete(r)),
    release: count('release', (k, f, e) => inner.release(k, f, e)),
    fail: count('fail', (k, f, e, r) => inner.fail(k, f, e, r)),
    markPublished: count('markPublished', (k, f, ids) => inner.markPublished(k, f, ids)),
    saveStep: count('saveStep', (k, f, n, r) => inner.saveStep(k, f, n, r)),
    get: count('get', (k) => inner.get(k)),
    clear: count('clear', (k) => inner.clear(k)),
    ...(beginMany ? { beginMany: batch('beginMany', (r) => beginMany.call(inner, r)) } : {}),
    ...(completeMany ? { completeMany: batch('completeMany', (r) => completeMany.call(inner, r)) } : {}),
    ...(markPublishedMany
      ? { markPublishedMany: batch('markPublishedMany', (r) => markPublishedMany.call(inner, r)) }
      : {}),
  };
  return { store, calls, batchKeys };
}

/**
 * Deletes the keys under `prefix` (SCAN + UNLINK): only the bench's own keys, never a flush. On a
 * cluster node (`perKey`), one UNLINK per key: a multi-key command must stay within one slot.
 */
export async function deleteByPrefix(client: Redis, prefix: string, perKey = false): Promise<number> {
  let cursor = '0';
  let deleted = 0;
  do {
    const [next, keys] = await client.scanBuffer(cursor, 'MATCH', `${prefix}*`, 'COUNT', 2000);
    cursor = next.toString();
    if (keys.length === 0) continue;
    if (!perKey) {
      deleted += await client.unlink(...keys);
      continue;
    }
    const pipeline = client.pipeline();
    for (const key of keys) pipeline.unlink(key);
    for (const [error, n] of (await pipeline.exec()) ?? []) {
      if (error) throw error;
      deleted += Number(n);
    }
  } while (cursor !== '0');
  return deleted;
}

export interface CommandStat {
  calls: number;
  /** Server CPU time spent in the command, µs. */
  usec: number;
}

/**
 * `INFO commandstats` by command, summed over `clients` (the masters of a cluster). Server-wide:
 * other clients' commands count too.
 */
export async function commandStats(clients: Redis | readonly Redis[]): Promise<Map<string, CommandStat>> {
  const infos = await Promise.all(
    (Array.isArray(clients) ? clients : [clients]).map((c: Redis) => c.info('commandstats')),
  );
  const stats = new Map<string, CommandStat>();
  for (const info of infos) {
    for (const m of info.matchAll(/^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/gm)) {
      const name = m[1] as string;
      const seen = stats.get(name) ?? { calls: 0, usec: 0 };
      stats.set(name, { calls: seen.calls + Number(m[2]), usec: seen.usec + Number(m[3]) });
    }
  }
  return stats;
}

/**
 * Round-trip time of `PING` on `client`, µs: `count` PINGs one after another (after a few
 * unmeasured ones), median and p99. The unit of the serial latency target.
 */
export async function pingRtt(
  client: Redis | Cluster,
  count: number,
): Promise<{ p50Us: number; p99Us: number }> {
  for (let i = 0; i < 20; i++) await client.ping();
  const us = new Float64Array(count);
  for (let i = 0; i < count; i++) {
    const t = performance.now();
    await client.ping();
    us[i] = (performance.now() - t) * 1000;
  }
  us.sort();
  const at = (p: number) =>
    us[Math.min(count - 1, Math.max(0, Math.ceil((p / 100) * count) - 1))] ?? Number.NaN;
  return { p50Us: at(50), p99Us: at(99) };
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
  private cluster: Cluster | undefined;
  /** One client and one database per Mongo server, opened on first use. */
  private readonly mongo = new Map<MongoKind, { client: MongoClient; db: Db }>();
  readonly runId = uniqueName('eb').replace('-', '');

  /**
   * Plain settings by default: the figures should be those of a default ioredis client.
   * `autoPipelining` turns on ioredis' `enableAutoPipelining` for the stores' clients (an
   * experiment: commands issued in the same tick share one socket write).
   */
  constructor(private readonly autoPipelining = false) {
    this.redis = new Redis(env.redisUrl, {
      db: env.redisDb,
      maxRetriesPerRequest: 2,
      enableAutoPipelining: autoPipelining,
    });
  }

  /**
   * The cluster client, opened on first use: an ioredis `Cluster` with default settings (as the
   * store-redis tests use it). A cluster has no databases: the bench's keys live in DB 0 under
   * their random prefixes.
   */
  async redisCluster(): Promise<Cluster> {
    if (!this.cluster) {
      this.cluster = new Cluster([...env.redisClusterNodes], {
        redisOptions: { maxRetriesPerRequest: 2 },
        enableAutoPipelining: this.autoPipelining,
      });
      this.cluster.on('error', () => {}); // reported through the failing commands instead
    }
    // A keyless command makes it connect and learn its nodes. A default Cluster client retries a
    // refused connection for ever: give up after 10 s, as the Mongo clients do.
    let timer: NodeJS.Timeout | undefined;
    const unreachable = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new Error(
              `Redis Cluster ${env.redisClusterNodes.map((n) => `${n.host}:${n.port}`).join(',')} unreachable after 10 s`,
            ),
          ),
        10_000,
      );
    });
    try {
      await Promise.race([this.cluster.ping(), unreachable]);
    } finally {
      clearTimeout(timer);
    }
    return this.cluster;
  }

  /** The connections whose `INFO commandstats` cover a store kind's commands: the cluster's masters. */
  async statsClients(kind: StoreKind): Promise<Redis[]> {
    if (kind !== 'redis-cluster') return [this.redis];
    const masters = (await this.redisCluster()).nodes('master');
    if (masters.length === 0) throw new Error('the Redis cluster client knows no masters');
    return masters;
  }

  private async mongoDb(kind: MongoKind): Promise<Db> {
    const open = this.mongo.get(kind);
    if (open) return open.db;
    const url = kind === 'mongo' ? env.mongoUrl : env.mongoJavaUrl;
    const client = new MongoClient(url, { serverSelectionTimeoutMS: 10_000 });
    await client.connect();
    const db = client.db(`eo_bench_${this.runId}`);
    this.mongo.set(kind, { client, db });
    return db;
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
    } else if (kind === 'redis' || kind === 'redis-cluster') {
      const random = uniqueName('b').replace('-', '');
      const keyPrefix = options.shortPrefix ? random.slice(-2) : random.slice(0, 7);
      const client = kind === 'redis' ? this.redis : await this.redisCluster();
      const store = createRedisStore({ client, keyPrefix });
      await store.checkServer();
      inner = store;
      scope = `${keyPrefix}:`;
      const nodes = await this.statsClients(kind);
      cleanup = async () => {
        for (const node of nodes) await deleteByPrefix(node, `${keyPrefix}:`, kind === 'redis-cluster');
      };
    } else {
      const db = await this.mongoDb(kind);
      const collectionName = uniqueName('r').replace('-', '');
      const store = createMongoStore({ db, collectionName });
      await store.ensureIndexes();
      store.startSweeper(MONGO_SWEEP_MS);
      inner = store;
      cleanup = async () => {
        await store.close();
        await db
          .collection(collectionName)
          .drop()
          .catch(() => {});
      };
    }
    const { store, calls, batchKeys } = counted(inner);
    return {
      kind,
      store,
      calls,
      batchKeys,
      ...(scope ? { keyPrefix: scope } : {}),
      total: () => Object.values(calls).reduce((a, b) => a + b, 0),
      cleanup,
    };
  }

  async close(): Promise<void> {
    for (const { client, db } of this.mongo.values()) {
      await db.dropDatabase().catch(() => {});
      await client.close();
    }
    await this.cluster?.quit().catch(() => {});
    await this.redis.quit();
  }
}
