/**
 * `exactly-once outbox pending`: the relay's countPending() over a real collection (FerretDB), as
 * an operator watches a backlog grow and drain.
 */
import { createMongoOutboxSource, outboxFields } from '@exactly-once/store-mongo';
import { MongoClient } from 'mongodb';
import { afterAll, describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';
import { cli, cliJson, cliText } from './helpers.js';

const client = new MongoClient(env.mongoUrl, { serverSelectionTimeoutMS: 5000 });
const db = client.db(uniqueName('eo_cli_outbox').slice(0, 40));
afterAll(async () => {
  await db.dropDatabase();
  await client.close();
});

describe('outbox pending', () => {
  it('counts the documents whose events are not published yet, and fewer once the relay marked some', async () => {
    const orders = db.collection('orders');
    const event = (id: string) => outboxFields(id, [{ destination: 'order-events', body: { id } }]);
    await orders.insertMany([
      { _id: 'o-1' as never, total: 10, ...event('o-1') },
      { _id: 'o-2' as never, total: 20, ...event('o-2') },
      { _id: 'o-3' as never, total: 30, ...event('o-3') },
      { _id: 'o-4' as never, total: 40 }, // no events
    ]);
    const args = [
      'outbox',
      'pending',
      '--mongo',
      env.mongoUrl,
      '--mongo-db',
      db.databaseName,
      '--collection',
    ];
    expect(await cliJson([...args, 'orders'])).toEqual({
      collection: `${db.databaseName}.orders`,
      pending: 3,
    });

    // What the relay does after a confirmed round: mark that document's write published.
    const source = createMongoOutboxSource({ collection: orders });
    const first = await source.scan()[Symbol.asyncIterator]().next();
    if (first.done) throw new Error('no pending entry');
    await source.markPublished([first.value.id]);
    expect(await cliText([...args, 'orders'])).toBe(
      `2 documents of ${db.databaseName}.orders with outbox events the relay has not marked published (not published yet, or published and waiting for their mark)\n`,
    );
    expect(await cliJson([...args, 'missing'])).toMatchObject({ pending: 0 });
  });

  it('reads MongoDB only: a Redis store is a usage error (exit 2)', async () => {
    const r = await cli(['outbox', 'pending', '--redis', env.redisUrl, '--collection', 'orders']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('give --mongo');
  });
});
