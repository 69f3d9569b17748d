/** Redis helpers shared by the payment scenario tests (S1, S3, S6, S8). */
import { Redis } from 'ioredis';
import { env } from '../support/env.js';

export const newRedis = () => new Redis(env.redisUrl, { maxRetriesPerRequest: 3 });

/** Deletes every key under `prefix:` (a test's own store records, ledgers and claims). */
export async function dropPrefix(redis: Redis, prefix: string): Promise<void> {
  const stream = redis.scanStream({ match: `${prefix}:*`, count: 1000 }) as AsyncIterable<string[]>;
  for await (const keys of stream) if (keys.length > 0) await redis.unlink(...keys);
}
