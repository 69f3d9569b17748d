/**
 * claimFingerprint (the payload guard's store operation) on the real server (FerretDB by default),
 * and the guard in the pipeline on it.
 */
import { createProcessor, Headers, type Logger } from '@exactly-once/core';
import { describeFingerprintClaimConformance } from '@exactly-once/core/testing';
import { MongoClient } from 'mongodb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMongoStore, type MongoProcessedStore } from '../src/index.js';
import { MONGO_SERVERS, openTestDatabase, type TestDatabase } from './helpers.js';

for (const server of MONGO_SERVERS) {
  describeFingerprintClaimConformance(`mongo (${server.name})`, async () => {
    const test = await openTestDatabase('fpclaim', server.url);
    const store = createMongoStore({ db: test.db });
    await store.ensureIndexes();
    return {
      store,
      teardown: async () => {
        await store.close();
        await test.drop();
      },
    };
  });
}

describe.each(MONGO_SERVERS)('mongo claimFingerprint ($name)', (server) => {
  let test: TestDatabase;
  let store: MongoProcessedStore;
  beforeAll(async () => {
    test = await openTestDatabase('fpguard', server.url);
    store = createMongoStore({ db: test.db });
  });
  afterAll(async () => {
    await store?.close();
    await test?.drop();
  });
  const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {} };

  it('keeps one document per scope and fingerprint, with the first key and the expiry; the sweeper removes lapsed ones', async () => {
    const fingerprint = 'cd'.repeat(32);
    expect(await store.claimFingerprint('default:billing', fingerprint, 'k1', 60_000)).toBeUndefined();
    expect(await store.claimFingerprint('default:billing', 'ef'.repeat(32), 'k2', 100)).toBeUndefined();
    const claims = test.db.collection('eo_records_fingerprints');
    const doc = await claims.findOne({ _id: `15:default:billing:${fingerprint}` as never });
    expect(doc).toMatchObject({ k: 'k1' });
    expect((doc?.e as Date | undefined)?.getTime()).toBeGreaterThan(Date.now() + 50_000);
    await new Promise((resolve) => setTimeout(resolve, 300));
    await store.sweepExpired();
    // The lapsed claim went through its generation's lock (a document kept a day).
    expect(await claims.countDocuments({ l: { $exists: false } })).toBe(1);
  });

  it('racing keys that replace one lapsed claim: exactly one of them holds it', async () => {
    // Before: on FerretDB 1.x (a filtered update applied as a read and a write back) several
    // racers were told they held it, and the guard let their payload through under each key.
    const clients = await Promise.all([0, 1, 2, 3].map(() => new MongoClient(server.url).connect()));
    try {
      const stores = clients.map((c) =>
        createMongoStore({ db: c.db(test.db.databaseName), collectionName: 'replace_race' }),
      );
      const winners: number[] = [];
      for (let round = 0; round < 10; round++) {
        const fingerprint = `fp-${round}`;
        expect(await stores[0]?.claimFingerprint('s', fingerprint, 'first', 50)).toBeUndefined();
        await new Promise((resolve) => setTimeout(resolve, 120));
        const answers = await Promise.all(
          Array.from({ length: 16 }, (_, i) =>
            stores[i % 4]?.claimFingerprint('s', fingerprint, `racer-${i}`, 60_000),
          ),
        );
        winners.push(answers.filter((a) => a === undefined).length);
      }
      expect(winners).toEqual(winners.map(() => 1));
    } finally {
      await Promise.all(clients.map((c) => c.close()));
    }
  });

  it("a lapsed holder's release never deletes the claim another key has just taken", async () => {
    // Before: on FerretDB 1.x the release's filtered delete read the lapsed claim, the new key
    // took it, and the delete removed it: a third key then held it too.
    const other = await new MongoClient(server.url).connect();
    try {
      const a = createMongoStore({ db: test.db, collectionName: 'release_race' });
      const b = createMongoStore({ db: other.db(test.db.databaseName), collectionName: 'release_race' });
      let both = 0;
      for (let round = 0; round < 40; round++) {
        const fingerprint = `fp-${round}`;
        await a.claimFingerprint('s', fingerprint, 'A', 30);
        await new Promise((resolve) => setTimeout(resolve, 60));
        const [won] = await Promise.all([
          b.claimFingerprint('s', fingerprint, 'B', 60_000),
          new Promise((resolve) => setTimeout(resolve, round % 5)).then(() =>
            a.releaseFingerprint('s', fingerprint, 'A'),
          ),
        ]);
        if (won !== undefined) continue;
        if ((await a.claimFingerprint('s', fingerprint, 'C', 60_000)) === undefined) both++;
      }
      expect(both).toBe(0);
    } finally {
      await other.close();
    }
  });

  it('guards the pipeline: a new key for the same payload is flagged, the old key is a duplicate', async () => {
    const warnings: unknown[] = [];
    const p = createProcessor({
      consumer: 'billing',
      store,
      retentionCheck: 'off',
      logger: { ...quiet, warn: (_m, meta) => warnings.push(meta) },
      payloadGuard: { windowMs: 60_000, action: 'flag' },
      // The warning names both keys only when keys may be logged.
      recordKeys: true,
      handler: () => 'charged',
    });
    const body = new TextEncoder().encode(JSON.stringify({ user: 2, amount: 5 }));
    const d = (k: string) => ({
      body,
      headers: { [Headers.IdempotencyKey]: k },
      destination: 'q',
      system: 'test',
    });
    expect(await p.process(d('a'))).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(await p.process(d('a'))).toMatchObject({ action: 'ack', outcome: 'duplicate' });
    expect(warnings).toHaveLength(0);
    expect(await p.process(d('b'))).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(warnings).toMatchObject([{ key: 'b', firstKey: 'a' }]);
  });
});
