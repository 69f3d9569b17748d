/**
 * What the store sends that FerretDB 1.x (SQLite) cannot take: a hundred update statements in
 * flight on one database deadlock it for good, and a `createIndexes` beside such a database stops
 * the whole server. An outside run reached both with three consumers journaling their steps: one
 * process alone had 98-100 updates in flight, and a worker's restart (ensureIndexes) froze every
 * database. Counted here from the driver's command events, on both test servers.
 */
import { type CommandStartedEvent, MongoClient } from 'mongodb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMongoStore } from '../src/store.js';
import { MONGO_SERVERS, openTestDatabase, type TestDatabase } from './helpers.js';

/** A client whose commands are counted: the most update statements in flight at once, by name. */
async function countingClient(url: string) {
  const client = new MongoClient(url, { serverSelectionTimeoutMS: 5000, monitorCommands: true });
  const statements = new Map<number, number>();
  const counts = { inFlight: 0, mostInFlight: 0, started: new Map<string, number>() };
  client.on('commandStarted', (event: CommandStartedEvent) => {
    counts.started.set(event.commandName, (counts.started.get(event.commandName) ?? 0) + 1);
    if (event.commandName !== 'update') return;
    const n = (event.command.updates as unknown[]).length;
    statements.set(event.requestId, n);
    counts.inFlight += n;
    counts.mostInFlight = Math.max(counts.mostInFlight, counts.inFlight);
  });
  const ended = (event: { requestId: number }) => {
    counts.inFlight -= statements.get(event.requestId) ?? 0;
    statements.delete(event.requestId);
  };
  client.on('commandSucceeded', ended);
  client.on('commandFailed', ended);
  await client.connect();
  return { client, counts };
}

describe.each(MONGO_SERVERS)('$name', (server) => {
  let test: TestDatabase;
  let counting: Awaited<ReturnType<typeof countingClient>>;

  beforeAll(async () => {
    test = await openTestDatabase('update_gate', server.url);
    counting = await countingClient(server.url);
  });
  afterAll(async () => {
    await counting?.client.close();
    await test?.drop();
  });

  it('holds its update statements in flight at maxConcurrentUpdates; the others wait their turn', async () => {
    const db = counting.client.db(test.db.databaseName);
    const store = createMongoStore({ db, collectionName: 'gated', maxConcurrentUpdates: 3 });
    const keys = Array.from({ length: 20 }, (_, i) => `k${i}`);
    const begun = await Promise.all(
      keys.map((key) => store.begin({ key, fingerprint: 'fp', owner: 'w', leaseMs: 60_000 })),
    );
    const fences = begun.map((b) => (b.status === 'acquired' ? b.fence : expect.fail(`begun ${b.status}`)));
    counting.counts.mostInFlight = 0;
    // A prefetch window's handlers journaling their steps at once, beside their lease extensions.
    const answers = await Promise.all(
      keys.flatMap((key, i) => [
        store.saveStep(key, fences[i] as number, 'charge', Uint8Array.of(i)),
        store.extend(key, fences[i] as number, 60_000),
      ]),
    );
    expect(answers.every((a) => a === 'ok')).toBe(true);
    expect(counting.counts.mostInFlight).toBeGreaterThan(0);
    expect(counting.counts.mostInFlight).toBeLessThanOrEqual(3);
    await store.close();
  });

  it('ensureIndexes creates only the indexes that are missing: a restart sends no createIndexes', async () => {
    const db = counting.client.db(test.db.databaseName);
    const options = { db, collectionName: 'indexed' };
    const first = createMongoStore(options);
    await first.ensureIndexes();
    const listed = (await db.collection('indexed').listIndexes().toArray()).map((i) => String(i.name));
    expect(listed).toEqual(expect.arrayContaining(['eo_expiry', 'eo_in_progress']));
    const created = counting.counts.started.get('createIndexes') ?? 0;
    await createMongoStore(options).ensureIndexes(); // a worker starting again
    expect(counting.counts.started.get('createIndexes') ?? 0).toBe(created);
    await first.close();
  });
});
