/**
 * The document outbox on both local MongoDB-wire servers, published to the real Kafka by the
 * relay: every event once and in order per document; a document rewritten with a new event after
 * the relay read it stays pending and its new event is published too.
 */
import {
  ConfigError,
  createOutboxRelay,
  InvalidKeyError,
  MalformedMessageError,
  UnencodableValueError,
} from '@exactly-once/core';
import { createProducer } from '@exactly-once/kafka';
import { createMongoOutboxSource, outboxFields, PENDING_FIELD, WRITE_FIELD } from '@exactly-once/store-mongo';
import { Kafka, logLevel } from 'kafkajs';
import { type Collection, type Document, MongoClient } from 'mongodb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';

const servers = [
  ['FerretDB', env.mongoUrl],
  ['mongo-java-server', env.mongoJavaUrl],
] as const;
const quiet = { debug() {}, info() {}, warn() {}, error() {} };
// FerretDB 1.x scans its table for every update by _id: marking 150 documents took 3 s on a quiet
// machine and 44 s beside the crash matrices of a full test run.
const SLOW_SERVER_MS = 180_000;
const kafka = new Kafka({
  clientId: 'outbox-relay-test',
  brokers: [...env.kafkaBrokers],
  logLevel: logLevel.NOTHING,
});

async function newTopic(): Promise<string> {
  const topic = uniqueName('outbox');
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic, numPartitions: 2 }], waitForLeaders: true });
  await admin.disconnect();
  return topic;
}

/** Every record of the topic as `<idempotency key>`, per partition in offset order. */
async function readAll(topic: string, expected: number): Promise<string[]> {
  const keys: string[] = [];
  const consumer = kafka.consumer({ groupId: uniqueName('outbox-read') });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  await new Promise<void>((resolve, reject) => {
    consumer
      .run({
        eachMessage: async ({ message }) => {
          keys.push(String(message.headers?.['x-idempotency-key']));
          if (keys.length >= expected) resolve();
        },
      })
      .catch(reject);
  });
  await consumer.disconnect();
  return keys;
}

