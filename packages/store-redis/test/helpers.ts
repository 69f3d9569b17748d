/**
 * Shared setup for the integration tests: clients to the servers `scripts/infra.sh up` starts
 * (EO_REDIS_URL, default redis://127.0.0.1:6379; EO_REDIS_CLUSTER_NODES, default
 * 127.0.0.1:7001-7003) and a fresh key prefix per store, whose keys are deleted afterwards.
 */
import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Cluster, Redis } from 'ioredis';

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
