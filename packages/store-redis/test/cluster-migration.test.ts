/**
 * A Redis Cluster slot in migration (what `redis-cli --cluster reshard` does, key by key), on a
 * two-master cluster this test starts itself (the shared test cluster must not be resharded). The
 * batch scripts are routed by their first key only: when that key had moved already, Redis sent
 * the whole call on to the importing node (ASK), where the keys of the slot that had not moved yet
 * read as absent. A COMPLETED key was begun as new there (its handler would run again), and a held
 * key was answered `lost` (its run discarded and repeated). Now the call is refused while the slot
 * moves, before it writes anything, and answers right once it has moved.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createProcessor } from '@exactly-once/core';
import calculateSlot from 'cluster-key-slot';
import { Cluster, Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRedisStore, redisKeyFor } from '../src/index.js';
import { listening, sleep } from './helpers.js';

// A cluster node also binds its bus port, its port + 10,000. Both stay under Linux's ephemeral
// range (32,768 and up), where a client socket of another test could hold the bus port: a
// redis-server that cannot bind it exits at once (seen once in a CI run).
const base = 20_000 + 2 * Math.floor(Math.random() * 1_300);
const ports = [base, base + 1] as const;
const servers: ChildProcess[] = [];
let directory = '';
let a: Redis;
let b: Redis;

beforeAll(async () => {
  directory = await mkdtemp(join(tmpdir(), 'eo-migration-'));
  for (const port of ports) {
    servers.push(
      spawn(
        'redis-server',
        [
          '--port',
          String(port),
          '--bind',
          '127.0.0.1',
          '--cluster-enabled',
          'yes',
          '--cluster-config-file',
          `nodes-${port}.conf`,
          '--appendonly',
          'no',
          '--save',
          '',
          '--dir',
          directory,
        ],
        { stdio: 'ignore' },
      ),
    );
  }
  await Promise.all(ports.map((port) => listening(port)));
  a = new Redis(ports[0], '127.0.0.1');
  b = new Redis(ports[1], '127.0.0.1');
  await a.call('CLUSTER', 'ADDSLOTSRANGE', '0', '8191');
  await b.call('CLUSTER', 'ADDSLOTSRANGE', '8192', '16383');
  await a.call('CLUSTER', 'SET-CONFIG-EPOCH', '1');
  await b.call('CLUSTER', 'SET-CONFIG-EPOCH', '2');
  await a.call('CLUSTER', 'MEET', '127.0.0.1', String(ports[1]));
  for (let i = 0; i < 100; i++) {
    const states = await Promise.all([a, b].map((n) => n.call('CLUSTER', 'INFO') as Promise<string>));
    if (states.every((s) => s.includes('cluster_state:ok'))) break;
    await sleep(100);
  }
}, 30_000);

afterAll(async () => {
  a?.disconnect();
  b?.disconnect();
  for (const server of servers) server.kill('SIGKILL');
  if (directory) await rm(directory, { recursive: true, force: true });
});

/** The cluster slot of a store key (its record's hash tag: the first two bytes of its sha256). */
const slotOfKey = (key: string) =>
  calculateSlot(createHash('sha256').update(key).digest().readUInt16BE(0).toString(16).padStart(4, '0'));

/** Two keys in one slot of the first master. */
function twoKeysOfOneSlot(label: string): [string, string] {
  const run = `${label}-${Date.now().toString(36)}`;
  let first = '';
  for (let i = 0; ; i++) {
    first = `${run}-a${i}`;
    if (slotOfKey(first) < 8192) break;
  }
  for (let i = 0; ; i++) {
    const second = `${run}-b${i}`;
    if (slotOfKey(second) === slotOfKey(first)) return [first, second];
  }
}

/** Marks `slot` as leaving the first master for the second (what a reshard does first). */
async function startMove(slot: number): Promise<void> {
  const [idA, idB] = await Promise.all([a.call('CLUSTER', 'MYID'), b.call('CLUSTER', 'MYID')]);
  await b.call('CLUSTER', 'SETSLOT', String(slot), 'IMPORTING', String(idA));
  await a.call('CLUSTER', 'SETSLOT', String(slot), 'MIGRATING', String(idB));
}

