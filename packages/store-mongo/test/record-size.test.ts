/**
 * A record the store cannot hold is a permanent error, not an outage: retrying the same write
 * would be refused again, and the record must stay as it was so the pipeline can `fail` it.
 */
import { PartialBatchError, RecordTooLargeError, StoreUnavailableError } from '@exactly-once/core';
import { MongoInvalidArgumentError, MongoNetworkError, MongoServerError } from 'mongodb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { asStoreError } from '../src/driver.js';
import { createMongoStore, type MongoProcessedStore } from '../src/index.js';
import { MONGO_SERVERS, openTestDatabase, type TestDatabase } from './helpers.js';

const MiB = 1024 * 1024;

let test: TestDatabase;
let store: MongoProcessedStore;
const closeLast = async () => {
  await store?.close();
  await test?.drop();
};
afterAll(closeLast);

// On each local server: FerretDB 1.x and mongo-java-server.
describe.each(MONGO_SERVERS)('$name', (server) => {
  beforeAll(async () => {
    await closeLast();
    test = await openTestDatabase('record_size', server.url);
    store = createMongoStore({ db: test.db, collectionName: 'size' });
  });

  describe('a record over the BSON document limit', () => {
    // The driver's serializer overflows on each with a different RangeError (see driver.ts).
    const oversized = [
      [
        'a 17 MiB inline result',
        { result: { kind: 'inline', data: new Uint8Array(17 * MiB) } as const, outgoing: [] },
      ],
      [
        'an outgoing message with a 17 MiB header',
        {
          outgoing: [
            { id: 'm', destination: 'q', body: Uint8Array.of(1), headers: { big: 'a'.repeat(17 * MiB) } },
          ],
        },
      ],
    ] as const;

    it.each(oversized)(
      'complete with %s: RecordTooLargeError, record unchanged and still failable',
      async (_, content) => {
        const key = `big:${_}`;
        const lease = await store.begin({ key, fingerprint: 'fp', owner: 'w', leaseMs: 30_000 });
        if (lease.status !== 'acquired') throw new Error(`expected acquired, got ${lease.status}`);

        const failure = await store
          .complete({ key, fence: lease.fence, retentionMs: 60_000, ...content })
          .then(
            () => new Error('complete succeeded'),
            (e: unknown) => e,
          );
        expect(failure).not.toBeInstanceOf(StoreUnavailableError);
        expect(failure).toBeInstanceOf(RecordTooLargeError);
        expect(failure).toMatchObject({ code: 'RECORD_TOO_LARGE', retryable: false, operation: 'complete' });

        const record = await store.get(key);
        expect(record).toMatchObject({ state: 'IN_PROGRESS', fence: lease.fence, owner: 'w' });
        const error = { name: 'RecordTooLargeError', code: 'RECORD_TOO_LARGE', message: 'too large' };
        expect(await store.fail(key, lease.fence, error, 60_000)).toBe('ok');
        expect(await store.get(key)).toMatchObject({ state: 'FAILED', fence: lease.fence });
      },
    );
  });

  it('completeMany with one record too large: the others complete, only that one is RecordTooLargeError', async () => {
    // Before: the batch rejected whole with RecordTooLargeError, so core took every record of it
    // for too large although the others had been written.
    const keys = ['many:a', 'many:big', 'many:c'];
    const leases = await store.beginMany!(
      keys.map((key) => ({ key, fingerprint: 'fp', owner: 'w', leaseMs: 30_000 })),
    );
    const fences = leases.map((l) => (l.status === 'acquired' ? l.fence : Number.NaN));
    const failure = await store.completeMany!(
      keys.map((key, i) => ({
        key,
        fence: fences[i] as number,
        retentionMs: 60_000,
        outgoing: [],
        result: { kind: 'inline', data: new Uint8Array(key === 'many:big' ? 17 * MiB : 4) } as const,
      })),
    ).then(
      () => new Error('completeMany succeeded'),
      (e: unknown) => e,
    );
    expect(failure).toBeInstanceOf(PartialBatchError);
    const partial = failure as PartialBatchError;
    expect([...partial.errors.keys()]).toEqual([1]);
    expect(partial.errors.get(1)).toBeInstanceOf(RecordTooLargeError);
    expect([partial.answers[0], partial.answers[2]]).toEqual(['ok', 'ok']);
    expect(await store.get('many:a')).toMatchObject({ state: 'COMPLETED' });
    expect(await store.get('many:big')).toMatchObject({ state: 'IN_PROGRESS' });
  });

  describe('error mapping', () => {
    const tooLarge: [string, unknown][] = [
      [
        'MongoDB 5.0+: update result over the limit',
        serverError(10334, 'Resulting document after update is larger than 16777216'),
      ],
      [
        'MongoDB: command over the limit',
        serverError(10334, 'BSONObj size: 17825900 (0x1100...) is invalid.'),
      ],
      [
        'MongoDB < 5.0: update result over the limit',
        serverError(17419, 'Resulting document after update is larger than 16777216'),
      ],
      ['MongoDB: upsert over the limit', serverError(17420, 'Document to upsert is larger than 16777216')],
      [
        'MongoDB: insert over the limit',
        serverError(2, 'object to insert too large. size in bytes: 16777241, max size: 16777216'),
      ],
      [
        'driver bulk check',
        new MongoInvalidArgumentError('Document is larger than the maximum size 16777216'),
      ],
    ];
    it.each(tooLarge)('%s is RecordTooLargeError', (_, cause) => {
      const error = asStoreError('complete', cause);
      expect(error).toBeInstanceOf(RecordTooLargeError);
      expect(error.cause).toBe(cause);
    });

    const other: [string, unknown][] = [
      ['another BadValue', serverError(2, 'unknown operator: $foo')],
      ['a network error', new MongoNetworkError('connection reset')],
      ['another RangeError', new RangeError('Invalid array length')],
      [
        'another invalid argument',
        new MongoInvalidArgumentError('Update document requires atomic operators'),
      ],
    ];
    it.each(other)('%s stays StoreUnavailableError', (_, cause) => {
      expect(asStoreError('complete', cause)).toBeInstanceOf(StoreUnavailableError);
    });
  });

  function serverError(code: number, errmsg: string): MongoServerError {
    return new MongoServerError({ ok: 0, code, errmsg });
  }
});
