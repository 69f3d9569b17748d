/**
 * Reading a key's chain: its head, then its elements from the head's hint to the last one.
 *
 * Every read is by `_id` alone (the only filter FerretDB 1.x pushes down). Elements are contiguous
 * (element i + 1 is inserted only by someone who read element i), and a chain is deleted head
 * first, so a walk that finds element i and not i + 1 has found the last element at that moment.
 */
import { createHash, randomBytes } from 'node:crypto';
import { CorruptRecordError } from '@exactly-once/core';
import type { Collection } from 'mongodb';
import {
  checkElement,
  describe,
  elementId,
  elementPlace,
  type HeadDoc,
  isTombstone,
  type RecordDoc,
  State,
} from './codec.js';

/** A fresh chain id (72 random bits). */
export function newChainId(): string {
  return randomBytes(9).toString('base64url');
}

/**
 * A record written by the previous layout (one document per key, state in the head itself) is
 * read as element 0 of a chain whose id derives from the key; its successors continue that chain.
 */
function legacyChainId(key: string): string {
  return `L${createHash('sha256').update(key).digest('base64url').slice(0, 16)}`;
}

/** The state of a key's chain as read. */
export interface Chain {
  readonly key: string;
  readonly chain: string;
  /**
   * Position and document of the last element; position 0 with no element: the head was just
   * inserted and its first element is not (yet) there.
   */
  readonly position: number;
  readonly last: RecordDoc | undefined;
}

type AnyHead = HeadDoc & Partial<Omit<RecordDoc, '_id' | 'c'>>;

export interface ChainReader {
  readonly collection: Collection<RecordDoc>;
  readonly heads: Collection<HeadDoc>;
}

/** The chain id a head names (a previous-layout head names its derived one). */
export function chainOf(head: AnyHead): string {
  if (head.c !== undefined && typeof head.c !== 'string') {
    // Edited by hand: no chain of this store is named so, and read as new its key would run again.
    throw new CorruptRecordError({ key: head._id, detail: `a head whose chain id is ${describe(head.c)}` });
  }
  if (head.h !== undefined && !(typeof head.h === 'number' && Number.isInteger(head.h))) {
    throw new CorruptRecordError({
      key: head._id,
      detail: `a head whose position hint is ${describe(head.h)}`,
    });
  }
  return head.c ?? legacyChainId(head._id);
}

/** A previous-layout head read as element 0 of its derived chain; undefined for a head of chains. */
function legacyElementOf(head: AnyHead): RecordDoc | undefined {
  if (head.c !== undefined) return undefined;
  return { ...(head as unknown as RecordDoc), k: head._id } satisfies RecordDoc;
}

/**
 * Chain and position of a document a query on records found (the sweeper's, listInProgress's): an
 * element, read from its `_id`, or a previous-layout record (no `k`: its own head), which is
 * element 0 of its derived chain.
 */
export function placeOfRecord(doc: RecordDoc): { readonly chain: string; readonly position: number } {
  return doc.k === undefined ? { chain: legacyChainId(doc._id), position: 0 } : elementPlace(doc._id);
}

/**
 * A walk's answer once `last` (at `position`) has no successor. A tombstone is never the last
 * element of a live chain: found last, the chain is being swept (`'gone'`: read again).
 */
function ending(key: string, chain: string, position: number, last: RecordDoc): Chain | 'gone' {
  if (isTombstone(last)) return 'gone';
  checkElement(key, last);
  return { key, chain, position, last };
}

/**
 * The key's chain, or `undefined` when the key has no head, or when the chain went away while it
 * was being read (deleted by the sweeper: read again).
 */
export async function readChain(reader: ChainReader, key: string): Promise<Chain | 'gone' | undefined> {
  const head = (await reader.heads.findOne({ _id: key })) as AnyHead | null;
  if (head === null) return undefined;
  const chain = chainOf(head);
  const read = await walk(reader, key, head, chain);
  // A chain is deleted head first: a gap or a tombstone found last while its head still names it
  // is no sweep but documents deleted or emptied by hand; read again, it would read so for ever.
  if (read === 'gone' && (await headNames(reader, key, chain))) {
    throw new CorruptRecordError({
      key,
      detail: 'a chain with an element deleted or emptied while its head still names it',
    });
  }
  return read;
}

/** {@link readChain}'s walk from the head's hint to the last element. */
async function walk(reader: ChainReader, key: string, head: AnyHead, chain: string): Promise<Chain | 'gone'> {
  const legacyElement = legacyElementOf(head);
  const first = legacyElement ? 0 : 1;
  const fetch = (position: number): Promise<RecordDoc | null> =>
    position === 0
      ? Promise.resolve(legacyElement ?? null)
      : reader.collection.findOne({ _id: elementId(chain, position) });

  // Start at the hint; a hint that names a missing element came from a stale writer: start over.
  let position = Math.max(first, head.h ?? first);
  let [current, next, after] = await Promise.all([fetch(position), fetch(position + 1), fetch(position + 2)]);
  if (current === null && position > first) {
    position = first;
    [current, next, after] = await Promise.all([fetch(position), fetch(position + 1), fetch(position + 2)]);
  }
  if (current === null) {
    // A missing first element: its head's writer is between its two inserts (or died there).
    return next === null ? { key, chain, position: 0, last: undefined } : 'gone';
  }
  for (;;) {
    if (next === null) return ending(key, chain, position, current);
    if (after === null) return ending(key, chain, position + 1, next);
    position += 2;
    current = after;
    [next, after] = await Promise.all([fetch(position + 1), fetch(position + 2)]);
  }
}

