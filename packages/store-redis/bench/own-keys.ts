/** The benches' cleanup: they write under a fresh prefix and delete only that prefix's keys. */
import type { Redis } from 'ioredis';

export async function deletePrefix(client: Redis, keyPrefix: string): Promise<void> {
  let cursor = '0';
  do {
    const [next, keys] = await client.scanBuffer(cursor, 'MATCH', `${keyPrefix}:*`, 'COUNT', 5000);
    cursor = next.toString();
    if (keys.length > 0) await client.unlink(...keys);
  } while (cursor !== '0');
}
