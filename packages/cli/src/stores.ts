/**
 * Opens the processed-store a command reads, from `--redis`, `--redis-cluster` or `--mongo`. The
 * clients are created here and closed by `close()`; they fail fast (no reconnect loop) so an
 * unreachable server is an error, not a hang. Only the stores' public API is used.
 */
import {
  type BlobStore,
  ConfigError,
  createFsBlobStore,
  type ProcessedStore,
  StoreUnavailableError,
} from '@exactly-once/core';
import type { RedisClient } from '@exactly-once/store-redis';
import type { Command } from 'commander';
import { CliError, describeError, UsageError } from './errors.js';
import { parseDuration, parseHostPorts, parseUrl } from './parse.js';

export interface StoreOptions {
  readonly redis?: string;
  readonly redisCluster?: string;
  readonly redisPrefix?: string;
  readonly mongo?: string;
  readonly mongoDb?: string;
  readonly mongoCollection?: string;
  /** The longest one store call may take, ms (`--timeout`). */
  readonly timeout?: number;
}

export interface OpenStore {
  readonly store: ProcessedStore;
  /** `redis`, `redis-cluster` or `mongo`, and where. */
  readonly description: string;
  /** The GridFS blob store `bucketName` in the store's database (`--mongo` only). */
  readonly gridFs?: (bucketName: string) => BlobStore;
  /**
   * Documents of `collectionName` in the store's database whose outbox events are not published
   * yet: the outbox relay's `countPending()` (`--mongo` only; bounded like every store call), and
   * the collection as `<database>.<collection>`.
   */
  readonly outboxPending?: (collectionName: string) => Promise<{ pending: number; collection: string }>;
  close(): Promise<void>;
}

/** Adds the store options to a command. */
export function storeOptions(command: Command): Command {
  return command
    .option('--redis <url>', 'Redis store: redis://[user:password@]host:port[/db]')
    .option('--redis-cluster <nodes>', 'Redis Cluster store: host:port,host:port,...')
    .option('--redis-prefix <prefix>', "the store's keyPrefix", parseRedisPrefix, 'eo')
    .option('--mongo <url>', 'MongoDB store: mongodb://host:port[/db]')
    .option('--mongo-db <name>', 'database of the records collection (default: the one in the URL)')
    .option('--mongo-collection <name>', "the store's collectionName", 'eo_records')
    .option(
      '--timeout <duration>',
      'how long the server may take to answer one call before the command fails (e.g. 60s; default 15s)',
      (v) => parseDuration('--timeout', v),
    );
}

/** The blob store the consumers use: the fs store's directory, or a GridFS bucket of `--mongo`. */
export interface BlobStoreOptions {
  readonly blobDir?: string;
  readonly gridfsBucket?: string;
}

/** Checks the blob store options before anything is opened; `required` when a command needs one. */
export function checkBlobStoreOptions(options: BlobStoreOptions & StoreOptions, required: boolean): void {
  const given = [options.blobDir, options.gridfsBucket].filter((o) => o !== undefined).length;
  if (given > 1 || (required && given === 0)) {
    throw new UsageError(
      'give the blob store: --blob-dir <directory> or --gridfs-bucket <name> (with --mongo)',
    );
  }
  if (options.gridfsBucket !== undefined && !options.mongo) {
    throw new UsageError('--gridfs-bucket reads the GridFS bucket of the --mongo store: give --mongo');
  }
}

/** The blob store the options name (see {@link checkBlobStoreOptions}), or undefined. */
export function openBlobStore(options: BlobStoreOptions, opened: OpenStore): BlobStore | undefined {
  if (options.blobDir !== undefined) return createFsBlobStore({ directory: options.blobDir });
  if (options.gridfsBucket === undefined) return undefined;
  const blobs = opened.gridFs?.(options.gridfsBucket);
  if (blobs === undefined) throw new UsageError('--gridfs-bucket needs the --mongo store');
  return blobs;
}

/** Adds the blob store options to a command. */
export function blobStoreOptions(command: Command, purpose: string): Command {
  return command
    .option('--blob-dir <directory>', `${purpose}: the fs blob store (createFsBlobStore directory)`)
    .option(
      '--gridfs-bucket <name>',
      `${purpose}: the GridFS blob store's bucket in the --mongo store's database`,
    );
}

export function hasStore(options: StoreOptions): boolean {
  return Boolean(options.redis || options.redisCluster || options.mongo);
}

const CONNECT_TIMEOUT_MS = 5_000;
/**
 * The longest one store call may take unless `--timeout` says otherwise: a server that accepts
 * connections and never answers (stopped with SIGSTOP, or its host hung) must end the command
 * with an error, not hang it.
 */
