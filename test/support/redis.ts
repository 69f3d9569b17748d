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
