/**
 * The Redis store under a Redis ACL user limited to the commands it uses and its key prefix
 * (`STORE_COMMANDS` in support.ts, the line in packages/store-redis/README.md): the conformance
 * kits on the standalone server and the cluster, the operator queries, a real RabbitMQ consumer,
 * and proof that the ACL is in force (what lies outside the grant is refused).
 */
import { describeFingerprintClaimConformance, describeStoreConformance } from '@exactly-once/core/testing';
import { createRedisStore } from '@exactly-once/store-redis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';
import { capturingLogger, createRedisAclUser, type RedisAclUser, runScenario } from './support.js';

let user: RedisAclUser | undefined;
const acl = (): RedisAclUser => {
  if (!user) throw new Error('ACL user not created');
  return user;
};
beforeAll(async () => {
  user = await createRedisAclUser('store');
});
afterAll(async () => {
  await user?.drop();
});

for (const [name, connect] of [
  ['redis standalone (ACL user)', () => acl().standalone()],
  ['redis cluster (ACL user)', () => acl().cluster()],
] as const) {
  describeStoreConformance(
    name,
    async () => {
      const client = connect();
      const store = createRedisStore({
        client,
        keyPrefix: `${acl().prefix}:conformance`,
        inProgressTtlMs: 600_000,
        logger: capturingLogger(),
      });
      return { store, teardown: async () => void (await client.quit()) };
      // Leases a little longer than the kit's default: this suite shares a busy machine.
    },
    { leaseMs: 1_000 },
  );
  describeFingerprintClaimConformance(name, async () => {
    const client = connect();
    const store = createRedisStore({ client, keyPrefix: `${acl().prefix}:fp`, logger: capturingLogger() });
    return { store, teardown: async () => void (await client.quit()) };
  });
}

describe('redis store under an ACL user', () => {
  it('the grant is in force: other commands and keys outside the prefix are refused', async () => {
    const client = acl().standalone();
    try {
      await expect(client.flushall()).rejects.toThrow(/NOPERM/);
      await expect(client.call('CONFIG', 'GET', 'maxmemory-policy')).rejects.toThrow(/NOPERM/);
      await expect(client.call('KEYS', '*')).rejects.toThrow(/NOPERM/);
      await expect(client.call('LPUSH', `${acl().prefix}:x`, '1')).rejects.toThrow(/NOPERM/);
      // A granted command on a key outside the prefix, directly or from a script.
      await expect(client.set(uniqueName('eot-outside'), '1')).rejects.toThrow(/NOPERM/);
      await expect(
        client.eval("return redis.call('SET', KEYS[1], '1')", 1, uniqueName('eot-outside')),
      ).rejects.toThrow(/NOPERM|No permissions/);
      expect(await client.set(`${acl().prefix}:inside`, '1')).toBe('OK');
    } finally {
      await client.quit();
    }
    for (const node of acl().admins.slice(1)) {
      const rules = (await node.call('ACL', 'GETUSER', acl().username)) as unknown[];
      expect(rules.length).toBeGreaterThan(0);
    }
  });

  it('the eviction check degrades to one warning when CONFIG GET is refused', async () => {
    for (const client of [acl().standalone(), acl().cluster()]) {
      const logger = capturingLogger();
      const store = createRedisStore({ client, keyPrefix: `${acl().prefix}:check`, logger });
      try {
        await store.checkServer();
        await expect(store.get('k')).resolves.toBeUndefined();
        expect(logger.lines.filter((l) => l.includes('CONFIG_GET_REFUSED'))).toHaveLength(2);
        expect(logger.lines.join('\n')).toMatch(/lacks \+config\|get/);
      } finally {
        await client.quit();
      }
    }
  });

  it('compaction and listInProgress work under the grant (SCAN for the latter)', async () => {
    for (const client of [acl().standalone(), acl().cluster()]) {
      const store = createRedisStore({
        client,
        keyPrefix: `${acl().prefix}:ops`,
        compactAfterMs: 0,
        checkEvictionPolicy: false,
      });
      try {
        const held = await store.begin({ key: 'held', fingerprint: 'f', owner: 'w', leaseMs: 60_000 });
        const done = await store.begin({ key: 'done', fingerprint: 'f', owner: 'w', leaseMs: 60_000 });
        expect(held.status).toBe('acquired');
        if (done.status !== 'acquired') throw new Error(done.status);
        await store.complete({ key: 'done', fence: done.fence, outgoing: [], retentionMs: 600_000 });
        const listed = (await store.listInProgress?.({ olderThanMs: 0, limit: 10 })) ?? [];
        expect(listed.map((e) => e.key)).toEqual(['held']);
        const stats = await store.compactCompleted();
        expect(stats.compacted).toBe(1);
        expect((await store.get('done'))?.state).toBe('COMPLETED');
      } finally {
        await client.quit();
      }
    }
  });

  it('a RabbitMQ consumer runs end to end on the store (duplicate, retry, dead letters)', async () => {
    const client = acl().standalone();
    try {
      const store = createRedisStore({
        client,
        keyPrefix: `${acl().prefix}:consumer`,
        checkEvictionPolicy: false,
      });
      const result = await runScenario({
        url: env.amqpUrl,
        adminUrl: env.amqpUrl,
        queue: uniqueName('eo-acl'),
        store,
        keyMarker: 'acl-key',
        payloadMarker: 'acl-payload',
      });
      expect(result.runs).toEqual({ ok: 1, retry: 2, dead: 1 });
      expect(result.consumer.stats.byOutcome.duplicate).toBe(1);
      expect(result.outgoing).toHaveLength(1);
      expect(result.deadLetters.map((d) => d.key).sort()).toEqual(['acl-key-bad', 'acl-key-dead']);
    } finally {
      await client.quit();
    }
  });
});
