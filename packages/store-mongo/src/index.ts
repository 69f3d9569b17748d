/**
 * `@exactly-once/store-mongo`: a MongoDB processed-store and a GridFS blob store.
 */

export type { RecordDoc } from './codec.js';
export type { GridFsBlobStore, GridFsBlobStoreOptions } from './gridfs-blob-store.js';
export { createGridFsBlobStore, DEFAULT_BUCKET } from './gridfs-blob-store.js';
export type {
  MongoOutboxSource,
  MongoOutboxSourceOptions,
  OutboxFieldsOptions,
  OutboxMessageInput,
} from './outbox.js';
export { createMongoOutboxSource, OUTBOX_FIELD, outboxFields, PENDING_FIELD, WRITE_FIELD } from './outbox.js';
export type { MongoProcessedStore, MongoStoreOptions, SweepResult } from './store.js';
export { createMongoStore, DEFAULT_COLLECTION } from './store.js';
