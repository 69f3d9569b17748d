/**
 * Where a record lives. A record is named after a digest of its store key, never after the key
 * itself: any key (`*`, `{`, NUL, 10 KiB...) becomes a fixed-size name that no pattern, hash-tag
 * rule or length limit can trip over, and long keys cost no memory. The caller always knows the
 * key it asks about, so COMPLETED and FAILED records do not store it (IN_PROGRESS ones keep it
 * for listInProgress).
 *
 * With d = sha256(key):
 * - tag:     hex of d[0..2] — 65,536 tags, which hash to 13,152 of the 16,384 cluster slots.
 * - id:      d[2..18], 16 bytes; tag + id are 144 bits of the digest.
 * - record:  `<prefix>:{<tag>}:<id>` (a string, see codec.ts)
 * - extras:  `<prefix>:{<tag>}:<id>x` — the record's steps, error and outgoing messages (a hash,
 *            only when it has any; named by the scripts, never here)
 * - markers: `<prefix>:{<rep>}n` — compaction markers of the keys of one cluster slot: every tag
 *            whose slot is the same shares one bucket, named after the first such tag (`rep`), so
 *            13,152 buckets share the markers instead of 65,536 (a string of fixed-width sorted
 *            entries, see lua/includes/markers.lua)
 * - legacy:  `<prefix>:{<tag>}m` — the previous layout's marker bucket (hash: id -> marker), read
 *            until it expires and never written
 * - index:   `<prefix>:{<tag>}i` — completions awaiting compaction (sorted set: id -> completedAt)
 * - blobs:   `<prefix>:{<tag>}b` — blob results of the tag's records (sorted set: packed pointer ->
 *            the record's physical end), for `collectBlobs`
 * - probe:   `<prefix>:{<tag>}p` — never written: the batch scripts name it beside a record so that
 *            a Cluster slot in migration refuses them (see refuseMigrating in lua/includes/record.lua)
 *
 * All keys of a record share the `{<tag>}` hash tag, and its marker bucket the tag's slot, so every
 * script on one key runs on one cluster slot.
 * Two distinct keys share a record only if 144 bits of their sha256 agree: about n²/2^145 for n
 * keys, 2e-29 at 30 million.
 */
import { sha256, sha256Hex } from '@exactly-once/core';
import calculateSlot from 'cluster-key-slot';

export const TAG_COUNT = 65_536;

export interface RecordKeys {
  readonly record: Buffer;
  /** The tag (0..65535): the `{<tag hex>}` of every key of the record. */
  readonly tag: number;
  /** The record's 16-byte id: its name suffix and index member; its first 10 bytes, its marker's. */
  readonly id: Buffer;
  readonly markers: Buffer;
  readonly legacyMarkers: Buffer;
  readonly index: Buffer;
  readonly blobs: Buffer;
}

/** The record's name and id up front; the tag's other keys only when asked (the hot path never does). */
class Keys implements RecordKeys {
  constructor(
    private readonly prefix: string,
    readonly tag: number,
    readonly id: Buffer,
    readonly record: Buffer,
  ) {}
  get markers(): Buffer {
    return markerBucketKey(this.prefix, this.tag);
  }
  get legacyMarkers(): Buffer {
    return legacyMarkerBucketKey(this.prefix, this.tag);
  }
  get index(): Buffer {
    return indexKey(this.prefix, this.tag);
  }
  get blobs(): Buffer {
    return blobIndexKey(this.prefix, this.tag);
  }
}

/** `<prefix>:{<tag hex>}`, the part every key of a tag starts with. */
export function tagPrefix(prefix: string, tag: number): string {
  return `${prefix}:{${tag.toString(16).padStart(4, '0')}}`;
}

/** The tags of each cluster slot that has any, in order; made on first use. */
let slotGroups: number[][] | undefined;
/** Per tag, the first tag of its cluster slot (see markerBucketKey). */
let slotFirstTag: Uint16Array | undefined;
/** Per tag, its cluster slot. */
let tagSlot: Uint16Array | undefined;

/**
 * The tags grouped by cluster slot (1 to 12 a slot, about 5; 13,152 slots have any): the unit of a
 * compaction call, since the tags of a slot share one marker bucket.
 */
export function tagsBySlot(): readonly (readonly number[])[] {
  if (slotGroups === undefined) {
    const bySlot = new Map<number, number[]>();
    const slots = new Uint16Array(TAG_COUNT);
    for (let t = 0; t < TAG_COUNT; t++) {
      const slot = calculateSlot(t.toString(16).padStart(4, '0'));
      slots[t] = slot;
      const tags = bySlot.get(slot);
      if (tags === undefined) bySlot.set(slot, [t]);
      else tags.push(t);
    }
    slotGroups = [...bySlot.values()];
    slotFirstTag = slots.map((slot) => (bySlot.get(slot) as number[])[0] as number);
    tagSlot = slots;
  }
  return slotGroups;
}

/**
 * Whether `error` is a Cluster refusing a call for a key its node no longer serves, where ioredis
 * would not notice: after a resharding, multi-slot calls grouped by a stale slot map get "non
 * local key" (not MOVED); after a failover or resharding, a complete sent with its `WAIT` in one
 * pipeline gets MOVED that ioredis does not follow (the WAIT was answered). Refreshes the map
 * when it is, so the next call goes to the right node.
 */
export function staleSlotMap(client: object, error: unknown): boolean {
  if ((client as { isCluster?: boolean }).isCluster !== true) return false;
  if (!(error instanceof Error && /non local key|\bMOVED \d+ /.test(error.message))) return false;
  (client as { refreshSlotsCache?: () => void }).refreshSlotsCache?.();
  return true;
}

