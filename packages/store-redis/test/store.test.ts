/**
 * Redis-specific behaviour beyond the conformance kit: server checks, outages, layout, encoding
 * size, TTLs and WAIT.
 */
import { randomUUID } from 'node:crypto';
import {
  ConfigError,
  createIdempotentExecutor,
  ErrorCode,
  type Logger,
  PartialBatchError,
  recordKeyFor,
  StoreUnavailableError,
} from '@exactly-once/core';
import calculateSlot from 'cluster-key-slot';
import { Cluster, Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packMessage, packText } from '../src/codec.js';
import { scripts } from '../src/generated/scripts.js';
import { createRedisStore, type RedisClient } from '../src/index.js';
import { keysFor } from '../src/layout.js';
import { parsePolicy } from '../src/server-check.js';
import { CLUSTER_NODES, cluster, dropPrefix, sleep, standalone, testPrefix } from './helpers.js';

const leaseMs = 30_000;

/** The server's clock in ms. */
async function serverNow(client: Redis): Promise<{ time: number }> {
  const [seconds, micros] = await client.time();
  return { time: Number(seconds) * 1000 + Math.floor(Number(micros) / 1000) };
}

/** Redis's own hash-tag rule: the text between the first `{` and the next `}`, if non-empty. */
function hashTag(key: Buffer): string {
  const text = key.toString('latin1');
  const open = text.indexOf('{');
  const close = text.indexOf('}', open + 1);
  return open >= 0 && close > open + 1 ? text.slice(open + 1, close) : text;
}

function recordingLogger(): Logger & { warnings: string[] } {
  const warnings: string[] = [];
  const noop = () => {};
  return { warnings, debug: noop, info: noop, error: noop, warn: (message) => void warnings.push(message) };
}

/** A client whose CONFIG GET answers `reply` (or throws it); nothing else is ever reached. */
function fakeClient(reply: unknown): RedisClient {
  return {
    isCluster: false,
    defineCommand: () => {},
    call: async () => {
      if (reply instanceof Error) throw reply;
      return reply;
    },
    pipeline: () => ({}),
    quit: async () => 'OK',
  };
}

function replyError(message: string): Error {
  const error = new Error(message);
  error.name = 'ReplyError';
  return error;
}

describe('eviction policy check', () => {
  it('passes against the test servers, which run noeviction', async () => {
    for (const client of [standalone(), cluster()]) {
      try {
        await createRedisStore({ client }).checkServer();
      } finally {
        await client.quit();
      }
    }
  });

  it('reads CONFIG GET replies in RESP2 and RESP3 form', () => {
    expect(parsePolicy(['maxmemory-policy', 'noeviction'])).toBe('noeviction');
    expect(parsePolicy({ 'maxmemory-policy': 'allkeys-lru' })).toBe('allkeys-lru');
    expect(parsePolicy([])).toBeUndefined();
    expect(parsePolicy(null)).toBeUndefined();
  });

  it('refuses any evicting policy, volatile ones included, on checkServer and on first use', async () => {
    for (const policy of ['allkeys-lru', 'volatile-lru', 'volatile-ttl', 'allkeys-random']) {
      const store = createRedisStore({ client: fakeClient(['maxmemory-policy', policy]) });
      await expect(store.checkServer()).rejects.toBeInstanceOf(ConfigError);
      await expect(store.get('k')).rejects.toMatchObject({ code: ErrorCode.Config });
    }
  });

  it('refuses Redis before 7.0 (the batch scripts use script flags), on checkServer and on first use', async () => {
    const old = {
      ...fakeClient(['maxmemory-policy', 'noeviction']),
      call: async (command: string) =>
        command === 'INFO' ? '# Server\r\nredis_version:6.2.14\r\n' : ['maxmemory-policy', 'noeviction'],
    } as RedisClient;
    const store = createRedisStore({ client: old });
    await expect(store.checkServer()).rejects.toThrow(/Redis 6\.2 is too old/);
    await expect(store.get('k')).rejects.toMatchObject({ code: ErrorCode.Config });
  });

  it('only warns when the check is opted out of, or when CONFIG is refused', async () => {
    const logger = recordingLogger();
    const optedOut = createRedisStore({
      client: fakeClient(['maxmemory-policy', 'allkeys-lru']),
      checkEvictionPolicy: false,
      logger,
    });
    await optedOut.checkServer();
    expect(logger.warnings.join()).toMatch(/allkeys-lru/);
    const managed = createRedisStore({
      client: fakeClient(replyError("ERR unknown command 'CONFIG'")),
      logger,
    });
    await managed.checkServer();
    expect(logger.warnings.at(-1)).toMatch(/CONFIG GET was refused/);
  });
});

