/**
 * Deleting one test run's Redis keys. Record names hold raw bytes (a digest of the key), so they
 * are scanned and deleted as Buffers: string replies would mangle them and delete nothing.
 */
import { Cluster, type Redis } from 'ioredis';

/** Deletes every key starting with `prefix` (on every master of a Cluster): only this run's. */
export async function dropRedisPrefix(client: Redis | Cluster, prefix: string): Promise<void> {
  const nodes = client instanceof Cluster ? client.nodes('master') : [client];
  for (const node of nodes) {
    let cursor = '0';
    do {
      const [next, keys] = await node.scanBuffer(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
      cursor = next.toString();
      // One UNLINK per key, pipelined: a Cluster node refuses one naming keys of several slots.
      if (keys.length > 0) await keys.reduce((p, key) => p.unlink(key), node.pipeline()).exec();
    } while (cursor !== '0');
  }
}

/** The store key prefixes this test file made (a file's modules are its own in vitest). */
const storePrefixes: string[] = [];

/** Records a store's key prefix for {@link dropStorePrefixes}; answers it. */
export function trackedPrefix(prefix: string): string {
  storePrefixes.push(prefix);
  return prefix;
}

/** Deletes the keys of every store this file made with a {@link trackedPrefix} (in afterAll). */
export async function dropStorePrefixes(client: Redis | Cluster): Promise<void> {
  for (const prefix of storePrefixes.splice(0)) await dropRedisPrefix(client, `${prefix}:`);
}
