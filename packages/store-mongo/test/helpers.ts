/**
 * Shared setup for the integration tests: a client to a test server and a database per test file,
 * dropped after. The servers are the ones `scripts/infra.sh up ferretdb mongo-java` starts:
 * FerretDB (EO_MONGO_URL, the default) and mongo-java-server (EO_MONGO_JAVA_URL).
 */
import { randomBytes } from 'node:crypto';
import { type Collection, type Db, type Document, MongoClient, MongoNetworkError } from 'mongodb';
import { elementPlace, type RecordDoc, State } from '../src/codec.js';

export const MONGO_URL = process.env.EO_MONGO_URL ?? 'mongodb://127.0.0.1:27017';
export const MONGO_JAVA_URL = process.env.EO_MONGO_JAVA_URL ?? 'mongodb://127.0.0.1:27018';

/**
 * Every configured MongoDB-wire test server, for `describe.each`; EO_MONGO_SERVERS (names, comma
 * separated) keeps some of them (the Node 22 and 24 reruns test the driver on the runtime, not
 * the servers again).
 */
export const MONGO_SERVERS: readonly { readonly name: string; readonly url: string }[] = [
  { name: 'ferretdb', url: MONGO_URL },
  { name: 'mongo-java', url: MONGO_JAVA_URL },
].filter(({ name }) => process.env.EO_MONGO_SERVERS?.split(',').includes(name) ?? true);

/** Which implementation answered, from its buildInfo. */
export type MongoServerKind = 'ferretdb' | 'mongo-java' | 'mongodb';

export interface TestDatabase {
  readonly client: MongoClient;
  readonly db: Db;
  readonly url: string;
  readonly server: MongoServerKind;
  /** FerretDB 1.x: no TTL, no arrayFilters, and conditional updates that are not atomic. */
  readonly ferret1: boolean;
  drop(): Promise<void>;
}

/**
 * FerretDB adds `ferretdbVersion`; mongo-java-server's buildInfo is only `version`, `versionArray`
 * and `maxBsonObjectSize` (it reports MongoDB 5.0.0), where MongoDB's always has `gitVersion`.
 */
function serverKind(info: Document): MongoServerKind {
  if (typeof info.ferretdbVersion === 'string') return 'ferretdb';
  if (!('gitVersion' in info)) return 'mongo-java';
  return 'mongodb';
}

/** Opens a fresh database on `url` (default: FerretDB, EO_MONGO_URL). */
export async function openTestDatabase(label: string, url: string = MONGO_URL): Promise<TestDatabase> {
  const client = new MongoClient(url, { serverSelectionTimeoutMS: 5000, maxPoolSize: 64 });
  await client.connect();
  const db = client.db(`eo_${label}_${Date.now().toString(36)}_${randomBytes(3).toString('hex')}`);
  const info = await db.command({ buildInfo: 1 });
  const server = serverKind(info);
  const ferretVersion = server === 'ferretdb' ? String(info.ferretdbVersion) : undefined;
  return {
    client,
    db,
    url,
    server,
    ferret1: ferretVersion?.startsWith('v1.') ?? false,
    async drop() {
      try {
        await db.dropDatabase();
      } finally {
        await client.close();
      }
    },
  };
}

/** The server's own clock, read directly: `hello.localTime`, or `isMaster`'s where `hello` is missing. */
export async function serverLocalTime(db: Db): Promise<number> {
  let reply: Document;
  try {
    reply = await db.command({ hello: 1 });
  } catch (error) {
    if ((error as { code?: unknown }).code !== 59) throw error; // CommandNotFound: mongo-java-server
    reply = await db.command({ isMaster: 1 });
  }
  return (reply.localTime as Date).getTime();
}

/** Whether to fail this call of the taker's (true: a connection reset), asked after its insert. */
export type WindowFault = (method: 'findOne' | 'updateOne', args: unknown[]) => boolean;

/**
 * `target` seen by a taker: its insert of a key's second lease element (a takeover's or a
 * retry's, after its read of the chain) first awaits what `open` was given, so another writer's
 * call lands between the taker's read and its insert. From that insert on, `fault` may fail any
 * `findOne` or `updateOne` (a connection reset): the begin then throws with its element in.
 */
export function takeoverWindow(target: Collection<RecordDoc>, fault?: WindowFault) {
  let pending: (() => Promise<void>) | undefined;
  let inserted = false;
  let faulted = 0;
  const collection = new Proxy(target, {
    get(t, prop) {
      const value = Reflect.get(t, prop, t);
      if (typeof value !== 'function') return value;
      if (prop === 'insertOne') {
        return async (...args: unknown[]) => {
          const doc = args[0] as RecordDoc;
          const taking =
            pending !== undefined && doc.s === State.InProgress && elementPlace(doc._id).position === 2;
          if (!taking) return value.apply(t, args);
          const write = pending as () => Promise<void>;
          pending = undefined;
          await write();
          const answer = await value.apply(t, args);
          inserted = true;
          return answer;
        };
      }
      if ((prop === 'findOne' || prop === 'updateOne') && fault !== undefined) {
        return async (...args: unknown[]) => {
          if (inserted && fault(prop, args)) {
            faulted += 1;
            throw new MongoNetworkError(`connection reset (${prop})`);
          }
          return value.apply(t, args);
        };
      }
      return value.bind(t);
    },
  });
  return {
    collection,
    /** Runs `write` inside the next such insert, before it. */
    open(write: () => Promise<void>) {
      pending = write;
    },
    /** Calls failed so far. */
    get faulted() {
      return faulted;
    },
  };
}