describe('store outage', () => {
  it('every operation fails with a retryable StoreUnavailableError', async () => {
    // Nothing listens on port 1; no offline queue and no retries, so calls fail at once.
    const client = new Redis({
      port: 1,
      lazyConnect: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
    });
    client.on('error', () => {});
    try {
      for (const checkEvictionPolicy of [true, false]) {
        const store = createRedisStore({ client, checkEvictionPolicy });
        const calls = [
          () => store.begin({ key: 'k', fingerprint: 'f', owner: 'o', leaseMs }),
          () => store.extend('k', 1, leaseMs),
          () => store.complete({ key: 'k', fence: 1, outgoing: [], retentionMs: 1000 }),
          () => store.release('k', 1, { name: 'E', code: 'E', message: 'm' }),
          () => store.fail('k', 1, { name: 'E', code: 'E', message: 'm' }, 1000),
          () => store.markPublished('k', 1, ['m']),
          () => store.saveStep('k', 1, 's', Uint8Array.of(1)),
          () => store.get('k'),
        ];
        for (const call of calls) {
          const error = await call().then(
            () => undefined,
            (e: unknown) => e,
          );
          expect(error).toBeInstanceOf(StoreUnavailableError);
          expect(error).toMatchObject({ code: ErrorCode.StoreUnavailable, retryable: true });
        }
      }
    } finally {
      client.disconnect();
    }
  });
});