/** Starts moving the slot of `key` from the first master to the second, then moves `key` alone. */
async function moveOnly(prefix: string, key: string): Promise<number> {
  const slot = slotOfKey(key);
  await startMove(slot);
  await a.callBuffer(
    'MIGRATE',
    '127.0.0.1',
    String(ports[1]),
    '',
    '0',
    '5000',
    'KEYS',
    redisKeyFor(prefix, key),
  );
  return slot;
}

/** Moves what is left of `slot` and gives it to the second master. */
async function finishMove(slot: number): Promise<void> {
  for (;;) {
    // Buffers: record names are bytes that are not UTF-8.
    const keys = (await a.callBuffer('CLUSTER', 'GETKEYSINSLOT', String(slot), '100')) as Buffer[];
    if (keys.length === 0) break;
    await a.callBuffer('MIGRATE', '127.0.0.1', String(ports[1]), '', '0', '5000', 'KEYS', ...keys);
  }
  const idB = String(await b.call('CLUSTER', 'MYID'));
  for (const node of [a, b]) await node.call('CLUSTER', 'SETSLOT', String(slot), 'NODE', idB);
}

/** Moves all of `slot` from the first master to the second (the client is not told). */
async function moveSlot(slot: number): Promise<void> {
  await startMove(slot);
  await finishMove(slot);
}

const fingerprint = '8'.repeat(64);

/** The store's batch forms (optional in the store contract; the Redis store has them). */
function batch(store: ReturnType<typeof createRedisStore>) {
  const { beginMany, completeMany } = store;
  if (beginMany === undefined || completeMany === undefined) throw new Error('no batch operations');
  return { beginMany: beginMany.bind(store), completeMany: completeMany.bind(store) };
}

