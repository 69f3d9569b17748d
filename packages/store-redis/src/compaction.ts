/**
 * Compaction: COMPLETED records older than the hot window become 18-byte markers in their cluster
 * slot's bucket, which still answer "already processed" exactly (no false negatives) until the record's
 * expiry. Only records indexed at completion (stores created with `compactAfterMs`) are visited:
 * a pass reads each tag's index from the oldest completion on, and never scans the keyspace.
 */
import { CorruptRecordError } from '@exactly-once/core';
import { type RedisClient, runScript } from './client.js';
import { chunksByNode, indexKey, markerBucketKey, recordKey, staleSlotMap, tagsBySlot } from './layout.js';

export interface CompactionOptions {
  /** Index entries examined per tag and script call (a call covers the ~5 tags of a cluster slot). Default 100. */
  readonly batchSize?: number;
  /**
   * Calls in parallel. A pass reads the indexes of the 13,152 slots that the 65,536 tags hash to,
   * 64 slots of a node per call, then works on the slots that have entries, one slot per call.
   * Default 32.
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
  /**
   * Slots left as they are because one of their keys was damaged by hand (a value of another
   * type at a completion index or marker bucket, see README "Damaged records"); the others go on.
   */
  damaged: number;
}

export interface CompactionContext {
  readonly client: RedisClient;
  readonly prefix: string;
  readonly compactAfterMs: number;
  readonly graceMs: number;
}

/**
 * Slots whose indexes one candidates call reads, on their node: a pass over a sparse store (most
 * indexes empty) makes about 13,152 / 64 calls instead of one per slot.
 */
const SLOTS_PER_CALL = 64;

/** One pass over every tag's index, a cluster slot at a time (the tags of a slot share a bucket). */
export async function compactPass(
  context: CompactionContext,
  options: CompactionOptions = {},
): Promise<CompactionStats> {
  const batchSize = Math.max(1, Math.floor(options.batchSize ?? 100));
  const concurrency = Math.max(1, Math.floor(options.concurrency ?? 32));
  const stats: CompactionStats = { compacted: 0, dropped: 0, deferred: 0, damaged: 0 };
  // The slots (as their tags) in groups served by one node.
  const chunks = chunksByNode(context.client, tagsBySlot(), (tags) => tags[0] as number, SLOTS_PER_CALL);
  let next = 0;
  const worker = async () => {
    while (next < chunks.length) {
      const chunk = chunks[next++] as readonly (readonly number[])[];
      await compactChunk(context, chunk, batchSize, stats);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return stats;
}

/** The oldest `batchSize` entries of each tag's index, in `tags` order. */
async function candidates(
  context: CompactionContext,
  tags: readonly number[],
  batchSize: number,
): Promise<Buffer[][]> {
  const indexes = tags.map((tag) => indexKey(context.prefix, tag));
  return (await runScript(context.client, 'compactCandidates', 'compactCompleted', [
    indexes[0] as Buffer,
    String(batchSize),
    ...indexes,
  ])) as Buffer[][];
}

/** Reads a chunk's indexes in one call, then works on the slots that have entries. */
async function compactChunk(
  context: CompactionContext,
  chunk: readonly (readonly number[])[],
  batchSize: number,
  stats: CompactionStats,
): Promise<void> {
  let lists: Buffer[][];
  try {
    lists = await candidates(context, chunk.flat(), batchSize);
  } catch (error) {
    // A slot of the chunk moved to another node, or one of its indexes is damaged: a call per
    // slot, each routed by its own keys (a damaged one is skipped there).
    if (!staleSlotMap(context.client, error) && !(error instanceof CorruptRecordError)) throw error;
    for (const tags of chunk) await compactSlot(context, tags, batchSize, stats);
    return;
  }
  let offset = 0;
  for (const tags of chunk) {
    const first = lists.slice(offset, offset + tags.length);
    offset += tags.length;
    if (first.some((list) => list.length > 0)) await compactSlot(context, tags, batchSize, stats, first);
  }
}

/** {@link compactSlotOnce}, a slot with a damaged key counted and left as it is. */
async function compactSlot(
  context: CompactionContext,
  slotTags: readonly number[],
  batchSize: number,
  stats: CompactionStats,
  first?: Buffer[][],
): Promise<void> {
  try {
    await compactSlotOnce(context, slotTags, batchSize, stats, first);
  } catch (error) {
    if (!(error instanceof CorruptRecordError)) throw error;
    stats.damaged++;
  }
}

/** Compacts one slot's tags; `first`: their first candidates, when already read. */
async function compactSlotOnce(
  context: CompactionContext,
  slotTags: readonly number[],
  batchSize: number,
  stats: CompactionStats,
  first?: Buffer[][],
): Promise<void> {
  const { client, prefix } = context;
  const bucket = markerBucketKey(prefix, slotTags[0] as number);
  let tags = slotTags;
  let read = first;
  while (tags.length > 0) {
    // Oldest completions first: once one is inside the hot window, so is the rest of its index.
    const lists = read ?? (await candidates(context, tags, batchSize));
    read = undefined;
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