describe('layout and encoding (standalone)', () => {
  let client: Redis;
  const keyPrefix = testPrefix('store');
  beforeAll(() => {
    client = standalone();
  });
  afterAll(async () => {
    await dropPrefix(client, keyPrefix);
    await client.quit();
  });

  it('all keys of a record share one hash tag (its marker bucket, one cluster slot); user braces and length change nothing', () => {
    for (const key of ['plain', '{user-tag}', 'a{b}c', '}{', '{}', '\u0000{x}', 'x'.repeat(10_240)]) {
      const keys = keysFor(keyPrefix, key);
      const tag = hashTag(keys.record);
      expect(tag).toMatch(/^[0-9a-f]{4}$/);
      expect([hashTag(keys.legacyMarkers), hashTag(keys.index)]).toEqual([tag, tag]);
      expect(calculateSlot(keys.markers)).toBe(calculateSlot(keys.record));
      // A fixed-size name whatever the key: prefix, tag, ':' and a 16-byte id.
      expect(keys.record.length).toBe(keyPrefix.length + 8 + 16);
      expect(keys.record.subarray(-16)).toEqual(keys.id);
    }
  });

  it('scripts are registered under version- and content-suffixed command names', () => {
    const store = createRedisStore({ client, keyPrefix });
    expect(store).toBeDefined();
    for (const script of Object.values(scripts)) {
      expect(script.command).toMatch(/^eo[A-Z][A-Za-z]*_v\d+_[0-9a-f]{8}$/);
      expect(typeof (client as unknown as Record<string, unknown>)[`${script.command}Buffer`]).toBe(
        'function',
      );
    }
  });

  it('a small COMPLETED record is one string, no extras hash, with a TTL of retention + grace', async () => {
    const store = createRedisStore({ client, keyPrefix, expiredGraceMs: 60_000 });
    const key = `orders:billing:${randomUUID()}`;
    const begun = await store.begin({ key, fingerprint: 'a'.repeat(64), owner: 'w-1', leaseMs });
    if (begun.status !== 'acquired') throw new Error(begun.status);
    const record = keysFor(keyPrefix, key).record;
    // IN_PROGRESS: kept for the lease plus the 7-day default safety TTL.
    const inProgressTtl = await client.pttl(record);
    expect(Math.abs(inProgressTtl - (leaseMs + 7 * 86_400_000))).toBeLessThan(5000);
    const result = { kind: 'inline' as const, data: new TextEncoder().encode('{"ok":true}') };
    expect(
      await store.complete({ key, fence: begun.fence, result, outgoing: [], retentionMs: 86_400_000 }),
    ).toBe('ok');
    expect(await client.type(record)).toBe('string');
    expect(await client.exists(Buffer.concat([record, Buffer.from('x')]))).toBe(0);
    expect(Math.abs((await client.pttl(record)) - (86_400_000 + 60_000))).toBeLessThan(5000);
    const bytes = Number(await client.memory('USAGE', record));
    expect(bytes).toBeLessThan(200);
  });

  it('records of the previous layout (one hash each) are answered as before and converted on first touch', async () => {
    const store = createRedisStore({ client, keyPrefix });
    const { time } = await serverNow(client);
    const fingerprint = 'c'.repeat(64);
    const fp = packText(fingerprint);
    // A COMPLETED record with a result, a trace id and one unpublished outgoing message, written
    // field by field as the previous layout's scripts wrote it.
    const done = `legacy:done:${randomUUID()}`;
    const doneRecord = keysFor(keyPrefix, done).record;
    const message = { id: 'msg-1', destination: 'orders', headers: { a: 'b' }, body: Buffer.from('hi') };
    await client.hset(doneRecord, {
      s: 'C',
      f: fp,
      n: '123',
      a: '2',
      c: String(time - 1000),
      x: String(time + 86_400_000),
      t: packText(`${'1'.repeat(32)}-${'2'.repeat(16)}`),
      r: Buffer.from('i{"ok":1}'),
      m: '1',
      d1: message.id,
      o1: packMessage(message),
    });
    await client.pexpireat(doneRecord, time + 86_400_000 + 60_000);
    // An IN_PROGRESS record whose holder lapsed, with a journaled step.
    const held = `legacy:held:${randomUUID()}`;
    const heldRecord = keysFor(keyPrefix, held).record;
    await client.hset(heldRecord, {
      s: 'I',
      f: fp,
      n: '50',
      a: '1',
      w: 'old-worker',
      l: String(time - 1000),
      k: held,
      b: String(time - 5000),
      Scharge: Buffer.from(`${time - 3000}:receipt-7`),
    });
    await client.pexpireat(heldRecord, time + 86_400_000);

    // listInProgress reads the old layout as it stands.
    const listed = await store.listInProgress?.({ olderThanMs: 0, limit: 100, prefix: 'legacy:' });
    expect(listed).toEqual([
      {
        key: held,
        owner: 'old-worker',
        attempt: 1,
        fence: 50,
        leaseUntil: time - 1000,
        startedAt: time - 5000,
      },
    ]);

    const record = await store.get(done);
    expect(record).toMatchObject({
      state: 'COMPLETED',
      fingerprint,
      fence: 123,
      attempt: 2,
      traceId: `${'1'.repeat(32)}-${'2'.repeat(16)}`,
      result: { kind: 'inline', data: new Uint8Array(Buffer.from('{"ok":1}')) },
      outgoing: [{ id: 'msg-1', destination: 'orders', headers: { a: 'b' }, published: false }],
      completedAt: time - 1000,
      expiresAt: time + 86_400_000,
    });
    // Converted by that read: a string now, its message in the extras hash, the expiry kept.
    expect(await client.type(doneRecord)).toBe('string');
    expect(Math.abs((await client.pexpiretime(doneRecord)) - (time + 86_400_000 + 60_000))).toBeLessThan(2);
    expect(await store.begin({ key: done, fingerprint, owner: 'w', leaseMs })).toMatchObject({
      status: 'duplicate',
    });
    expect(await store.begin({ key: done, fingerprint: 'd'.repeat(64), owner: 'w', leaseMs })).toMatchObject({
      status: 'mismatch',
    });
    await store.markPublished(done, 123, ['msg-1']);
    expect((await store.get(done))?.state === 'COMPLETED' && (await store.get(done))).toMatchObject({
      outgoing: [{ id: 'msg-1', published: true }],
    });

    // The lapsed holder is taken over: fence and attempt go on, the step is still journaled.
    const taken = await store.begin({ key: held, fingerprint, owner: 'new-worker', leaseMs });
    expect(taken).toMatchObject({
      status: 'acquired',
      kind: 'takeover',
      fence: 51,
      attempt: 2,
      steps: { charge: { state: 'done', at: time - 3000 } },
    });
    if (taken.status !== 'acquired') throw new Error(taken.status);
    expect(Buffer.from(taken.steps.charge?.result ?? []).toString()).toBe('receipt-7');
    expect(await client.type(heldRecord)).toBe('string');
    expect(await store.complete({ key: held, fence: 51, outgoing: [], retentionMs: 60_000 })).toBe('ok');
    expect(await store.get(held)).toMatchObject({ state: 'COMPLETED', fence: 51, attempt: 2 });
  });

  it('waitReplicas: enough acknowledgements pass; too few throw, leaving the record completed', async () => {
    for (const [replicas, expected] of [
      [0, 'ok'],
      [1, 'throws'],
    ] as const) {
      const store = createRedisStore({ client, keyPrefix, waitReplicas: { replicas, timeoutMs: 100 } });
      const key = randomUUID();
      const begun = await store.begin({ key, fingerprint: 'f', owner: 'w', leaseMs });
      if (begun.status !== 'acquired') throw new Error(begun.status);
      const completing = store.complete({ key, fence: begun.fence, outgoing: [], retentionMs: 60_000 });
      if (expected === 'ok') await expect(completing).resolves.toBe('ok');
      else await expect(completing).rejects.toMatchObject({ code: ErrorCode.StoreUnavailable });
      expect(await store.begin({ key, fingerprint: 'f', owner: 'w', leaseMs })).toMatchObject({
        status: 'duplicate',
      });
      // A repeat (its first answer lost) finds the record completed under its fence: ok, once the
      // replicas acknowledge, like the first.
      const again = store.complete({ key, fence: begun.fence, outgoing: [], retentionMs: 1 });
      if (expected === 'ok') {
        await expect(again).resolves.toBe('ok');
        expect(await store.complete({ key, fence: begun.fence + 1, outgoing: [], retentionMs: 1 })).toBe(
          'lost',
        );
      } else await expect(again).rejects.toMatchObject({ code: ErrorCode.StoreUnavailable });
    }
  });
});

