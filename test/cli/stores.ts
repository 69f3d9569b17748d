/** Real Redis (standalone, Cluster) and Mongo (FerretDB) stores under unique names, with the CLI flags that reach them. */
import type { ProcessedStore } from '@exactly-once/core';
import { createMongoStore } from '@exactly-once/store-mongo';
import { createRedisStore } from '@exactly-once/store-redis';
import { Cluster, Redis } from 'ioredis';
import { MongoClient } from 'mongodb';
import { env, uniqueName } from '../support/env.js';
import { dropRedisPrefix } from '../support/redis.js';

export interface TestStore {
  store: ProcessedStore;
  /** The CLI options that open the same store. */
  flags: string[];
  close(): Promise<void>;
}

export const testStores: [string, () => Promise<TestStore>][] = [
  [
    'redis',
    async () => {
      const client = new Redis(env.redisUrl, { maxRetriesPerRequest: 2 });
      const keyPrefix = uniqueName('eot-cli');
      return {
        store: createRedisStore({ client, keyPrefix }),
        flags: ['--redis', env.redisUrl, '--redis-prefix', keyPrefix],
        close: async () => {
          await dropRedisPrefix(client, `${keyPrefix}:`);
          await client.quit();
        },
      };
    },
  ],
  [
    'redis cluster',
    async () => {
      const client = new Cluster(env.redisClusterNodes, { redisOptions: { maxRetriesPerRequest: 2 } });
      const keyPrefix = uniqueName('eot-cli');
      return {
        store: createRedisStore({ client, keyPrefix }),
        flags: [
          '--redis-cluster',
          env.redisClusterNodes.map((n) => `${n.host}:${n.port}`).join(','),
          '--redis-prefix',
          keyPrefix,
        ],
        close: async () => {
          await dropRedisPrefix(client, `${keyPrefix}:`);
          await client.quit();
        },
      };
    },
  ],
  [
    'mongo',
    async () => {
      const client = new MongoClient(env.mongoUrl, { serverSelectionTimeoutMS: 5000 });
      await client.connect();
      const db = client.db(uniqueName('eo_cli').slice(0, 40));
      const store = createMongoStore({ db });
      await store.ensureIndexes();
      return {
        store,
        flags: ['--mongo', env.mongoUrl, '--mongo-db', db.databaseName],
        close: async () => {
          await store.close();
          await db.dropDatabase();
          await client.close();
        },
      };
    },
  ],
];
