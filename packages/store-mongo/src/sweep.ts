/**
 * The sweeper: deletes the chains of keys whose last record expired, or whose last record is a
 * lease abandoned longer than `inProgressTtlMs` (its key never came again), and their blobs.
 *
 * A chain cannot simply be deleted: a worker that read its last element may be about to insert
 * the next one. So the sweeper first inserts a SEALED element after the expired last one; that
 * insert races any such worker on the same `_id`, and only if it wins does the sweeper delete the
 * head (after checking it still names the chain), then the elements in order. A worker whose insert
 * lands in a chain deleted meanwhile finds the head gone or naming another chain, and undoes it
 * (see `append` in store.ts). A blob is deleted only after the last element that names it.
 */
import { type BlobPointer, type BlobStore, CorruptRecordError } from '@exactly-once/core';
import { deleteCollectedBlob } from '@exactly-once/core/spi';
import type { Document, Filter, WithoutId, WriteConcernSettings } from 'mongodb';
import {
  type Chain,
  type ChainReader,
  chainOf,
  isTerminal,
  placeOfRecord,
  readChain,
  successorOf,
} from './chain.js';
import type { StoreClock } from './clock.js';
import { elementId, type HeadDoc, isExpired, type RecordDoc, State } from './codec.js';
import { guarded, isDuplicateKey } from './driver.js';
import type { UpdateGate } from './update-gate.js';

export interface SweepResult {
  /** Documents deleted: heads and elements of swept chains, stray elements. */
  readonly deleted: number;
  /** Blobs deleted (each after the element naming it). */
  readonly blobsDeleted: number;
  /** Keys whose abandoned IN_PROGRESS record was dropped (their documents are in `deleted`). */
  readonly abandoned: number;
  /**
   * Documents left because their key's chain is damaged (see the README, "Damaged records"):
   * they are read again at each round until deleted by hand.
   */
  readonly damaged: number;
}

export interface DismantleContext extends ChainReader {
  readonly write: { readonly writeConcern: WriteConcernSettings };
  readonly blobs?: BlobStore;
  readonly clock: StoreClock;
}

export interface SweepContext extends DismantleContext {
  /** The store's bound on its update statements in flight (see update-gate.ts). */
  readonly updating: UpdateGate;
  readonly batchSize: number;
  readonly sealTimeoutMs: number;
  /** How long past their expiry records (and their blobs) are left: see `expiredGraceMs`. */
  readonly graceMs: number;
  /** How long past its lease end (a released one: its attempt's start) a lease is dropped. */
  readonly inProgressTtlMs: number;
  /** How long after its attempt began a lease followed by a result is cut to a tombstone. */
  readonly finishedLeaseMs: number;
}

const pointerOf = (doc: Pick<RecordDoc, 'b'>): BlobPointer | undefined =>
  doc.b === undefined ? undefined : { uri: doc.b.u, size: doc.b.z, sha256: doc.b.h };

/**
 * Seals `chain` after its last element (expired, or a seal older than `sealTimeoutMs`) and deletes
 * it. Returns the documents and blobs deleted; nothing when another worker appended first.
 */
export async function dismantle(
  context: DismantleContext,
  chain: Chain,
  sealTimeoutMs: number,
): Promise<{ deleted: number; blobsDeleted: number }> {
  const { collection, heads, write, blobs, clock } = context;
  // The seal says when it was set, and another sweeper or a begin takes the chain over once that
  // is sealTimeoutMs ago: read the time now, not when the sweep began (a long sweep's stale time
  // made a seal look abandoned at once, and a begin rebuilt the key while this head delete ran).
  const now = await clock.now();
  const seal = chain.position + 1;
  try {
    await collection.insertOne(
      {
        _id: elementId(chain.chain, seal),
        k: chain.key,
        s: State.Sealed,
        d: now,
        e: new Date(now),
      } as RecordDoc,
      write,
    );
  } catch (error) {
    if (isDuplicateKey(error)) return { deleted: 0, blobsDeleted: 0 };
    throw error;
  }
  let deleted = 0;
  const pointers: BlobPointer[] = [];
  const head = (await heads.findOne({ _id: chain.key })) as (HeadDoc & Pick<RecordDoc, 'b'>) | null;
  // Past half the timeout another sweeper may take this chain over and a new head may follow:
  // leave the head to it rather than risk deleting that one. The delete names the chain too (a
  // previous-layout record, its own head, has none), so a head made meanwhile is not the one deleted.
  if (head !== null && chainOf(head) === chain.chain && (await clock.now()) - now < sealTimeoutMs / 2) {
    const named = head.c === undefined ? { c: { $exists: false } } : { c: chain.chain };
    deleted += (await heads.deleteOne({ _id: chain.key, ...named } as never, write)).deletedCount;
    const pointer = pointerOf(head); // a previous-layout record's own blob
    if (pointer !== undefined) pointers.push(pointer);
  } else if (head !== null && chainOf(head) === chain.chain) {
    return { deleted, blobsDeleted: 0 };
  }
  // In order, so a reader walking the chain meanwhile finds a gap at its start, never its middle.
  for (let position = 1; position <= seal; position++) {
    const id = elementId(chain.chain, position);
    const doc = await collection.findOne({ _id: id }, { projection: { b: 1 } });
    if (doc === null) continue;
    deleted += (await collection.deleteOne({ _id: id }, write)).deletedCount;
    const pointer = pointerOf(doc);
    if (pointer !== undefined) pointers.push(pointer);
  }
  let blobsDeleted = 0;
  if (blobs !== undefined) {
    for (const pointer of pointers) if (await deleteCollectedBlob(blobs, pointer)) blobsDeleted += 1;
  }
  return { deleted, blobsDeleted };
}

