/**
 * Reading a key's chain: its head, then its elements from the head's hint to the last one.
 *
 * Every read is by `_id` alone (the only filter FerretDB 1.x pushes down). Elements are contiguous
 * (element i + 1 is inserted only by someone who read element i), and a chain is deleted head
 * first, so a walk that finds element i and not i + 1 has found the last element at that moment.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Collection } from 'mongodb';
import { elementId, type HeadDoc, type RecordDoc, State } from './codec.js';

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
  return head.c ?? legacyChainId(head._id);
}

/**
 * The key's chain, or `undefined` when the key has no head, or when the chain went away while it
 * was being read (deleted by the sweeper: read again).
 */
export async function readChain(reader: ChainReader, key: string): Promise<Chain | 'gone' | undefined> {
  const head = (await reader.heads.findOne({ _id: key })) as AnyHead | null;
  if (head === null) return undefined;
  const chain = chainOf(head);
  const legacy = head.c === undefined;
  const legacyElement: RecordDoc | undefined = legacy
    ? ({ ...(head as unknown as RecordDoc), k: key, c: chain, i: 0 } satisfies RecordDoc)
    : undefined;
  const first = legacy ? 0 : 1;
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
    if (next === null) return { key, chain, position, last: current };
    if (after === null) return { key, chain, position: position + 1, last: next };
    position += 2;
    current = after;
    [next, after] = await Promise.all([fetch(position + 1), fetch(position + 2)]);
  }
}

/** Whether the element after `position` exists: if it does, `position` no longer decides anything. */
export async function hasSuccessor(reader: ChainReader, chain: string, position: number): Promise<boolean> {
  const found = await reader.collection.findOne(
    { _id: elementId(chain, position + 1) },
    { projection: { _id: 1 } },
  );
  return found !== null;
}

/** Whether the key's head still names `chain` (a chain deleted meanwhile, or replaced, does not). */
export async function headNames(reader: ChainReader, key: string, chain: string): Promise<boolean> {
  const head = (await reader.heads.findOne({ _id: key })) as AnyHead | null;
  return head !== null && chainOf(head) === chain;
}

export const isTerminal = (doc: RecordDoc): boolean => doc.s === State.Completed || doc.s === State.Failed;
