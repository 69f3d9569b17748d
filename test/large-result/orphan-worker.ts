/**
 * Child process of orphans.test.ts: takes the key of one message on the Redis store, stores a blob
 * for it with ctx.storeBlob, then SIGKILLs itself before the run can complete or delete anything.
 */
import { createFsBlobStore, createProcessor, Headers } from '@exactly-once/core';
import { createRedisStore } from '@exactly-once/store-redis';
import { Redis } from 'ioredis';

const client = new Redis(process.env.EO_REDIS_URL ?? 'redis://127.0.0.1:6379');
const p = createProcessor({
  consumer: 'orphans',
  store: createRedisStore({ client, keyPrefix: process.env.EO_PREFIX as string }),
  blobs: createFsBlobStore({ directory: process.env.EO_BLOB_DIR as string }),
  leaseMs: 1_000,
  retentionCheck: 'off',
  handler: async (_: unknown, ctx) => {
    const pointer = await ctx.storeBlob(new TextEncoder().encode('an attachment the dying run stored'));
    process.stdout.write(`${JSON.stringify(pointer)}\n`);
    process.kill(process.pid, 'SIGKILL');
    await new Promise(() => {});
  },
});
await p.process({
  body: new TextEncoder().encode('{"invoice":1}'),
  headers: { [Headers.IdempotencyKey]: process.env.EO_KEY as string },
  destination: 'invoices',
  system: 'test',
});
