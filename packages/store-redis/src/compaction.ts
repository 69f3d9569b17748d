/**
 * Compaction: COMPLETED records older than the hot window become 18-byte markers in their cluster
 * slot's bucket, which still answer "already processed" exactly (no false negatives) until the record's
 * expiry. Only records indexed at completion (stores created with `compactAfterMs`) are visited:
 * a pass reads each tag's index from the oldest completion on, and never scans the keyspace.
 */
import { type RedisClient, runScript } from './client.js';
import { indexKey, markerBucketKey, recordKey, tagsBySlot } from './layout.js';

export interface CompactionOptions {
  /** Index entries examined per tag and script call (a call covers the ~5 tags of a cluster slot). Default 100. */
  readonly batchSize?: number;
  /**
   * Cluster slots worked on in parallel. A pass visits the 13,152 slots that the 65,536 tags hash
   * to, so it is bound by round trips: under a second on a local server at the default 32.
   */
  readonly concurrency?: number;
}

export interface CompactionStats {
  /** Records replaced by a marker. */
  compacted: number;
  /** Index entries whose record had already expired or changed state. */
  dropped: number;
  /** Records kept because some outgoing message is not confirmed yet; retried a window later. */
  deferred: number;
}

export interface CompactionContext {
  readonly client: RedisClient;
  readonly prefix: string;
  readonly compactAfterMs: number;
  readonly graceMs: number;
}

/** One pass over every tag's index, a cluster slot at a time (the tags of a slot share a bucket). */
export async function compactPass(
  context: CompactionContext,
  options: CompactionOptions = {},
): Promise<CompactionStats> {
  const batchSize = Math.max(1, Math.floor(options.batchSize ?? 100));
  const concurrency = Math.max(1, Math.floor(options.concurrency ?? 32));
  const stats: CompactionStats = { compacted: 0, dropped: 0, deferred: 0 };
  const slots = tagsBySlot();
  let next = 0;
  const worker = async () => {
    while (next < slots.length) {
      const tags = slots[next++] as readonly number[];
      await compactSlot(context, tags, batchSize, stats);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return stats;
}

async function compactSlot(
  context: CompactionContext,
  slotTags: readonly number[],
  batchSize: number,
  stats: CompactionStats,
): Promise<void> {
  const { client, prefix } = context;
  const bucket = markerBucketKey(prefix, slotTags[0] as number);
  let tags = slotTags;
  while (tags.length > 0) {
    // Oldest completions first: once one is inside the hot window, so is the rest of its index.
    const lists = (await runScript(client, 'compactCandidates', 'compactCompleted', [
      tags.length,
      ...tags.map((tag) => indexKey(prefix, tag)),
      String(batchSize),
    ])) as Buffer[][];
    const records: Buffer[] = [];
    const ids: Buffer[] = [];
    lists.forEach((list, i) => {
      for (const id of list) {
        records.push(recordKey(prefix, tags[i] as number, id));
        ids.push(id);
      }
    });
    if (ids.length === 0) return;
    const [compacted, dropped, deferred] = (await runScript(client, 'compactCompleted', 'compactCompleted', [
      1 + records.length,
      bucket,
      ...records,
      String(context.compactAfterMs),
      String(context.graceMs),
      ...ids,
    ])) as [number, number, number];
    stats.compacted += compacted;
    stats.dropped += dropped;
    stats.deferred += deferred;
    if (compacted + dropped === 0) return;
    // Only tags whose index had a full batch may have more.
    tags = tags.filter((_, i) => (lists[i] as Buffer[]).length === batchSize);
  }
}
