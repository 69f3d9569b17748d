/**
 * `listInProgress` for the Redis store: an operator query (alerts, CLI), not a pipeline operation.
 *
 * Records are named by digests (see layout.ts), so a record cannot be found by its key. While a
 * record is IN_PROGRESS it also holds the store key itself and the store time its current
 * attempt began, written by begin; complete and fail write records without them, so the key
 * costs memory only while the work is in flight. The query SCANs (on every master of a Cluster)
 * for records named `<keyPrefix>:{<tag>}:<id>` and reads them: it walks the store's whole
 * keyspace, so run it every minute or so, not per message. A record of the previous layout (a
 * hash) is read too.
 */
import { type InProgressEntry, type InProgressQuery, StoreUnavailableError } from '@exactly-once/core';
import { oldestFirst } from '@exactly-once/core/spi';
import { isWrongType, type RedisClient } from './client.js';
import { inProgressEntry } from './codec.js';

interface ScanningNode {
  scanBuffer(cursor: string, ...args: (string | number)[]): Promise<[Buffer, Buffer[]]>;
  getBuffer(key: Buffer): Promise<Buffer | null>;
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
    // The oldest `limit` of all: a SCAN meets records in no order, so every match is looked at,
    // keeping at most twice the limit in memory.
    let found: InProgressEntry[] = [];
    for (const node of nodes) {
      const [seconds, micros] = (await node.call('TIME')) as [string, string];
      const cutoff = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000) - query.olderThanMs;
      let cursor = '0';
      do {
        const [next, names] = await node.scanBuffer(cursor, 'MATCH', pattern, 'COUNT', 1000);
        cursor = next.toString();
        for (const name of names) {
          if (name.length !== recordLength || name[recordLength - 17] !== 0x3a /* : */) continue;
          const entry = await readEntry(node, name);
          if (entry === undefined) continue;
          if (query.prefix !== undefined && !entry.key.startsWith(query.prefix)) continue;
          if (entry.startedAt > cutoff) continue;
          found.push(entry);
          if (found.length >= 2 * query.limit) found = oldestFirst(found, query.limit);
        }
      } while (cursor !== '0');
    }
    return oldestFirst(found, query.limit);
  } catch (cause) {
    throw cause instanceof StoreUnavailableError
      ? cause
      : new StoreUnavailableError({ operation: 'listInProgress', cause });
  }
}

/** The IN_PROGRESS entry stored at `name`, or undefined (another state, gone, or no key kept). */
async function readEntry(node: ScanningNode, name: Buffer): Promise<InProgressEntry | undefined> {
  let packed: Buffer | null;
  try {
    packed = await node.getBuffer(name);
  } catch (error) {
    if (!isWrongType(error)) throw error;
    return readLegacyEntry(node, name);
  }
  let entry: InProgressEntry | undefined;
  try {
    entry = packed ? inProgressEntry(packed) : undefined;
  } catch {
    // Bytes that are no record (written by hand): not work in progress (begin refuses the key).
    return undefined;
  }
  // Records begun before the key was kept have none: they cannot be reported.
  return entry && entry.key.length > 0 ? entry : undefined;
}

/** A record of the previous layout: a hash with one-letter fields. */
async function readLegacyEntry(node: ScanningNode, name: Buffer): Promise<InProgressEntry | undefined> {
  let fields: (Buffer | null)[];
  try {
    fields = await node.hmgetBuffer(name, 's', 'k', 'b', 'w', 'a', 'n', 'l');
  } catch (error) {
    // A list or a set at a record's name (written by hand) is no record: skipped, not a failure
    // of the whole listing.
    if (isWrongType(error)) return undefined;
    throw error;
  }
  const [s, k, b, w, a, n, l] = fields;
  if (s?.toString('latin1') !== 'I' || !k || !b) return undefined;
  return {
    key: k.toString('utf8'),
    owner: (w ?? Buffer.alloc(0)).toString('utf8'),
    attempt: Number(a?.toString('latin1') ?? 0),
    fence: Number(n?.toString('latin1') ?? 0),
    leaseUntil: Number(l?.toString('latin1') ?? 0),
    startedAt: Number(b.toString('latin1')),
  };
}
