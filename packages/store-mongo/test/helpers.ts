/**
 * Shared setup for the integration tests: a client to the test server (EO_MONGO_URL, default the
 * FerretDB that `scripts/infra.sh up ferretdb` starts) and a database per test file, dropped after.
 */
import { randomBytes } from 'node:crypto';
import { type Db, MongoClient } from 'mongodb';

export const MONGO_URL = process.env.EO_MONGO_URL ?? 'mongodb://127.0.0.1:27017';

export interface TestDatabase {
  readonly client: MongoClient;
  readonly db: Db;
  /** FerretDB 1.x: no TTL, no arrayFilters, and conditional updates that are not atomic. */
  readonly ferret1: boolean;
  drop(): Promise<void>;
}

export async function openTestDatabase(label: string): Promise<TestDatabase> {
  const client = new MongoClient(MONGO_URL, { serverSelectionTimeoutMS: 5000, maxPoolSize: 64 });
  await client.connect();
  const db = client.db(`eo_${label}_${Date.now().toString(36)}_${randomBytes(3).toString('hex')}`);
  const info = await db.command({ buildInfo: 1 });
  const ferretVersion = typeof info.ferretdbVersion === 'string' ? info.ferretdbVersion : undefined;
  return {
    client,
    db,
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
