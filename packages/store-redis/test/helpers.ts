/**
 * Shared setup for the integration tests: clients to the servers `scripts/infra.sh up` starts
 * (EO_REDIS_URL, default redis://127.0.0.1:6379; EO_REDIS_CLUSTER_NODES, default
 * 127.0.0.1:7001-7003) and a fresh key prefix per store, whose keys are deleted afterwards.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createFsBlobStore } from '@exactly-once/core';
import { Cluster, Redis } from 'ioredis';
import { vi } from 'vitest';
import { createRedisStore, type RedisProcessedStore, type RedisStoreOptions } from '../src/index.js';

export const REDIS_URL = process.env.EO_REDIS_URL ?? 'redis://127.0.0.1:6379';
export const CLUSTER_NODES = (
  process.env.EO_REDIS_CLUSTER_NODES ?? '127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003'
)
  .split(',')
  .map((node) => {
    const [host = '127.0.0.1', port = '6379'] = node.trim().split(':');
    return { host, port: Number(port) };
  });

export function standalone(): Redis {
  return new Redis(REDIS_URL, { maxRetriesPerRequest: 2 });
}

export function cluster(): Cluster {
  return new Cluster(CLUSTER_NODES, { redisOptions: { maxRetriesPerRequest: 2 } });
}

/** A prefix no other run uses; plain characters, so it is safe in a SCAN pattern. */
export function testPrefix(label: string): string {
  return `eot-${label}-${randomBytes(4).toString('hex')}`;
}

/** Deletes every key under `prefix` (on every master of a cluster): only keys this run wrote. */
export async function dropPrefix(client: Redis | Cluster, prefix: string): Promise<void> {
  const nodes = client instanceof Cluster ? client.nodes('master') : [client];
  for (const node of nodes) {
    let cursor = '0';
    do {
      const [next, keys] = await node.scanBuffer(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
      cursor = next.toString();
      for (const key of keys) await node.unlink(key);
    } while (cursor !== '0');
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

/** Blob files in a filesystem blob store's directory (its two-hex-digit fan-out folders). */
export async function blobFiles(directory: string): Promise<number> {
  let count = 0;
  for (const entry of await readdir(directory)) {
    if (/^[0-9a-f]{2}$/.test(entry)) count += (await readdir(join(directory, entry))).length;
  }
  return count;
}

/**
 * A client, a fresh key prefix, a filesystem blob store in a fresh directory, and stores made on
 * them (each under the prefix unless given another); `close()` drops every prefix used, closes
 * the stores and the client, and deletes the directory.
 */
export async function blobFixture(connect: () => Redis | Cluster, label: string) {
  const client = connect();
  const prefix = testPrefix(label);
  const directory = await mkdtemp(join(tmpdir(), `eo-redis-${label}-`));
  const stores: RedisProcessedStore[] = [];
  const prefixes = new Set([prefix]);
  return {
    client,
    prefix,
    directory,
    blobs: createFsBlobStore({ directory }),
    store(options: Omit<RedisStoreOptions, 'client'> = {}): RedisProcessedStore {
      const keyPrefix = options.keyPrefix ?? prefix;
      prefixes.add(keyPrefix);
      const store = createRedisStore({ client, keyPrefix, checkEvictionPolicy: false, ...options });
      stores.push(store);
      return store;
    },
    async close(): Promise<void> {
      for (const store of stores) await store.close();
      for (const p of prefixes) await dropPrefix(client, p);
      client.disconnect();
      await rm(directory, { recursive: true, force: true });
    },
  };
}

/** Spies on the ioredis command a store script is registered as (`<command>Buffer`, how the store calls it). */
export function spyOnScript(client: Redis | Cluster, script: { readonly command: string }) {
  const methods = client as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;
  return vi.spyOn(methods, `${script.command}Buffer`);
}

/** Resolves once something accepts connections on `port` (the server just spawned). */
export async function listening(port: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const up = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (up) return;
    await sleep(100);
  }
  throw new Error(`redis-server did not start on ${port}`);
}
