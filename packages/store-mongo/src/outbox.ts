/**
 * A transactional outbox in your own documents: the events of a state change are written in the
 * same document write as the state (one insert or update of one document is atomic on every
 * MongoDB-wire server, transactions or not), and core's `createOutboxRelay` publishes them.
 *
 * A document with pending events carries `eo_outbox` (the messages, in publish order),
 * `eo_pending` (when they were written: the relay's reading order) and `eo_write` (a token unique
 * to that write). The relay reads pending documents oldest first and, after the broker confirmed
 * their messages, unsets both on the condition that the token and the time are still those it read.
 */
import { randomBytes } from 'node:crypto';
import {
  ConfigError,
  Headers,
  MalformedMessageError,
  normalizeKey,
  type OutboxEntry,
  type OutboxSource,
  UnencodableValueError,
} from '@exactly-once/core';
import { encodeValue, injectContext } from '@exactly-once/core/spi';
import { context } from '@opentelemetry/api';
import { type Binary, BSON, type Collection, type Db, type Document } from 'mongodb';
import { fromBinary, toBinary } from './codec.js';
import { commandParts, reopenAfterFailedConnect } from './driver.js';

export const OUTBOX_FIELD = 'eo_outbox';
export const PENDING_FIELD = 'eo_pending';
export const WRITE_FIELD = 'eo_write';

/** An event to publish with the document. */
export interface OutboxMessageInput {
  /** Topic, queue or exchange. */
  destination: string;
  /** Kafka partition key or RabbitMQ routing key: give one key's events the same one to keep their order. */
  key?: string;
  /** JSON value, string or bytes. */
  body: unknown;
  /**
   * The message's idempotency key (`x-idempotency-key`), what consumers deduplicate by. It must
   * be the same if this event is ever written again. @defaultValue `<document id>/<position>`
   */
  id?: string;
  headers?: Readonly<Record<string, string>>;
}

/** One event as `outboxFields` writes it in `eo_outbox` (short names; read by the relay). */
export interface OutboxMessageDoc {
  i: string;
  d: string;
  k?: string;
  b: Binary;
  h: string[];
}

export interface OutboxFieldsOptions {
  /** `x-request-id` of the events. @defaultValue the document id */
  requestId?: string;
}

/**
 * The fields to write with the document, in the same `insertOne` (or `$set` of the same
 * `updateOne`). The current trace context is propagated with the events.
 *
 * @example
 * ```ts
 * await orders.insertOne({ _id: order.id, ...order, ...outboxFields(order.id, [
 *   { destination: 'order-events', key: order.id, body: { type: 'OrderCreated', order } },
 * ]) });
 * ```
 */
export function outboxFields(
  documentId: string | number | { toString(): string },
  messages: readonly OutboxMessageInput[],
  options: OutboxFieldsOptions = {},
): { [OUTBOX_FIELD]: OutboxMessageDoc[]; [PENDING_FIELD]: number; [WRITE_FIELD]: string } {
  const docId = String(documentId);
  const requestId = options.requestId ?? docId;
  const trace = injectContext(context.active(), {});
  const ids = new Set<string>();
  return {
    [OUTBOX_FIELD]: messages.map((m, position) => {
      // Refused here, at the write, rather than published to be dead-lettered by every consumer,
      // or written in a shape the relay refuses for ever (holding up every event behind it).
      const event = `event ${position} of document ${docId}`;
      if (m.body === undefined) throw new UnencodableValueError(event, 'its body is undefined');
      if (typeof m.destination !== 'string' || m.destination === '') {
        throw new ConfigError(`${event}: destination must be a non-empty string`);
      }
      if (m.key !== undefined && typeof m.key !== 'string')
        throw new ConfigError(`${event}: key must be a string`);
      for (const [name, value] of Object.entries(m.headers ?? {})) {
        if (typeof value !== 'string') throw new ConfigError(`${event}: header ${name} must be a string`);
      }
      const { bytes, contentType } = encodeValue(m.body);
      const id = m.id ?? `${docId}/${position}`;
      normalizeKey(id); // InvalidKeyError for an id no consumer would take (empty, not UTF-8)
      // Two events under one id: the second would be IDEMPOTENCY_KEY_REUSE at every consumer.
      if (ids.has(id))
        throw new ConfigError(`${event}: id ${JSON.stringify(id)} is used twice in this write`);
      ids.add(id);
      const headers: Record<string, string> = {
        'content-type': contentType,
        ...m.headers,
        ...trace,
        [Headers.RequestId]: requestId,
        [Headers.IdempotencyKey]: id,
      };
      return {
        i: id,
        d: m.destination,
        ...(m.key === undefined ? {} : { k: m.key }),
        b: toBinary(bytes),
        h: Object.entries(headers).flat(),
      };
    }),
    [PENDING_FIELD]: Date.now(),
    // Tells this write from any other of the document (two in one millisecond have the same
    // `eo_pending`): marking unsets only the write that was published.
    [WRITE_FIELD]: randomBytes(12).toString('base64url'),
  };
}

