import { describeBlobStoreConformance, describeStoreConformance } from '@exactly-once/core/testing';
import { createGridFsBlobStore, createMongoStore } from '../src/index.js';
import { MONGO_SERVERS, openTestDatabase } from './helpers.js';

// Every race included, on both servers: the store needs nothing but unique-`_id` inserts to be
// atomic (FerretDB 1.x applies filtered updates non-atomically; mongo-java-server does not).
for (const server of MONGO_SERVERS) {
  describeStoreConformance(`mongo (${server.name})`, async () => {
    const test = await openTestDatabase('conformance', server.url);
    const blobs = createGridFsBlobStore({ db: test.db });
    const store = createMongoStore({ db: test.db, blobs });
    await store.ensureIndexes();
    return {
      store,
      blobs,
      teardown: async () => {
        await store.close();
        await test.drop();
      },
    };
  });
}

describeBlobStoreConformance('GridFS (FerretDB)', async () => {
  const test = await openTestDatabase('blob-conformance');
  return { blobs: createGridFsBlobStore({ db: test.db }), teardown: () => test.drop() };
});
