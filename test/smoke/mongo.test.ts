import { MongoClient, MongoServerError } from 'mongodb';
import { describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';

describe('smoke: FerretDB through the mongodb driver', () => {
  it('inserts, finds, and enforces a unique index with E11000', async () => {
    const client = new MongoClient(env.mongoUrl, { serverSelectionTimeoutMS: 5_000 });
    const db = client.db(uniqueName('smoke').replace(/-/g, '_'));
    try {
      const col = db.collection<{ _id: string; n: number; email: string }>('things');
      await col.createIndex({ email: 1 }, { unique: true });
      await col.insertOne({ _id: 'a', n: 1, email: 'a@example.com' });
      expect(await col.findOne({ _id: 'a' })).toMatchObject({ n: 1 });
      const dup = await col.insertOne({ _id: 'b', n: 2, email: 'a@example.com' }).catch((e) => e);
      expect(dup).toBeInstanceOf(MongoServerError);
      expect(dup.code).toBe(11000);
    } finally {
      await db.dropDatabase().catch(() => {});
      await client.close();
    }
  });
});
