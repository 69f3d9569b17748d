import { describeBlobStoreConformance, describeStoreConformance } from '@exactly-once/core/testing';
import { createGridFsBlobStore, createMongoStore } from '../src/index.js';
import { openTestDatabase } from './helpers.js';

describeStoreConformance('mongo (FerretDB)', async () => {
  const test = await openTestDatabase('conformance');
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

describeBlobStoreConformance('GridFS (FerretDB)', async () => {
  const test = await openTestDatabase('blob-conformance');
  return { blobs: createGridFsBlobStore({ db: test.db }), teardown: () => test.drop() };
});