describe('cluster routing', () => {
  it('complete with waitReplicas runs WAIT on the node that holds the key', async () => {
    const client = cluster();
    const keyPrefix = testPrefix('wait');
    try {
      const store = createRedisStore({ client, keyPrefix, waitReplicas: { replicas: 0, timeoutMs: 100 } });
      for (let i = 0; i < 20; i++) {
        const key = `${randomUUID()}{${i}}`;
        const begun = await store.begin({ key, fingerprint: 'f', owner: 'w', leaseMs });
        if (begun.status !== 'acquired') throw new Error(begun.status);
        expect(await store.complete({ key, fence: begun.fence, outgoing: [], retentionMs: 60_000 })).toBe(
          'ok',
        );
      }
    } finally {
      await dropPrefix(client, keyPrefix);
      await client.quit();
    }
  });
});

describe('cluster batches', () => {
  const slotOf = (keyPrefix: string, key: string) =>
    calculateSlot(keysFor(keyPrefix, key).tag.toString(16).padStart(4, '0'));

  it('one call per node; a stale slot map fails a batch whole, the map is refreshed, the retry passes', async () => {
    const client = cluster();
    const keyPrefix = testPrefix('nodes');
    try {
      const store = createRedisStore({ client, keyPrefix });
      await store.checkServer();
      const slots = (client as unknown as { slots: string[][] }).slots;
      const nodeOf = (key: string) => slots[slotOf(keyPrefix, key)]?.[0];
      const commands = client as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;
      const method = `${scripts.beginMany.command}Buffer`;
      const original = commands[method]!.bind(client);
      let calls = 0;
      commands[method] = (...args) => {
        calls++;
        return original(...args);
      };
      const request = (key: string) => ({ key, fingerprint: 'f', owner: 'w', leaseMs });

      const keys = Array.from({ length: 30 }, () => randomUUID());
      const answers = await store.beginMany!(keys.map(request));
      expect(answers.map((a) => a.status)).toEqual(keys.map(() => 'acquired'));
      expect(calls).toBe(new Set(keys.map(nodeOf)).size);

      // Two new keys on different nodes; the client is made to believe both are on the first's.
      const first = randomUUID();
      let second = randomUUID();
      while (nodeOf(second) === nodeOf(first)) second = randomUUID();
      const secondSlot = slotOf(keyPrefix, second);
      const truth = slots[secondSlot];
      slots[secondSlot] = slots[slotOf(keyPrefix, first)] as string[];
      await expect(store.beginMany!([request(first), request(second)])).rejects.toThrow(/non local key/);
      for (let i = 0; i < 100 && slots[secondSlot]?.[0] !== truth?.[0]; i++) await sleep(50);
      expect(slots[secondSlot]?.[0], 'the slot map was refreshed').toBe(truth?.[0]);
      // The first key was begun before the script stopped (its answer lost with the error, like a
      // lost reply): its retry finds that lease. The second was never touched.
      expect((await store.beginMany!([request(first), request(second)])).map((a) => a.status)).toEqual([
        'busy',
        'acquired',
      ]);
    } finally {
      await dropPrefix(client, keyPrefix);
      await client.quit();
    }
  });
});

