import { Cluster, Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';

describe('smoke: Redis', () => {
  const redis = new Redis(env.redisUrl);
  const cluster = new Cluster(env.redisClusterNodes);
  afterAll(async () => {
    redis.disconnect();
    cluster.disconnect();
  });

  it('standalone SET/GET, with eviction disabled', async () => {
    const key = uniqueName('smoke');
    await redis.set(key, 'v', 'PX', 10_000);
    expect(await redis.get(key)).toBe('v');
    const [, policy] = (await redis.config('GET', 'maxmemory-policy')) as [string, string];
    expect(policy).toBe('noeviction');
  });

  it('cluster SET/GET across slots', async () => {
    const keys = Array.from({ length: 20 }, (_, i) => uniqueName(`smoke-${i}`));
    for (const k of keys) await cluster.set(k, k, 'PX', 10_000);
    for (const k of keys) expect(await cluster.get(k)).toBe(k);
    expect((await cluster.cluster('INFO')) as string).toContain('cluster_state:ok');
  });
});