export async function sweepExpired(context: SweepContext): Promise<SweepResult> {
  const { sealTimeoutMs, graceMs, inProgressTtlMs, finishedLeaseMs } = context;
  // Elements carrying `e`: COMPLETED, FAILED (tombstones too), SEALED.
  const expired = await sweepEach(
    context,
    (now) => ({ e: { $lte: new Date(now - graceMs) } }),
    { _id: 1, k: 1, s: 1, b: 1 },
    (doc, now) => sweepOne(context, doc, now, sealTimeoutMs),
  );
  // Leases whose attempt began more than `finishedLeaseMs` or `inProgressTtlMs` ago, whichever is
  // shorter (index `eo_in_progress`).
  const leases = await sweepEach(
    context,
    (now) => ({ s: State.InProgress, sa: { $lte: now - Math.min(finishedLeaseMs, inProgressTtlMs) } }),
    { _id: 1, k: 1, sa: 1 },
    (doc, now) => sweepLease(context, doc, now),
  );
  return {
    deleted: expired.deleted + leases.deleted,
    blobsDeleted: expired.blobsDeleted + leases.blobsDeleted,
    abandoned: leases.abandoned,
    damaged: expired.damaged + leases.damaged,
  };
}

/** What sweeping one document did; `kept`: left as it was, so not read again in this sweep. */
interface Swept {
  readonly deleted: number;
  readonly blobsDeleted: number;
  readonly kept: boolean;
  /** An abandoned lease's chain was deleted. */
  readonly abandoned?: boolean;
}

/** Sweeps `filter`'s documents a batch at a time, each once per sweep; sums what was done. */
async function sweepEach(
  context: SweepContext,
  filter: (now: number) => Filter<RecordDoc>,
  projection: Document,
  sweep: (doc: RecordDoc, now: number) => Promise<Swept>,
): Promise<SweepResult> {
  const { collection, clock, batchSize } = context;
  let deleted = 0;
  let blobsDeleted = 0;
  let abandoned = 0;
  let damaged = 0;
  const seen = new Set<string>();
  for (;;) {
    const now = await guarded('sweep', () => clock.now());
    const docs = await guarded('sweep', () =>
      collection
        .find({ ...filter(now), _id: { $nin: [...seen] } }, { projection, limit: batchSize })
        .toArray(),
    );
    if (docs.length === 0) break;
    for (const doc of docs) {
      let swept: Swept;
      try {
        swept = await guarded('sweep', () => sweep(doc, now));
      } catch (error) {
        // One damaged chain must not fail every round (the documents after it never swept).
        if (!(error instanceof CorruptRecordError)) throw error;
        damaged += 1;
        seen.add(doc._id);
        continue;
      }
      deleted += swept.deleted;
      blobsDeleted += swept.blobsDeleted;
      if (swept.abandoned) abandoned += 1;
      // Left as it was (its chain busy, a young seal, a live lease): not again in this sweep.
      if (swept.kept) seen.add(doc._id);
    }
    if (docs.length < batchSize) break;
  }
  return { deleted, blobsDeleted, abandoned, damaged };
}

/**
 * One lease whose attempt began more than `finishedLeaseMs` (or `inProgressTtlMs`) before `now`: a
 * finished attempt's (it has a successor: a result's lease becomes a tombstone, another lease's
 * loses its `sa`, so no later sweep and no stuck-work query reads it again), a stray (its chain
 * deleted: it goes), or the last of its chain, abandoned when its lease ended (or, released, its
 * attempt began) more than `inProgressTtlMs` ago: then the chain is sealed and deleted like an
 * expired one, and a run that died on a key that never comes again does not keep its record for
 * ever.
 */
