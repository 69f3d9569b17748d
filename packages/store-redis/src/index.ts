/**
 * `@exactly-once/store-redis`: the processed-store on Redis (standalone or Cluster) through
 * ioredis. One Lua script per transition; see README.md for the layout, figures and durability.
 */
export { createRedisStore } from './store.js';
export type { CompactedRecord, RedisProcessedStore, RedisStoreOptions } from './store.js';
export type { RedisArg, RedisClient } from './client.js';
export type { BlobCollectionOptions, BlobCollectionStats } from './blob-collection.js';
export type { CompactionOptions, CompactionStats } from './compaction.js';
export type { MaintenanceOptions, MaintenancePass } from './maintenance.js';
export { LAYOUT_VERSION } from './generated/scripts.js';
export { redisKeyFor } from './layout.js';