describe.each(servers)('document outbox on %s, relayed to Kafka', (_name, url) => {
  let mongo: MongoClient;
  let orders: Collection<Document>;
  beforeAll(async () => {
    mongo = new MongoClient(url);
    await mongo.connect();
    orders = mongo.db('outbox_test').collection(uniqueName('orders'));
  });
  afterAll(async () => {
    await orders.drop().catch(() => {});
    await mongo.close();
  });

  it(
    "publishes each document's events once, in order, and marks the documents",
    async () => {
      // Prepare
      const topic = await newTopic();
      const docs = Array.from({ length: 150 }, (_, i) => ({
        _id: `o-${i}` as never,
        amount: i,
        ...outboxFields(`o-${i}`, [
          { destination: topic, key: `o-${i}`, body: { type: 'Created', n: i } },
          { destination: topic, key: `o-${i}`, body: { type: 'Priced', n: i } },
        ]),
      }));
      await orders.insertMany(docs);
      const source = createMongoOutboxSource({ collection: orders, pageSize: 40 });
      await source.ensureIndexes();
      const producer = createProducer({ kafka });
      const relay = createOutboxRelay({
        source,
        publisher: producer,
        window: { initial: 16, max: 64 },
        logger: quiet,
      });
      // Act
      relay.start();
      await relay.drained();
      await relay.stop();
      await producer.disconnect();
      // Assess
      const keys = await readAll(topic, 300);
      expect(keys).toHaveLength(300);
      expect(new Set(keys).size).toBe(300);
      for (let i = 0; i < 150; i++) expect(keys.indexOf(`o-${i}/0`)).toBeLessThan(keys.indexOf(`o-${i}/1`));
      expect(relay.stats().maxInFlight).toBeLessThanOrEqual(64);
      expect(await orders.countDocuments({ [PENDING_FIELD]: { $exists: true } })).toBe(0);
    },
    SLOW_SERVER_MS,
  );

  it('a pass reads every pending document even when documents it already passed are marked meanwhile', async () => {
    // Prepare: six pending documents, read two per page. The first pass confirms them all; the
    // relay marks them while its next pass reads, here the last document of the second page
    // just before the third page is read.
    const topic = 'unused';
    const ids = ['p-0', 'p-1', 'p-2', 'p-3', 'p-4', 'p-5'];
    for (const id of ids) {
      await orders.insertOne({
        _id: id as never,
        ...outboxFields(id, [{ destination: topic, body: { id } }]),
      });
    }
    const source = createMongoOutboxSource({ collection: orders, pageSize: 2 });
    const first: string[] = [];
    for await (const entry of source.scan()) first.push(entry.id);
    // Act
    const second: string[] = [];
    for await (const entry of source.scan()) {
      second.push(entry.id);
      if (second.length === 2) await source.markPublished([first[3] as string]);
    }
    // Assess: every document still pending when the pass read its page is in the pass.
    expect(first).toHaveLength(6);
    expect(second).toEqual(first);
    await source.markPublished(first);
  });

  it('documents written with one eo_pending value (two writers in one millisecond) are each read once', async () => {
    // Prepare: five documents with the same stamp, more than a page.
    const ids = ['s-0', 's-1', 's-2', 's-3', 's-4'];
    const stamp = Date.now();
    for (const id of ids) {
      const fields = outboxFields(id, [{ destination: 'unused', body: { id } }]);
      await orders.insertOne({ _id: id as never, ...fields, [PENDING_FIELD]: stamp });
    }
    const source = createMongoOutboxSource({ collection: orders, pageSize: 2 });
    // Act
    const read: string[] = [];
    for await (const entry of source.scan()) if (entry.id.startsWith('string:s-')) read.push(entry.id);
    // Assess
    expect(read.map((id) => id.split('@')[0])).toEqual(ids.map((id) => `string:${id}`));
    await source.markPublished(read);
  });

  it('a document rewritten with a new event after the relay read it stays pending, and the new event goes out', async () => {
    // Prepare: the relay reads o-x, then the service adds an event before the relay marks it.
    const topic = await newTopic();
    await orders.insertOne({
      _id: 'x-1' as never,
      ...outboxFields('x-1', [{ destination: topic, key: 'x-1', body: { type: 'Created' } }]),
    });
    const source = createMongoOutboxSource({ collection: orders });
    const entries = [];
    for await (const entry of source.scan()) entries.push(entry);
    const rewrite = outboxFields('x-1', [
      { destination: topic, key: 'x-1', body: { type: 'Created' } },
      { destination: topic, key: 'x-1', body: { type: 'Cancelled' } },
    ]);
    await orders.updateOne({ _id: 'x-1' as never }, { $set: rewrite });
    // Act
    await source.markPublished(entries.map((e) => e.id));
    // Assess
    expect(await orders.countDocuments({ _id: 'x-1' as never, [PENDING_FIELD]: { $exists: true } })).toBe(1);
    const producer = createProducer({ kafka });
    const relay = createOutboxRelay({ source, publisher: producer, logger: quiet });
    relay.start();
    await relay.drained();
    await relay.stop();
    await producer.disconnect();
    expect(await readAll(topic, 2)).toEqual(['x-1/0', 'x-1/1']);
  });

  it('a document rewritten after its first events were confirmed, before they were marked, has its new events published', async () => {
    // Before: the re-read document had the same entry id, so the relay skipped it as confirmed,
    // and the marking of the first events unset the new write's eo_pending: `o/paid` was lost.
    await orders.insertOne({
      _id: 'r-1' as never,
      state: 'created',
      ...outboxFields('r-1', [
        { destination: 'unused', key: 'r-1', body: { type: 'Created' }, id: 'r-1/created' },
      ]),
    });
    const inner = createMongoOutboxSource({ collection: orders });
    // Marking that takes a while (a slow server, a retry): the next pass reads the document first.
    const source = {
      ...inner,
      markPublished: async (ids: readonly string[]) => {
        await new Promise((resolve) => setTimeout(resolve, 300));
        await inner.markPublished(ids);
      },
    };
    const published: string[] = [];
    const publisher = {
      async publish(messages: readonly { id: string }[]) {
        published.push(...messages.map((m) => m.id));
        if (published.length > 1) return;
        // The service pays the order: a new event, appended in the same write as the state.
        const before = (await orders.findOne({ _id: 'r-1' as never })) as Document;
        const paid = outboxFields('r-1', [
          { destination: 'unused', key: 'r-1', body: { type: 'Paid' }, id: 'r-1/paid' },
        ]);
        await orders.updateOne(
          { _id: 'r-1' as never },
          { $set: { state: 'paid', ...paid, eo_outbox: [...before.eo_outbox, ...paid.eo_outbox] } },
        );
      },
    };
    const relay = createOutboxRelay({ source, publisher, idleDelayMs: 20, logger: quiet });
    relay.start();
    for (let i = 0; i < 100 && !published.includes('r-1/paid'); i++)
      await new Promise((r) => setTimeout(r, 50));
    await relay.drained();
    await relay.stop();
    expect(published).toContain('r-1/paid');
    expect(published.indexOf('r-1/created')).toBeLessThan(published.lastIndexOf('r-1/paid'));
    expect(await orders.countDocuments({ _id: 'r-1' as never, [PENDING_FIELD]: { $exists: true } })).toBe(0);
  });

  it(
    'marks more confirmed documents at once than one FerretDB update command can hold',
    async () => {
      // Before: marks went out in bulks of 100 updates. FerretDB 1.x keeps each statement's read
      // open (one pooled SQLite connection) until its command ends, and a database has 100: a bulk
      // of 100 waited for a connection for ever, and every later call on the database with it.
      // A collection of its own: FerretDB scans the whole collection for each update by _id.
      const batch = mongo.db('outbox_test').collection(uniqueName('marks'));
      const ids = Array.from({ length: 120 }, (_, i) => `b-${i}`);
      await batch.insertMany(
        ids.map((id) => ({
          _id: id as never,
          ...outboxFields(id, [{ destination: 'unused', body: { id } }]),
        })),
      );
      // Typed as an application keeps its collection: the source takes it as it is.
      const source = createMongoOutboxSource({
        collection: batch as unknown as Collection<{ _id: string; total: number }>,
      });
      const entries: string[] = [];
      for await (const entry of source.scan()) entries.push(entry.id);
      // Act
      await source.markPublished(entries);
      // Assess
      expect(entries).toHaveLength(120);
      expect(await batch.countDocuments({ [PENDING_FIELD]: { $exists: true } })).toBe(0);
      await batch.drop();
    },
    SLOW_SERVER_MS,
  );

  it('a document whose outbox fields were not written by outboxFields is refused by name, not published or marked', async () => {
    // Before: an event of the wrong shape failed every round with a TypeError, and an `eo_outbox`
    // that is not an array was marked published without a word.
    const source = createMongoOutboxSource({ collection: orders });
    const cases = [
      { _id: 'h-1', eo_outbox: [{ i: 5, d: null, b: 'str', h: 7 }] },
      { _id: 'h-2', eo_outbox: 'not events' },
    ];
    for (const doc of cases) {
      await orders.insertOne({ ...doc, [PENDING_FIELD]: 1 } as never);
      const read = async () => {
        for await (const _ of source.scan());
      };
      await expect(read()).rejects.toThrow(MalformedMessageError);
      await expect(read()).rejects.toThrow(doc._id);
      await orders.deleteOne({ _id: doc._id as never });
    }
  });

  it('outboxFields refuses an event that no consumer could take: an empty id, an undefined body', () => {
    expect(() => outboxFields('d-1', [{ destination: 'd', id: '', body: {} }])).toThrow(InvalidKeyError);
    expect(() => outboxFields('d-1', [{ destination: 'd', body: undefined }])).toThrow(UnencodableValueError);
  });

  it.each([
    ['an empty destination', [{ destination: '', body: {} }], /destination must be a non-empty string/],
    ['a number as key', [{ destination: 'd', key: 7, body: {} }], /key must be a string/],
    [
      'a number as header value',
      [{ destination: 'd', headers: { n: 5 }, body: {} }],
      /header n must be a string/,
    ],
    [
      'one id twice',
      [
        { destination: 'd', id: 'e-1', body: { a: 1 } },
        { destination: 'd', id: 'e-1', body: { a: 2 } },
      ],
      /"e-1" is used twice/,
    ],
  ])(
    'outboxFields refuses %s at the write (the relay refused it for ever, holding up what came after)',
    (_, events, message) => {
      expect(() => outboxFields('d-2', events as never)).toThrow(message);
    },
  );

  it('two writes of one document in the same millisecond: marking the first leaves the second pending', async () => {
    // Before: both had the same eo_pending (its sub-millisecond part rounds away), so the
    // conditional $unset of the first write also cleared the second's, and its events were lost.
    const first = outboxFields('m-1', [{ destination: 'unused', body: { n: 1 } }]);
    await orders.insertOne({ _id: 'm-1' as never, ...first });
    const source = createMongoOutboxSource({ collection: orders });
    const entries: string[] = [];
    for await (const entry of source.scan()) if (entry.id.startsWith('string:m-1')) entries.push(entry.id);
    const second = outboxFields('m-1', [{ destination: 'unused', body: { n: 2 } }]);
    await orders.updateOne(
      { _id: 'm-1' as never },
      { $set: { ...second, [PENDING_FIELD]: first[PENDING_FIELD] } },
    );
    await source.markPublished(entries);
    expect(await orders.countDocuments({ _id: 'm-1' as never, [PENDING_FIELD]: { $exists: true } })).toBe(1);
  });
  /** A collection of its own, dropped after `use`: a test that counts what is pending. */
  async function alone(label: string, use: (collection: Collection<Document>) => Promise<void>) {
    const collection = mongo.db('outbox_test').collection(uniqueName(label));
    try {
      await use(collection);
    } finally {
      await collection.drop().catch(() => {});
    }
  }

  it("an earlier version's writer appending an event after the relay read the document: the event stays pending", () =>
    // Releases run beside each other (a rolling deploy); a writer of the earlier version knows no
    // eo_write: it sets eo_pending and pushes its event, leaving the last write's token in place.
    // Before, the mark of the write the relay read matched that token and unset the document:
    // the appended event was never published.
    alone('rolling', async (collection) => {
      const created = outboxFields('o-1', [
        { destination: 'events', id: 'o-1/created', body: { t: 'created' } },
      ]);
      await collection.insertOne({ _id: 'o-1' as never, status: 'new', ...created });
      const source = createMongoOutboxSource({ collection });
      const read: string[] = [];
      for await (const entry of source.scan()) read.push(entry.id);
      expect(read).toHaveLength(1);
      const shipped = outboxFields('o-1', [
        { destination: 'events', id: 'o-1/shipped', body: { t: 'shipped' } },
      ]);
      await collection.updateOne({ _id: 'o-1' as never }, {
        $set: { status: 'shipped', [PENDING_FIELD]: created[PENDING_FIELD] + 1 },
        $push: { eo_outbox: { $each: shipped.eo_outbox } },
      } as never);
      await source.markPublished(read);
      expect(await source.countPending()).toBe(1);
      const next: string[] = [];
      for await (const entry of source.scan()) next.push(...entry.messages.map((m) => m.id));
      expect(next).toContain('o-1/shipped');
    }));

  it("an earlier version's documents with compound _ids, written in one millisecond, are each read", () =>
    // Before, both were named "object:[object Object]@<eo_pending>": the second was skipped as
    // read already, on every pass, and stayed pending for ever.
    alone('legacy_ids', async (collection) => {
      const legacy = (id: { tenant: string; order: number }) => {
        const { [WRITE_FIELD]: _token, ...fields } = outboxFields(`${id.tenant}/${id.order}`, [
          { destination: 'events', body: { id } },
        ]);
        return { _id: id, ...fields, [PENDING_FIELD]: 1_700_000_000_000 } as unknown as Document;
      };
      await collection.insertMany([legacy({ tenant: 't1', order: 1 }), legacy({ tenant: 't1', order: 2 })]);
      const read: string[] = [];
      for await (const entry of createMongoOutboxSource({ collection }).scan()) {
        read.push(entry.messages[0]?.headers['x-idempotency-key'] ?? '');
      }
      expect(read.sort()).toEqual(['t1/1/0', 't1/2/0']);
    }));

  it('refuses a pageSize that is not a whole number above 0 (0 is "no limit" to MongoDB: a pass never ended)', () => {
    for (const pageSize of [0, -1, 1.5]) {
      expect(() => createMongoOutboxSource({ collection: orders, pageSize })).toThrow(ConfigError);
    }
  });
});
