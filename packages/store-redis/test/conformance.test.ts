import { describeStoreConformance } from '@exactly-once/core/testing';
import { createRedisStore } from '../src/index.js';
import { cluster, dropPrefix, standalone, testPrefix } from './helpers.js';

for (const [name, connect] of [
  ['redis standalone', standalone],
  ['redis cluster', cluster],
] as const) {
  describeStoreConformance(name, async () => {
    const client = connect();
    const keyPrefix = testPrefix('conformance');
    // Short safety TTLs: whatever the suite leaves behind is gone within minutes.
    const store = createRedisStore({ client, keyPrefix, inProgressTtlMs: 600_000, expiredGraceMs: 60_000 });
    await store.checkServer();
    return {
      store,
      teardown: async () => {
        await dropPrefix(client, keyPrefix);
        await client.quit();
      },
    };
  });
}