async function sweepLease(context: SweepContext, doc: RecordDoc, now: number): Promise<Swept> {
  const { collection, write, sealTimeoutMs, inProgressTtlMs, updating } = context;
  const cutoff = now - inProgressTtlMs;
  const { chain: chainId, position } = placeOfRecord(doc);
  const finished = async (successor: Pick<RecordDoc, 's'>): Promise<Swept> => {
    // Only an element (not a previous-layout head) followed by a result: a lease's successor may
    // still be copying its steps (`catchUp` in store.ts).
    if (doc.k !== undefined && isTerminal(successor as RecordDoc)) {
      // The _id alone (see isTombstone): a replacement keeps only that. Filtered by _id alone
      // (an element's state never changes; a filter on more fields scans on some servers).
      const tombstone = {} as WithoutId<RecordDoc>;
      await updating(1, () => collection.replaceOne({ _id: doc._id }, tombstone, write));
    } else {
      await updating(1, () => collection.updateOne({ _id: doc._id }, { $unset: { sa: '' } }, write));
    }
    return { deleted: 0, blobsDeleted: 0, kept: false };
  };
  // Most leases found are finished attempts': one read by _id tells, without the chain's walk.
  const successor = await successorOf(context, chainId, position);
  if (successor !== null) return finished(successor);
  if ((doc.sa ?? 0) > cutoff) return KEPT; // unfinished, and not yet old enough to be abandoned
  const chain = await readChain(context, doc.k ?? doc._id); // a previous-layout record is its own head
  if (chain === 'gone') return KEPT;
  if (chain === undefined || chain.chain !== chainId) {
    if (doc.k === undefined) return KEPT;
    const removed = (await collection.deleteOne({ _id: doc._id, s: State.InProgress }, write)).deletedCount;
    return { deleted: removed, blobsDeleted: 0, kept: false };
  }
  if (chain.position > position) {
    // Its successor came after the first read.
    const late = await successorOf(context, chainId, position);
    return late === null ? KEPT : finished(late);
  }
  const last = chain.last;
  // Read again with the chain: a holder still extending its lease keeps it.
  if (last?.s !== State.InProgress || Math.max(last.l ?? 0, last.sa ?? 0) > cutoff) return KEPT;
  const swept = await dismantle(context, chain, sealTimeoutMs);
  // Nothing deleted: another worker appended first.
  return { ...swept, kept: swept.deleted === 0, abandoned: swept.deleted > 0 };
}

const KEPT = { deleted: 0, blobsDeleted: 0, kept: true } as const;

/** One expired element: the last of its chain (dismantle it), a stray, or an older record. */
async function sweepOne(
  context: SweepContext,
  doc: RecordDoc,
  now: number,
  sealTimeoutMs: number,
): Promise<Swept> {
  const { collection, write, blobs, updating } = context;
  const key = doc.k ?? doc._id; // a previous-layout record is its own head
  const { chain: chainId, position } = placeOfRecord(doc);
  const chain = await readChain(context, key);
  if (chain === 'gone') return KEPT;
  if (chain === undefined || chain.chain !== chainId) {
    // A stray: written into a chain deleted since (a stalled worker's late insert).
    if (doc.k === undefined) return KEPT;
    const removed = (await collection.deleteOne({ _id: doc._id }, write)).deletedCount;
    const pointer = pointerOf(doc);
    if (removed === 1 && pointer !== undefined && blobs !== undefined) {
      const found = await deleteCollectedBlob(blobs, pointer);
      return { deleted: removed, blobsDeleted: found ? 1 : 0, kept: false };
    }
    return { deleted: removed, blobsDeleted: 0, kept: false };
  }
  const last = chain.last;
  if (last === undefined) return KEPT;
  if (last.s === State.Sealed) {
    // Sealed by a sweeper that died, or is still at work: take over only after the timeout.
    if (now - (last.d ?? 0) < sealTimeoutMs) return KEPT;
    return { ...(await dismantle(context, chain, sealTimeoutMs)), kept: false };
  }
  if (chain.position === position && isExpired(last, now)) {
    return { ...(await dismantle(context, chain, sealTimeoutMs)), kept: false };
  }
  if (chain.position > position && doc.s !== State.Sealed) {
    // An older record of a key used again since: it stays (the chain must have no gaps) until the
    // whole chain goes, but the sweeper need not look at it again.
    await updating(1, () => collection.updateOne({ _id: doc._id }, { $unset: { e: '' } }, write));
    return { deleted: 0, blobsDeleted: 0, kept: false };
  }
  return KEPT;
}