export interface MongoOutboxSourceOptions<TSchema extends Document = Document> {
  /** The collection your documents (and their `eo_outbox`) live in, typed as you keep it. */
  collection: Collection<TSchema>;
  /**
   * Documents per read. Each read is one complete query (no cursor stays open while the relay
   * publishes and marks: FerretDB 1.x stalls every writer while a cursor is open). A read on a
   * server without the index scans the collection, so fewer, larger pages are faster there.
   * @defaultValue 10000
   */
  pageSize?: number;
}

export interface MongoOutboxSource extends OutboxSource {
  /** Creates the sparse index on `eo_pending` that makes reading pending documents cheap. */
  ensureIndexes(): Promise<void>;
}

/** The relay's source over `collection`; see {@link outboxFields}. */
export function createMongoOutboxSource<TSchema extends Document = Document>(
  options: MongoOutboxSourceOptions<TSchema>,
): MongoOutboxSource {
  // Only the outbox fields and `_id` are read and written: the schema of the rest is yours.
  const collection = options.collection as unknown as Collection<Document>;
  const pageSize = options.pageSize ?? 10_000;
  // 0 is "no limit" to MongoDB and made an empty page look full (a pass that never ended); a
  // negative or fractional limit is not a page size either.
  if (!(Number.isInteger(pageSize) && pageSize > 0))
    throw new ConfigError(`pageSize must be an integer > 0 (got ${pageSize})`);
  // An entry is one write of one document: its id names the document (which keeps its own `_id`
  // type: ObjectId, number, string) and the write's token. A document rewritten with new events
  // after a read is a new entry, published in turn, and marking one write never unsets another.
  // (A document written by an earlier version has no token: its `eo_pending` stands in for it.)
  const read = new Map<string, { _id: unknown; condition: Document }>();
  const pending = { [PENDING_FIELD]: { $exists: true } };
  // One server call at a time per source: a page read and the marking writes of one relay share
  // FerretDB 1.x's connection pool (see commandParts); overlapping, they were seen to stall it.
  let queue: Promise<unknown> = Promise.resolve();
  // A relay started while the server was down: its client is opened again (see reopenAfterFailedConnect).
  const client = (collection as { db?: Db }).db?.client;
  const serial = <T>(call: () => Promise<T>): Promise<T> => {
    const result = queue.then(call, call);
    queue = result.catch((error: unknown) => reopenAfterFailedConnect(client, error));
    return result;
  };

  return {
    async ensureIndexes() {
      await serial(() =>
        collection.createIndex({ [PENDING_FIELD]: 1, _id: 1 }, { name: 'eo_outbox_pending', sparse: true }),
      );
    },
    async *scan() {
      // Pages in (eo_pending, _id) order: the next page starts at the last page's eo_pending,
      // and the documents already read at exactly that value are dropped by id. Not skipped by
      // count: the relay marks documents while it reads, and a marked one no longer matches, so
      // a count would skip as many unread documents instead. The next page is read while the
      // relay publishes this one.
      let after: number | undefined;
      let readAtAfter = new Set<string>();
      // A page's limit counts the documents read at `after` that it may return again.
      const fetch = (from: number | undefined, limit: number) =>
        serial(() =>
          collection
            .find(from === undefined ? pending : { [PENDING_FIELD]: { $gte: from } }, {
              projection: { [OUTBOX_FIELD]: 1, [PENDING_FIELD]: 1, [WRITE_FIELD]: 1 },
              sort: { [PENDING_FIELD]: 1, _id: 1 },
              limit,
              batchSize: limit,
              singleBatch: true,
            })
            .toArray(),
        );
      let limit = pageSize;
      let next = fetch(after, limit);
      for (;;) {
        const page = await next;
        const entries: OutboxEntry[] = [];
        for (const doc of page) {
          const stamp = doc[PENDING_FIELD] as number;
          const token = doc[WRITE_FIELD] as string | undefined;
          // The token and the time both: a writer of the earlier version (no eo_write) appends
          // its events with a new eo_pending and leaves the token of the last write in place, so
          // the token alone would name (and its mark unset) a write the relay never read.
          const id = `${typeof doc._id}:${idText(doc._id)}@${token === undefined ? stamp : `${token}@${stamp}`}`;
          if (stamp === after && readAtAfter.has(id)) continue;
          read.set(id, {
            _id: doc._id,
            condition:
              token === undefined
                ? { [PENDING_FIELD]: stamp }
                : { [WRITE_FIELD]: token, [PENDING_FIELD]: stamp },
          });
          if (stamp !== after) {
            after = stamp;
            readAtAfter = new Set();
          }
          readAtAfter.add(id);
          entries.push({ id, messages: decodeMessages(doc._id, doc[OUTBOX_FIELD]) });
        }
        const more = page.length === limit;
        if (more) {
          limit = pageSize + readAtAfter.size;
          next = fetch(after, limit);
          // Not awaited if the relay stops reading first.
          next.catch(() => {});
        }
        yield* entries;
        if (!more) return;
      }
    },
    async markPublished(entryIds) {
      const ops = entryIds.flatMap((id) => {
        const entry = read.get(id);
        if (entry === undefined) return [];
        const filter = { _id: entry._id, ...entry.condition };
        return [{ updateOne: { filter, update: { $unset: { [PENDING_FIELD]: '', [WRITE_FIELD]: '' } } } }];
      });
      // Each part takes its turn: a page read waits for one part, not for all of them.
      for (const part of commandParts(ops)) {
        await serial(() => collection.bulkWrite(part as never, { ordered: false }));
      }
      for (const id of entryIds) read.delete(id);
    },
    countPending: () => serial(() => collection.countDocuments(pending)),
  };
}