/**
 * `items` in groups of at most `size` whose tags are served by one node (see nodeOfTag), in
 * order: what one multi-slot script call can carry.
 */
export function chunksByNode<T>(
  client: object,
  items: Iterable<T>,
  tagOf: (item: T) => number,
  size: number,
): T[][] {
  const open = new Map<string, T[]>();
  const chunks: T[][] = [];
  for (const item of items) {
    const node = nodeOfTag(client, tagOf(item));
    let chunk = open.get(node);
    if (chunk === undefined || chunk.length === size) {
      chunk = [];
      open.set(node, chunk);
      chunks.push(chunk);
    }
    chunk.push(item);
  }
  return chunks;
}

/**
 * The master node serving `tag`'s slot, as a Cluster client's slot map names it (`host:port`); the
 * slot itself while the map is not loaded, and '' on a single server. Keys grouped by it share one
 * script call: the batch scripts reach keys of several slots on their node (allow-cross-slot-keys).
 */
export function nodeOfTag(client: object, tag: number): string {
  if ((client as { isCluster?: boolean }).isCluster !== true) return '';
  if (tagSlot === undefined) tagsBySlot();
  const slot = (tagSlot as Uint16Array)[tag] as number;
  return (
    (client as { slots?: readonly (readonly string[] | undefined)[] }).slots?.[slot]?.[0] ?? `slot ${slot}`
  );
}

function firstTagOfSlot(tag: number): number {
  if (slotFirstTag === undefined) tagsBySlot();
  return (slotFirstTag as Uint16Array)[tag] as number;
}

/** Per prefix, the marker bucket names made so far, by the first tag of their slot. */
const bucketNames = new Map<string, Buffer[]>();

/**
 * The marker bucket of `tag`'s keys: `<prefix>:{<rep>}n`, where rep is the first tag hashing to
 * the same cluster slot, so it is on the slot of each record it stands in for (a script touches one
 * slot) while ~5 tags share it.
 */
export function markerBucketKey(prefix: string, tag: number): Buffer {
  const rep = firstTagOfSlot(tag);
  let names = bucketNames.get(prefix);
  if (names === undefined) {
    names = [];
    bucketNames.set(prefix, names);
  }
  // Every begin of a new key names its bucket: made once per bucket, not once per key.
  names[rep] ??= Buffer.from(`${tagPrefix(prefix, rep)}n`);
  return names[rep];
}

export function legacyMarkerBucketKey(prefix: string, tag: number): Buffer {
  return Buffer.from(`${tagPrefix(prefix, tag)}m`);
}

export function indexKey(prefix: string, tag: number): Buffer {
  return Buffer.from(`${tagPrefix(prefix, tag)}i`);
}

export function blobIndexKey(prefix: string, tag: number): Buffer {
  return Buffer.from(`${tagPrefix(prefix, tag)}b`);
}

export function recordKey(prefix: string, tag: number, id: Buffer): Buffer {
  // Written in place: every new key's begin makes one, and concatenating two buffers cost a tenth
  // of keysFor.
  const head = `${tagPrefix(prefix, tag)}:`;
  const at = Buffer.byteLength(head);
  const out = Buffer.allocUnsafe(at + id.length);
  out.write(head, 0, 'utf8');
  id.copy(out, at);
  return out;
}

// A key is begun and then completed moments later: remember the last few thousand layouts of each
// prefix rather than hash each key twice (a map per prefix: no joined string to build and hash).
const recent = new Map<string, Map<string, RecordKeys>>();
const RECENT_MAX = 4096;

export function keysFor(prefix: string, key: string): RecordKeys {
  let ofPrefix = recent.get(prefix);
  if (ofPrefix === undefined) {
    ofPrefix = new Map();
    recent.set(prefix, ofPrefix);
  }
  const cached = ofPrefix.get(key);
  if (cached !== undefined) return cached;
  const keys = computeKeys(prefix, key);
  if (ofPrefix.size >= RECENT_MAX) ofPrefix.clear();
  ofPrefix.set(key, keys);
  return keys;
}

function computeKeys(prefix: string, key: string): RecordKeys {
  const digest = sha256(key);
  const tag = digest.readUInt16BE(0);
  const id = digest.subarray(2, 18);
  return new Keys(prefix, tag, id, recordKey(prefix, tag, id));
}

/**
 * The Redis key of `key`'s record, for looking at it with redis-cli (e.g. `HGETALL`, `PTTL`):
 * `redisKeyFor('eo', 'orders:billing:42').toString('latin1')`.
 */
export function redisKeyFor(prefix: string, key: string): Buffer {
  return keysFor(prefix, key).record;
}

/**
 * The payload guard's claim of `fingerprint` within `scope` (see `claimFingerprint`):
 * `<prefix>:{f<fingerprint>}p:<scope>`, a string holding the first key, expiring with the window,
 * hash-tagged by the fingerprint. A fingerprint over 64 characters (core's is 64 hex digits), or
 * one holding `{` or `}`, is named by its sha256 instead (`{h<sha256>}`), so the tag stays short
 * and well-formed.
 */
export function fingerprintClaimKey(prefix: string, scope: string, fingerprint: string): Buffer {
  const tag =
    fingerprint.length <= 64 && !/[{}]/.test(fingerprint) ? `f${fingerprint}` : `h${sha256Hex(fingerprint)}`;
  return Buffer.from(`${prefix}:{${tag}}p:${scope}`);
}