const ANSWER_TIMEOUT_MS = 15_000;

export async function openStore(options: StoreOptions): Promise<OpenStore> {
  const chosen = [options.redis, options.redisCluster, options.mongo].filter(Boolean).length;
  if (chosen === 0)
    throw new UsageError('give a store: --redis <url>, --redis-cluster <nodes> or --mongo <url>');
  if (chosen > 1) throw new UsageError('give one store only: --redis, --redis-cluster or --mongo');
  const answerMs = options.timeout ?? ANSWER_TIMEOUT_MS;
  try {
    if (options.redis) return await openRedis(options.redis, options.redisPrefix, answerMs);
    if (options.redisCluster) {
      return await openRedisCluster(options.redisCluster, options.redisPrefix, answerMs);
    }
    return await openMongo(options.mongo as string, options.mongoDb, options.mongoCollection, answerMs);
  } catch (error) {
    throw storeError(error);
  }
}

/** Maps a store's failure to a readable CLI error; a ConfigError is a usage error. */
export function storeError(error: unknown): Error {
  if (error instanceof CliError) return error;
  if (error instanceof ConfigError) return new UsageError(error.message);
  if (error instanceof StoreUnavailableError) {
    return new CliError(`store unavailable: ${describeError(error.cause ?? error)}`, { cause: error });
  }
  return new CliError(describeError(error), { cause: error });
}

async function openRedis(text: string, prefix: string | undefined, answerMs: number): Promise<OpenStore> {
  const url = parseUrl('--redis', text, ['redis:', 'rediss:']);
  const { Redis } = await importPeer<typeof import('ioredis')>('ioredis');
  const client = new Redis(url.toString(), {
    lazyConnect: true,
    connectTimeout: CONNECT_TIMEOUT_MS,
    maxRetriesPerRequest: 1,
    retryStrategy: () => null,
  });
  return await redisStore(client, `Redis at ${redacted(url)}`, `redis ${redacted(url)}`, prefix, answerMs);
}

async function openRedisCluster(
  text: string,
  prefix: string | undefined,
  answerMs: number,
): Promise<OpenStore> {
  const nodes = parseHostPorts('--redis-cluster', text);
  const { Cluster } = await importPeer<typeof import('ioredis')>('ioredis');
  const client = new Cluster(nodes, {
    lazyConnect: true,
    clusterRetryStrategy: () => null,
    redisOptions: { connectTimeout: CONNECT_TIMEOUT_MS, maxRetriesPerRequest: 1 },
  });
  return await redisStore(client, `Redis Cluster at ${text}`, `redis-cluster ${text}`, prefix, answerMs);
}

/** An ioredis `Redis` or `Cluster` made with `lazyConnect`. */
type LazyRedisClient = RedisClient & {
  connect(): Promise<void>;
  disconnect(): void;
  on(event: 'error', listener: (error: unknown) => void): unknown;
};

/**
 * The store on a lazily connecting ioredis `client` (standalone or Cluster): connected within
 * `answerMs`, every call bounded the same way. `where` names the server in errors.
 */
async function redisStore(
  client: LazyRedisClient,
  where: string,
  description: string,
  prefix: string | undefined,
  answerMs: number,
): Promise<OpenStore> {
  const { createRedisStore } = await import('@exactly-once/store-redis');
  let lastError: unknown;
  client.on('error', (error: unknown) => {
    lastError = error;
  });
  try {
    await answered(client.connect(), where, answerMs);
  } catch (error) {
    client.disconnect();
    if (error instanceof CliError) throw error;
    throw new CliError(`cannot connect to ${where}: ${describeError(lastError ?? error)}`);
  }
  // A read-only operator tool: the eviction policy is the workers' concern (they check it).
  const store = closingOnThrow(client, () =>
    createRedisStore({ client, keyPrefix: prefix ?? 'eo', checkEvictionPolicy: false }),
  );
  const bounded = answeringWithin(store, where, answerMs);
  return {
    store: bounded.store,
    description: `${description} (prefix ${prefix ?? 'eo'})`,
    close: async () => {
      // QUIT waits for the server's answer: not from one that did not answer.
      if (bounded.hung()) client.disconnect();
      else await answered(client.quit(), where, answerMs).catch(() => client.disconnect());
    },
  };
}

