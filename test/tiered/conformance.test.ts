/**
 * The full store conformance kit on the tiered store: hot = the real Redis store, cold = the real
 * Mongo store (FerretDB by default).
 */
import { createTieredStore } from '@exactly-once/core';
import { describeStoreConformance } from '@exactly-once/core/testing';
import { createMongoStore } from '@exactly-once/store-mongo';
import { createRedisStore } from '@exactly-once/store-redis';
import { Redis } from 'ioredis';
import { MongoClient } from 'mongodb';
import { env, uniqueName } from '../support/env.js';

// hotRetentionMs is above the kit's retention, so records read from hot carry the full expiry;
// the short hot retention (the long tail) is exercised in long-tail.test.ts. Leases of 3 s: the
// cold tier is waited for four fifths of a lease, and FerretDB on a loaded machine (the suite's
// other files beside it) took longer than 800 ms, what leases of 1 s would give it.
describeStoreConformance(
  'tiered (hot redis, cold mongo)',
  async () => {
    const redis = new Redis(env.redisUrl, { maxRetriesPerRequest: 2 });
    const keyPrefix = uniqueName('eot-tiered');
    const hot = createRedisStore({
      client: redis,
      keyPrefix,
      inProgressTtlMs: 600_000,
      expiredGraceMs: 60_000,
    });
    await hot.checkServer();
    const mongo = new MongoClient(env.mongoUrl, { serverSelectionTimeoutMS: 5000, maxPoolSize: 64 });
    await mongo.connect();
    const db = mongo.db(uniqueName('eo_tiered').slice(0, 40));
    const cold = createMongoStore({ db });
    await cold.ensureIndexes();
    const store = createTieredStore({ hot, cold, hotRetentionMs: 3_600_000 });
    return {
      store,
      teardown: async () => {
        await dropRedisPrefix(redis, keyPrefix);
        await redis.quit();
        await db.dropDatabase().catch(() => undefined);
        await mongo.close();
      },
    };
  },
  { leaseMs: 3_000 },
);

async function dropRedisPrefix(client: Redis, prefix: string): Promise<void> {
  let cursor = '0';
  do {
    const [next, keys] = await client.scanBuffer(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next.toString();
    for (const key of keys) await client.unlink(key);
  } while (cursor !== '0');
}
