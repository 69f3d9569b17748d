/**
 * `exactly-once stuck` against the real stores: records IN_PROGRESS longer than the threshold,
 * per consumer and across consumers, with their steps in doubt; finished and fresh ones left out.
 */
import { recordKeyFor } from '@exactly-once/core';
import { createRedisStore, redisKeyFor } from '@exactly-once/store-redis';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';
import { dropRedisPrefix } from '../support/redis.js';
import { cli, cliJson, cliText } from './helpers.js';
import { type TestStore, testStores } from './stores.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/**
 * Between the records begun first and the one begun last; a CLI run must start within half of it
 * (on a loaded 2-CPU machine one took over 4 s).
 */
const GAP_MS = 16_000;

interface StuckJson {
  count: number;
  records: {
    key: string;
    owner: string;
    attempt: number;
    startedAt: number;
    stepsStarted: string[];
    stepsDone: string[];
    damaged?: string;
  }[];
}

/** Each store's records: begun for all stores at once, so that the wait between them is one. */
interface Fixture {
  t: TestStore;
  namespace: string;
  billing: string;
  orders: string;
  /** When the fresh record was begun (the others GAP_MS before). */
  freshAt: number;
}
const fixtures = new Map<string, Fixture>();

beforeAll(async () => {
  const begun = await Promise.all(
    testStores.map(async ([name, open]) => {
      const f: Fixture = {
        t: await open(),
        namespace: uniqueName('ns').slice(0, 40),
        billing: uniqueName('billing'),
        orders: uniqueName('orders'),
        freshAt: 0,
      };
      fixtures.set(name, f);
      const { store } = f.t;
      const key = (consumer: string, k: string) => recordKeyFor({ namespace: f.namespace, consumer, key: k });
      const begin = async (consumer: string, k: string, owner: string) => {
        const r = await store.begin({ key: key(consumer, k), fingerprint: 'fp', owner, leaseMs: 120_000 });
        if (r.status !== 'acquired') throw new Error(r.status);
        return r.fence;
      };
      const oldFence = await begin(f.billing, 'old', 'worker-1');
      await store.markStepStarted?.(key(f.billing, 'old'), oldFence, 'charge');
      await store.saveStep(key(f.billing, 'old'), oldFence, 'reserve', new TextEncoder().encode('1'));
      await begin(f.orders, 'other', 'worker-2');
      const doneFence = await begin(f.billing, 'done', 'worker-3');
      await store.complete({
        key: key(f.billing, 'done'),
        fence: doneFence,
        outgoing: [],
        retentionMs: 60_000,
      });
      return async () => {
        f.freshAt = Date.now();
        await begin(f.billing, 'fresh', 'worker-4');
      };
    }),
  );
  await sleep(GAP_MS);
  for (const beginFresh of begun) await beginFresh();
});

afterAll(async () => {
  await Promise.all([...fixtures.values()].map((f) => f.t.close()));
});