describe('a batch one Cluster node fails', () => {
  it("answers the keys the other nodes served and fails only that node's; through core, their runs complete", async () => {
    // Before: the batch failed whole, the other nodes' keys kept the leases they were granted,
    // and every retry of them answered busy until leaseMs passed.
    // A real server error on one node: a user of this test's own that may run scripts on the other
    // masters but not on that one (NOPERM there). (A damaged record or marker bucket fails its own
    // keys only: damaged-records.test.ts.)
    const admin = cluster();
    const user = `eo-partial-${randomUUID().slice(0, 8)}`;
    const password = randomUUID();
    const masters = CLUSTER_NODES.map(({ host, port }) => new Redis({ host, port }));
    const keyPrefix = testPrefix('partial');
    let client: Cluster | undefined;
    try {
      const [refusing, ...others] = masters as [Redis, ...Redis[]];
      for (const node of others)
        await node.call('ACL', 'SETUSER', user, 'on', `>${password}`, '~*', '&*', '+@all');
      await refusing.call('ACL', 'SETUSER', user, 'on', `>${password}`, '~*', '&*', '+@all', '-@scripting');
      client = new Cluster(CLUSTER_NODES, {
        redisOptions: { username: user, password, maxRetriesPerRequest: 2 },
      });
      const store = createRedisStore({ client, keyPrefix });
      await store.checkServer();
      const slots = (client as unknown as { slots: string[][] }).slots;
      const nodeOf = (key: string) =>
        slots[calculateSlot(keysFor(keyPrefix, key).tag.toString(16).padStart(4, '0'))]?.[0];
      const refusingNode = `${refusing.options.host}:${refusing.options.port}`;
      const keys = Array.from({ length: 30 }, () => randomUUID());
      const failing = keys.filter((k) => nodeOf(k) === refusingNode);
      expect(failing.length).toBeGreaterThan(0);
      expect(failing.length).toBeLessThan(keys.length);

      const request = (key: string) => ({ key, fingerprint: 'f', owner: 'w', leaseMs });
      const error = await store.beginMany!(keys.map(request)).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(PartialBatchError);
      const partial = error as PartialBatchError;
      expect(partial).toBeInstanceOf(StoreUnavailableError);
      expect([...partial.errors.keys()].map((i) => keys[i])).toEqual(failing);
      keys.forEach((key, i) => {
        if (!failing.includes(key))
          expect((partial.answers[i] as { status: string }).status).toBe('acquired');
      });

      // Through core (its calls of one turn share a batch): the other nodes' keys run and
      // complete; the failing node's fail as an outage.
      const executor = createIdempotentExecutor<number, string>({
        consumer: 'partial',
        store,
        retentionCheck: 'off',
      });
      const fresh = Array.from({ length: 30 }, () => randomUUID());
      const onRefusing = fresh.filter(
        (key) => nodeOf(recordKeyFor({ consumer: 'partial', key })) === refusingNode,
      );
      expect(onRefusing.length).toBeGreaterThan(0);
      const ran: string[] = [];
      const settled = await Promise.allSettled(
        fresh.map((key) =>
          executor.execute({ key, payload: 1 }, () => {
            ran.push(key);
            return 'done';
          }),
        ),
      );
      const failed = fresh.filter((_, i) => settled[i]?.status === 'rejected');
      expect(failed.sort()).toEqual([...onRefusing].sort());
      expect(ran.sort()).toEqual(fresh.filter((k) => !failed.includes(k)).sort());
      for (const [i, outcome] of settled.entries()) {
        if (outcome.status === 'fulfilled') expect(outcome.value.status).toBe('completed');
        else
          expect(outcome.reason, fresh[i]).toMatchObject({
            outcome: 'retryable',
            info: { name: 'StoreUnavailableError' },
          });
      }
    } finally {
      await client?.quit().catch(() => undefined);
      for (const node of masters) {
        await node.call('ACL', 'DELUSER', user).catch(() => undefined);
        await node.quit();
      }
      await dropPrefix(admin, keyPrefix);
      await admin.quit();
    }
  });
});

