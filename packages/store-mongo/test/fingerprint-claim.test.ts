/**
 * claimFingerprint (the payload guard's store operation) on the real server (FerretDB by default),
 * and the guard in the pipeline on it.
 */
import { createProcessor, Headers, type Logger } from '@exactly-once/core';
import { describeFingerprintClaimConformance } from '@exactly-once/core/testing';
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
    expect(await claims.countDocuments({})).toBe(1);
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