/**
 * An `_id` as text that tells it from every other `_id`: `String()` of a compound `_id` is
 * "[object Object]" for all of them (and of a Date, its second), so an object is written out in
 * canonical extended JSON (an ObjectId keeps its hex form).
 */
function idText(id: unknown): string {
  if (typeof id !== 'object' || id === null) return String(id);
  if ((id as { _bsontype?: unknown })._bsontype === 'ObjectId') return String(id);
  return BSON.EJSON.stringify(id as Document, { relaxed: false });
}

/**
 * The events of a pending document. Anything `outboxFields` does not write (a field written by
 * hand, another program's document) is a MalformedMessageError naming the document: the relay
 * logs it and retries, never publishes half of it or marks it published.
 */
function decodeMessages(docId: unknown, value: unknown): OutboxEntry['messages'] {
  const malformed = (what: string) =>
    new MalformedMessageError(`outbox document ${String(docId)}: ${what} (write it with outboxFields)`);
  if (!Array.isArray(value)) throw malformed(`${OUTBOX_FIELD} is not an array`);
  for (const [n, m] of (value as unknown[]).entries()) {
    const e = m as Partial<Record<keyof OutboxMessageDoc, unknown>> | null;
    const valid =
      typeof e === 'object' &&
      e !== null &&
      typeof e.i === 'string' &&
      typeof e.d === 'string' &&
      (e.k === undefined || typeof e.k === 'string') &&
      (e.b as Binary | undefined)?._bsontype === 'Binary' &&
      Array.isArray(e.h) &&
      e.h.length % 2 === 0 &&
      e.h.every((h) => typeof h === 'string');
    if (!valid) throw malformed(`event ${n} is not an event outboxFields wrote`);
  }
  return (value as OutboxMessageDoc[]).map((m) => {
    const headers: Record<string, string> = {};
    for (let i = 0; i + 1 < m.h.length; i += 2) headers[m.h[i] as string] = m.h[i + 1] as string;
    return {
      id: m.i,
      destination: m.d,
      ...(m.k === undefined ? {} : { routingKey: m.k }),
      body: fromBinary(m.b),
      headers,
    };
  });
}
