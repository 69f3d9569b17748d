/**
 * `listInProgress` for the Redis store: an operator query (alerts, CLI), not a pipeline operation.
 *
 * Records are named by digests (see layout.ts), so a record cannot be found by its key. While a
 * record is IN_PROGRESS its hash also holds the store key itself (`k`) and the store time its
 * current attempt began (`b`), written by begin; complete and fail rewrite the hash without them,
 * so the key costs memory only while the work is in flight. The query SCANs (on every master of
 * a Cluster) for hashes named `<keyPrefix>:{<tag>}:<id>` and reads those fields: it walks the
 * store's whole keyspace, so run it every minute or so, not per message. Records begun before
 * the fields existed have no `k` and are left out.
 */
import { type InProgressEntry, type InProgressQuery, StoreUnavailableError } from '@exactly-once/core';
import type { RedisClient } from './client.js';

interface ScanningNode {
  scanBuffer(cursor: string, ...args: (string | number)[]): Promise<[Buffer, Buffer[]]>;
  hmgetBuffer(key: Buffer, ...fields: string[]): Promise<(Buffer | null)[]>;
  call(command: string, ...args: (string | number)[]): Promise<unknown>;
}

/** A SCAN pattern matching `text` literally. */
function globEscape(text: string): string {
  return text.replace(/[\\*?[\]]/g, (c) => `\\${c}`);
}

export async function listInProgress(
  client: RedisClient,
  prefix: string,
  query: InProgressQuery,
): Promise<InProgressEntry[]> {
  if (!(query.limit > 0)) return [];
  try {
    const nodes = (client.isCluster && client.nodes
      ? client.nodes('master')
      : [client]) as unknown as ScanningNode[];
    const head = Buffer.from(`${prefix}:{`);
    // `<prefix>:{` + 4 hex digits + `}:` + 16-byte id.
    const recordLength = head.length + 4 + 2 + 16;
    const pattern = `${globEscape(prefix)}:{*}:*`;
    const found: InProgressEntry[] = [];
    for (const node of nodes) {
      const [seconds, micros] = (await node.call('TIME')) as [string, string];
      const cutoff = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000) - query.olderThanMs;
      let cursor = '0';
      do {
        const [next, names] = await node.scanBuffer(cursor, 'MATCH', pattern, 'COUNT', 1000, 'TYPE', 'hash');
        cursor = next.toString();
        for (const name of names) {
          if (name.length !== recordLength || name[recordLength - 17] !== 0x3a /* : */) continue;
          const [s, k, b, w, a, n, l] = await node.hmgetBuffer(name, 's', 'k', 'b', 'w', 'a', 'n', 'l');
          if (s?.toString('latin1') !== 'I' || !k || !b) continue;
          const key = k.toString('utf8');
          if (query.prefix !== undefined && !key.startsWith(query.prefix)) continue;
          const startedAt = Number(b.toString('latin1'));
          if (startedAt > cutoff) continue;
          found.push({
            key,
            owner: (w ?? Buffer.alloc(0)).toString('utf8'),
            attempt: Number(a?.toString('latin1') ?? 0),
            fence: Number(n?.toString('latin1') ?? 0),
            leaseUntil: Number(l?.toString('latin1') ?? 0),
            startedAt,
          });
          if (found.length >= query.limit) return found;
        }
      } while (cursor !== '0');
    }
    return found;
  } catch (cause) {
    throw cause instanceof StoreUnavailableError
      ? cause
      : new StoreUnavailableError({ operation: 'listInProgress', cause });
  }
}