describe('options', () => {
  it('refuses an option name it does not know: a misspelt keyPrefix would move the key space', () => {
    const client = fakeClient([]);
    expect(() => createRedisStore({ client, keyPrefx: 'billing' } as never)).toThrow(
      'unknown option "keyPrefx" (did you mean "keyPrefix"?)',
    );
  });

  it('rejects a key prefix with braces and negative durations', () => {
    const client = fakeClient([]);
    expect(() => createRedisStore({ client, keyPrefix: 'a{b}' })).toThrow(ConfigError);
    expect(() => createRedisStore({ client, keyPrefix: '' })).toThrow(ConfigError);
    expect(() => createRedisStore({ client, inProgressTtlMs: -1 })).toThrow(ConfigError);
    expect(() => createRedisStore({ client, compactAfterMs: Number.NaN })).toThrow(ConfigError);
  });

  it('refuses a missing client with a ConfigError, not a TypeError', () => {
    expect(() => createRedisStore({ keyPrefix: 'p' } as never)).toThrow(/client is required/);
    expect(() => createRedisStore({ client: {} } as never)).toThrow(ConfigError);
  });

  it('refuses an ioredis client with its own keyPrefix, on a Redis and on a Cluster', () => {
    // Found by a review: ioredis prefixes a script's keys but not the names packed into its
    // arguments, so the batch scripts and the single-key ones used two Redis keys for one store
    // key, and two workers could both hold it.
    const prefixed = standalone();
    prefixed.options.keyPrefix = 'app:';
    expect(() => createRedisStore({ client: prefixed })).toThrow(/keyPrefix/);
    prefixed.disconnect();
    const clustered = cluster();
    clustered.options.redisOptions = { ...clustered.options.redisOptions, keyPrefix: 'app:' };
    expect(() => createRedisStore({ client: clustered })).toThrow(/keyPrefix/);
    clustered.disconnect();
  });

  it('refuses a lease or retention over 50 years with a ConfigError before writing anything', async () => {
    // Found by a review: times are kept in 48-bit ms and markers in 32-bit seconds; a longer
    // retention wrapped, read as already expired, and the next copy of the key ran again.
    const client = standalone();
    const keyPrefix = testPrefix('huge');
    const store = createRedisStore({ client, keyPrefix });
    const century = 100 * 365 * 86_400_000;
    await expect(
      store.begin({ key: 'k', fingerprint: 'f', owner: 'w', leaseMs: century }),
    ).rejects.toBeInstanceOf(ConfigError);
    const lease = await store.begin({ key: 'k', fingerprint: 'f', owner: 'w', leaseMs: 10_000 });
    if (lease.status !== 'acquired') throw new Error('not acquired');
    await expect(
      store.complete({ key: 'k', fence: lease.fence, outgoing: [], retentionMs: century }),
    ).rejects.toBeInstanceOf(ConfigError);
    await expect(
      store.fail('k', lease.fence, { name: 'E', code: 'E', message: 'm' }, Number.MAX_SAFE_INTEGER),
    ).rejects.toBeInstanceOf(ConfigError);
    expect((await store.get('k'))?.state).toBe('IN_PROGRESS');
    await dropPrefix(client, keyPrefix);
    client.disconnect();
  });

  it('compactCompleted needs compactAfterMs', async () => {
    const store = createRedisStore({ client: fakeClient([]), checkEvictionPolicy: false });
    await expect(store.compactCompleted()).rejects.toBeInstanceOf(ConfigError);
  });
});

describe('listInProgress', () => {
  it('answers the `limit` oldest records, oldest first, not the first the SCAN meets', async () => {
    // Before: the first `limit` records in SCAN order (any order), so `stuck --limit` could leave
    // out the oldest stuck work.
    const client = standalone();
    const keyPrefix = testPrefix('oldest');
    try {
      const store = createRedisStore({ client, keyPrefix });
      const keys = Array.from({ length: 40 }, (_, i) => `oldest:${String(i).padStart(2, '0')}`);
      for (const key of keys) {
        await store.begin({ key, fingerprint: 'f', owner: 'w', leaseMs });
        await sleep(3);
      }
      const listed = await store.listInProgress?.({ olderThanMs: 0, limit: 5, prefix: 'oldest:' });
      expect(listed?.map((e) => e.key)).toEqual(keys.slice(0, 5));
    } finally {
      await dropPrefix(client, keyPrefix);
      client.disconnect();
    }
  });
});