async function openMongo(
  text: string,
  dbName: string | undefined,
  collectionName: string | undefined,
  answerMs: number,
): Promise<OpenStore> {
  const url = parseUrl('--mongo', text, ['mongodb:', 'mongodb+srv:']);
  // The driver's own default is the database `test`: a store never lives there by accident.
  if (dbName === undefined && url.pathname.replace(/^\//, '') === '') {
    throw new UsageError(
      '--mongo: name the database in the URL (mongodb://host:port/<db>) or give --mongo-db',
    );
  }
  const { MongoClient } = await importPeer<typeof import('mongodb')>('mongodb');
  const { createGridFsBlobStore, createMongoOutboxSource, createMongoStore } = await import(
    '@exactly-once/store-mongo'
  );
  let client: InstanceType<typeof MongoClient>;
  try {
    client = new MongoClient(text, {
      serverSelectionTimeoutMS: CONNECT_TIMEOUT_MS,
      connectTimeoutMS: CONNECT_TIMEOUT_MS,
    });
    await client.connect();
  } catch (error) {
    throw new CliError(`cannot connect to MongoDB at ${redacted(url)}: ${describeError(error)}`);
  }
  const db = client.db(dbName);
  const store = createMongoStore({ db, collectionName: collectionName ?? 'eo_records' });
  const where = `MongoDB at ${redacted(url)}`;
  const bounded = answeringWithin(store, where, answerMs);
  return {
    store: bounded.store,
    description: `mongo ${redacted(url)} (${db.databaseName}.${collectionName ?? 'eo_records'})`,
    gridFs: (bucketName) => createGridFsBlobStore({ db, bucketName }),
    outboxPending: async (name) => ({
      pending: await answered(
        createMongoOutboxSource({ collection: db.collection(name) }).countPending(),
        where,
        answerMs,
      ),
      collection: `${db.databaseName}.${name}`,
    }),
    close: async () => {
      await store.close().catch(() => undefined);
      await answered(client.close(), 'MongoDB', answerMs).catch(() => undefined);
    },
  };
}

/** The error of a server that did not answer in time, naming it. */
function noAnswer(where: string, answerMs: number): CliError {
  return new CliError(
    `${where} did not answer within ${answerMs / 1000} s: is it stopped, hung or overloaded? ` +
      '(a slow server: give it longer with --timeout)',
  );
}

/** `promise`, or a {@link noAnswer} error once the server has had `answerMs` to answer. */
async function answered<T>(promise: Promise<T>, where: string, answerMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(noAnswer(where, answerMs)), answerMs);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The store with each call bounded by `answerMs`: a call the server has not answered by
 * then fails with a {@link noAnswer} error naming it (the client would wait for ever on a server
 * that accepts connections and never answers). `hung()`: whether one did.
 */
function answeringWithin(
  store: ProcessedStore,
  where: string,
  answerMs: number,
): { store: ProcessedStore; hung(): boolean } {
  let hung = false;
  const bound = (answer: Promise<unknown>) =>
    answered(answer, where, answerMs).catch((error: unknown) => {
      if (error instanceof CliError && error.message.startsWith(where)) hung = true;
      throw error;
    });
  const bounded = new Proxy(store, {
    get(target, name) {
      const value = Reflect.get(target, name, target) as unknown;
      if (typeof value !== 'function' || name === 'close') return value;
      return (...args: unknown[]) => {
        const answer = (value as (...a: unknown[]) => unknown).apply(target, args);
        return answer instanceof Promise ? bound(answer) : answer;
      };
    },
  });
  return { store: bounded, hung: () => hung };
}

/** `--redis-prefix`: what the store accepts (non-empty, no `{` or `}`), checked before connecting. */
function parseRedisPrefix(text: string): string {
  if (text === '' || /[{}]/.test(text)) {
    throw new UsageError(
      `--redis-prefix must be non-empty and contain no "{" or "}" (got ${JSON.stringify(text)})`,
    );
  }
  return text;
}

/** `make()`, disconnecting `client` if it throws: an open client would keep the command running. */
function closingOnThrow<T>(client: { disconnect(): void }, make: () => T): T {
  try {
    return make();
  } catch (error) {
    client.disconnect();
    throw error;
  }
}

/** A URL without its password, for messages. */
export function redacted(url: URL): string {
  if (!url.password) return url.toString();
  const copy = new URL(url.toString());
  copy.password = '***';
  return copy.toString();
}

/** Imports a peer dependency, with an install hint when it is missing. */
export async function importPeer<T>(name: string): Promise<T> {
  try {
    return (await import(name)) as T;
  } catch (error) {
    if ((error as { code?: string }).code === 'ERR_MODULE_NOT_FOUND') {
      throw new CliError(`this command needs the "${name}" package: npm install ${name}`);
    }
    throw error;
  }
}
