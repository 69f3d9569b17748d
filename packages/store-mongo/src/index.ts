/**
 * `@exactly-once/store-mongo`: a MongoDB processed-store and a GridFS blob store.
 */
export { createMongoStore, DEFAULT_COLLECTION } from './store.js';
export type {
  MongoProcessedStore,
  MongoStoreOptions,
  SweeperOptions,
  SweeperPass,
  SweepResult,
} from './store.js';
export type { RecordDoc } from './codec.js';
export { createGridFsBlobStore, DEFAULT_BUCKET } from './gridfs-blob-store.js';
export type { GridFsBlobStore, GridFsBlobStoreOptions } from './gridfs-blob-store.js';
export { createMongoOutboxSource, OUTBOX_FIELD, outboxFields, PENDING_FIELD, WRITE_FIELD } from './outbox.js';
export type {
  MongoOutboxSource,
  MongoOutboxSourceOptions,
  OutboxFieldsOptions,
  OutboxMessageDoc,
  OutboxMessageInput,
} from './outbox.js';