describe('store-redis on a Cluster slot in migration', () => {
  it('a batch begin never takes a COMPLETED key that has not moved yet for new', async () => {
    const client = new Cluster([{ host: '127.0.0.1', port: ports[0] }]);
    const prefix = 'mig-begin';
    const store = createRedisStore({ client, keyPrefix: prefix, checkEvictionPolicy: false });
    try {
      const [moved, left] = twoKeysOfOneSlot('begin');
      for (const key of [moved, left]) {
        const begun = await store.begin({ key, fingerprint, owner: 'w', leaseMs: 10_000 });
        if (begun.status !== 'acquired') throw new Error(begun.status);
        await store.complete({ key, fence: begun.fence, retentionMs: 3_600_000, outgoing: [] });
      }
      const slot = await moveOnly(prefix, moved);
      const request = (key: string) => ({ key, fingerprint, owner: 'w', leaseMs: 1_500 });
      for (let round = 0; round < 2; round++) {
        const answers = await batch(store)
          .beginMany([request(moved), request(left)])
          .catch(() => undefined);
        // Refused while the slot moves, or answered from the record where it is: never acquired.
        for (const answer of answers ?? []) expect(answer.status).toBe('duplicate');
        await sleep(1_600);
      }
      await finishMove(slot);
      const after = await batch(store).beginMany([request(moved), request(left)]);
      expect(after.map((x) => x.status)).toEqual(['duplicate', 'duplicate']);
    } finally {
      await store.close();
      client.disconnect();
    }
  }, 60_000);

  it('a batch complete never answers a key held under its fence lost because it has not moved yet', async () => {
    const client = new Cluster([{ host: '127.0.0.1', port: ports[0] }]);
    const prefix = 'mig-complete';
    const store = createRedisStore({ client, keyPrefix: prefix, checkEvictionPolicy: false });
    try {
      const [moved, left] = twoKeysOfOneSlot('complete');
      const held = await batch(store).beginMany(
        [moved, left].map((key) => ({ key, fingerprint, owner: 'w', leaseMs: 30_000 })),
      );
      const fences = held.map((h) => (h.status === 'acquired' ? h.fence : Number.NaN));
      const slot = await moveOnly(prefix, moved);
      const requests = [moved, left].map((key, i) => ({
        key,
        fence: fences[i] as number,
        retentionMs: 3_600_000,
        outgoing: [],
      }));
      const during = await batch(store)
        .completeMany(requests)
        .catch(() => undefined);
      // Refused while the slot moves (the caller tries again); never `lost` for the held key.
      if (during !== undefined) expect(during).toEqual(['ok', 'ok']);
      await finishMove(slot);
      if (during === undefined) expect(await batch(store).completeMany(requests)).toEqual(['ok', 'ok']);
      const records = await Promise.all([moved, left].map((key) => store.get(key)));
      expect(records.map((r) => r?.state)).toEqual(['COMPLETED', 'COMPLETED']);
    } finally {
      await store.close();
      client.disconnect();
    }
  }, 60_000);

  it('with waitReplicas, a complete whose slot moved away gets MOVED once, then finds the new node', async () => {
    // The complete and its WAIT go as one pipeline; a MOVED for the script alone (WAIT answered)
    // is not followed by ioredis, and nothing else refreshed the slot map: after a failover the
    // consumers retried the complete against the old node for minutes, until restarted.
    const client = new Cluster([{ host: '127.0.0.1', port: ports[0] }]);
    const prefix = 'mig-wait';
    const store = createRedisStore({
      client,
      keyPrefix: prefix,
      checkEvictionPolicy: false,
      waitReplicas: { replicas: 0, timeoutMs: 10 },
    });
    try {
      const [key] = twoKeysOfOneSlot('wait');
      const [held] = await batch(store).beginMany([{ key, fingerprint, owner: 'w', leaseMs: 30_000 }]);
      if (held?.status !== 'acquired') throw new Error(String(held?.status));
      await moveSlot(slotOfKey(key));
      const request = { key, fence: held.fence, retentionMs: 3_600_000, outgoing: [] };
      let answer: string[] | undefined;
      for (let tries = 0; answer === undefined && tries < 5; tries++) {
        answer = await batch(store)
          .completeMany([request])
          .catch((error: unknown) => {
            expect(String(error)).toMatch(/MOVED/);
            return undefined;
          });
        if (answer === undefined) await sleep(200);
      }
      expect(answer).toEqual(['ok']);
      expect((await store.get(key))?.state).toBe('COMPLETED');
    } finally {
      await store.close();
      client.disconnect();
    }
  }, 60_000);

  it('a processor whose batch complete meets a slot moved away tries it again: each handler runs once', async () => {
    // A reshard moved a held key's slot between its begin and its complete. The client's slot map
    // still names the old node, so the batch complete goes there, completes the key before it and
    // fails at the moved one ("non local key"). Before, both messages were deferred, and the
    // moved key's handler ran again once its lease had run out.
    const client = new Cluster([{ host: '127.0.0.1', port: ports[0] }]);
    const store = createRedisStore({ client, keyPrefix: 'mig-run', checkEvictionPolicy: false });
    const run = `run-${Date.now().toString(36)}`;
    const slotOfMessage = (key: string) => slotOfKey(`default:mig:${key}`);
    const onFirstMaster = (label: string, other?: number) => {
      for (let i = 0; ; i++) {
        const key = `${run}-${label}${i}`;
        const slot = slotOfMessage(key);
        if (slot < 8192 && slot !== other) return key;
      }
    };
    const stays = onFirstMaster('s');
    const moves = onFirstMaster('m', slotOfMessage(stays));
    const runs = new Map<string, number>();
    let started = 0;
    let go: () => void = () => {};
    const moved = new Promise<void>((resolve) => {
      go = resolve;
    });
    const processor = createProcessor({
      consumer: 'mig',
      store,
      leaseMs: 10_000,
      retentionCheck: 'off',
      handler: async (_payload: unknown, ctx) => {
        runs.set(ctx.key, (runs.get(ctx.key) ?? 0) + 1);
        if (++started === 2) {
          await moveSlot(slotOfMessage(moves));
          go();
        }
        await moved;
        return { ok: true };
      },
    });
    try {
      const deliver = (key: string) =>
        processor.process({
          body: Buffer.from('{}'),
          headers: { 'x-idempotency-key': key, 'x-request-id': `req-${key}` },
          destination: 'mig',
          system: 'test',
        });
      const answers = await Promise.all([deliver(stays), deliver(moves)]);
      expect(answers.map((x) => x.action)).toEqual(['ack', 'ack']);
      expect([runs.get(stays), runs.get(moves)]).toEqual([1, 1]);
      const again = await Promise.all([deliver(stays), deliver(moves)]);
      expect(again.map((x) => x.outcome)).toEqual(['duplicate', 'duplicate']);
    } finally {
      await store.close();
      client.disconnect();
    }
  }, 60_000);
});