/**
 * {@link readChain} for many keys at once, for bulk reads (inspection, audits): one `$in` find
 * of the heads, then one `$in` find per step of every chain's walk, instead of a few finds per
 * key (on FerretDB 1.x every find that misses scans the collection). The walk is readChain's.
 * A key whose chain went away while it was read answers `'gone'`, as readChain does.
 */
export async function readChains(
  reader: ChainReader,
  keys: readonly string[],
): Promise<Map<string, Chain | 'gone' | undefined>> {
  const answers = new Map<string, Chain | 'gone' | undefined>(keys.map((key) => [key, undefined]));
  const heads = (await reader.heads.find({ _id: { $in: [...answers.keys()] } }).toArray()) as AnyHead[];
  interface Walk {
    readonly key: string;
    readonly chain: string;
    readonly first: number;
    readonly legacyElement: RecordDoc | undefined;
    position: number;
    restarted: boolean;
  }
  let walks: Walk[] = heads.map((head) => {
    const legacyElement = legacyElementOf(head);
    const first = legacyElement ? 0 : 1;
    return {
      key: head._id,
      chain: chainOf(head),
      first,
      legacyElement,
      position: Math.max(first, head.h ?? first),
      restarted: false,
    };
  });
  while (walks.length > 0) {
    const ids = walks.flatMap((w) => [0, 1, 2].map((d) => elementId(w.chain, w.position + d)));
    const found = new Map<string, RecordDoc>();
    for (const doc of await reader.collection.find({ _id: { $in: ids } }).toArray()) found.set(doc._id, doc);
    const at = (w: Walk, position: number): RecordDoc | null =>
      position === 0 ? (w.legacyElement ?? null) : (found.get(elementId(w.chain, position)) ?? null);
    walks = walks.filter((w) => {
      const [current, next, after] = [at(w, w.position), at(w, w.position + 1), at(w, w.position + 2)];
      if (current === null && w.position > w.first && !w.restarted) {
        // A hint naming a missing element came from a stale writer: start over.
        w.position = w.first;
        w.restarted = true;
        return true;
      }
      if (current === null) {
        answers.set(
          w.key,
          next === null ? { key: w.key, chain: w.chain, position: 0, last: undefined } : 'gone',
        );
      } else if (next === null) {
        answers.set(w.key, ending(w.key, w.chain, w.position, current));
      } else if (after === null) {
        answers.set(w.key, ending(w.key, w.chain, w.position + 1, next));
      } else {
        w.position += 2;
        return true;
      }
      return false;
    });
  }
  return answers;
}

/** Elements fetched per find by {@link readHistory}. */
const HISTORY_PAGE = 16;

/**
 * Every element of the key's chain, first to last (for inspection: `history`), or undefined when
 * the key has no head. Elements are contiguous, so the walk ends at the first one missing; a chain
 * being swept meanwhile reads short.
 */
export async function readHistory(reader: ChainReader, key: string): Promise<RecordDoc[] | undefined> {
  const head = (await reader.heads.findOne({ _id: key })) as AnyHead | null;
  if (head === null) return undefined;
  const chain = chainOf(head);
  const legacyElement = legacyElementOf(head);
  const elements: RecordDoc[] = legacyElement ? [legacyElement] : [];
  for (let from = 1; ; from += HISTORY_PAGE) {
    const ids = Array.from({ length: HISTORY_PAGE }, (_, d) => elementId(chain, from + d));
    const found = new Map<string, RecordDoc>();
    for (const doc of await reader.collection.find({ _id: { $in: ids } }).toArray()) found.set(doc._id, doc);
    for (const id of ids) {
      const doc = found.get(id);
      if (doc === undefined) return elements;
      elements.push(doc);
    }
  }
}

/** The element after `position` (its state only), or null when `position` is the last. */
export function successorOf(
  reader: ChainReader,
  chain: string,
  position: number,
): Promise<Pick<RecordDoc, '_id' | 's'> | null> {
  return reader.collection.findOne({ _id: elementId(chain, position + 1) }, { projection: { s: 1 } });
}

/** Whether the element after `position` exists: if it does, `position` no longer decides anything. */
export async function hasSuccessor(reader: ChainReader, chain: string, position: number): Promise<boolean> {
  return (await successorOf(reader, chain, position)) !== null;
}

/** Whether the key's head still names `chain` (a chain deleted meanwhile, or replaced, does not). */
export async function headNames(reader: ChainReader, key: string, chain: string): Promise<boolean> {
  const head = (await reader.heads.findOne({ _id: key })) as AnyHead | null;
  return head !== null && chainOf(head) === chain;
}

export const isTerminal = (doc: RecordDoc): boolean => doc.s === State.Completed || doc.s === State.Failed;
