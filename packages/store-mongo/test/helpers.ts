/**
 * Shared setup for the integration tests: a client to a test server and a database per test file,
 * dropped after. The servers are the ones `scripts/infra.sh up ferretdb mongo-java` starts:
 * FerretDB (EO_MONGO_URL, the default) and mongo-java-server (EO_MONGO_JAVA_URL).
 */
import { randomBytes } from 'node:crypto';
import { type Db, type Document, MongoClient } from 'mongodb';

export const MONGO_URL = process.env.EO_MONGO_URL ?? 'mongodb://127.0.0.1:27017';
export const MONGO_JAVA_URL = process.env.EO_MONGO_JAVA_URL ?? 'mongodb://127.0.0.1:27018';

/** Every configured MongoDB-wire test server, for `describe.each`. */
export const MONGO_SERVERS: readonly { readonly name: string; readonly url: string }[] = [
  { name: 'ferretdb', url: MONGO_URL },
  { name: 'mongo-java', url: MONGO_JAVA_URL },
];

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