describe.each(testStores)('stuck: %s', (name) => {
  const f = () => fixtures.get(name) as Fixture;
  let t: TestStore;
  let namespace: string;
  let billing: string;
  let orders: string;
  const key = (consumer: string, k: string) => recordKeyFor({ namespace, consumer, key: k });
  /** A threshold between the ages of the fresh record and of the older ones, as of now. */
  const between = () => `${Date.now() - f().freshAt + GAP_MS / 2}ms`;

  beforeAll(() => {
    ({ t, namespace, billing, orders } = f());
  });

  it('one consumer: only its records older than the threshold, with steps in doubt', {
    timeout: 240_000,
  }, async () => {
    const out = await cliJson<StuckJson>([
      'stuck',
      '--older-than',
      between(),
      '--consumer',
      billing,
      '--namespace',
      namespace,
      ...t.flags,
    ]);
    expect(out.count).toBe(1);
    expect(out.records[0]).toMatchObject({
      key: key(billing, 'old'),
      owner: 'worker-1',
      attempt: 1,
      stepsStarted: ['charge'],
      stepsDone: ['reserve'],
    });
    const text = await cliText([
      'stuck',
      '--older-than',
      between(),
      '--consumer',
      billing,
      '--namespace',
      namespace,
      ...t.flags,
    ]);
    expect(text).toContain(
      `1 record(s) of consumer ${billing} (namespace ${namespace}) in progress for more than`,
    );
    expect(text).toMatch(
      new RegExp(`\\d+ s\\s+\\S+\\s+1\\s+worker-1\\s+live, \\d+ s left\\s+charge\\s+${key(billing, 'old')}`),
    );
    // The time since the attempt started, which a key whose holder died does not spend running.
    expect(text).toMatch(/^in progress {2}started\s+attempt\s+owner\s+lease/m);
  });

  it('every consumer of a namespace, oldest first; a longer threshold finds nothing', {
    timeout: 240_000,
  }, async () => {
    const all = await cliJson<StuckJson>([
      'stuck',
      '--older-than',
      between(),
      '--namespace',
      namespace,
      ...t.flags,
    ]);
    expect(all.records.map((r) => r.key).sort()).toEqual([key(billing, 'old'), key(orders, 'other')].sort());
    const everything = await cliJson<StuckJson>([
      'stuck',
      '--older-than',
      '0s',
      '--namespace',
      namespace,
      ...t.flags,
    ]);
    expect(everything.records.map((r) => r.key)).toContain(key(billing, 'fresh'));
    expect(everything.records.at(-1)?.key).toBe(key(billing, 'fresh'));
    const none = await cli([
      'stuck',
      '--older-than',
      '1h',
      '--consumer',
      billing,
      '--namespace',
      namespace,
      ...t.flags,
    ]);
    expect(none.code).toBe(0);
    expect(none.stdout).toMatch(/no record of consumer .* in progress for more than 60 min/);
  });
});

describe('stuck: usage', () => {
  it('needs --older-than as a duration (exit 2)', async () => {
    const missing = await cli(['stuck', '--redis', 'redis://127.0.0.1:6379']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/required option '--older-than <duration>' not specified/);
    const bad = await cli(['stuck', '--older-than', 'five', '--redis', 'redis://127.0.0.1:6379']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--older-than must be a duration such as 30s, 5m/);
  });
});

describe('stuck beside a damaged record (Redis)', () => {
  it('shows a record damaged since it was listed as damaged, and lists the others', async () => {
    // Before: one listed key whose extras hash had been overwritten by hand failed the whole
    // command (exit 1, nothing listed) with that key's CorruptRecordError.
    const client = new Redis(env.redisUrl, { maxRetriesPerRequest: 2 });
    const keyPrefix = uniqueName('eot-cli-damaged');
    const store = createRedisStore({ client, keyPrefix });
    const consumer = uniqueName('c');
    const stored = (k: string) => recordKeyFor({ consumer, key: k });
    try {
      for (const k of ['damaged', 'fine']) {
        const begun = await store.begin({ key: stored(k), fingerprint: 'fp', owner: 'w', leaseMs: 120_000 });
        if (begun.status !== 'acquired') throw new Error(begun.status);
        await store.saveStep(stored(k), begun.fence, 'charge', new TextEncoder().encode('1'));
      }
      const extras = Buffer.concat([redisKeyFor(keyPrefix, stored('damaged')), Buffer.from('x')]);
      await client.del(extras);
      await client.rpush(extras, 'not', 'a hash');
      const flags = ['--redis', env.redisUrl, '--redis-prefix', keyPrefix];
      const out = await cliJson<StuckJson>([
        'stuck',
        '--older-than',
        '0ms',
        '--consumer',
        consumer,
        ...flags,
      ]);
      const byKey = Object.fromEntries(out.records.map((r) => [r.key, r]));
      expect(byKey[stored('fine')]).toMatchObject({ stepsDone: ['charge'] });
      expect(byKey[stored('damaged')]?.damaged).toMatch(/another type/);
    } finally {
      await dropRedisPrefix(client, `${keyPrefix}:`);
      await client.quit();
    }
  });
});
