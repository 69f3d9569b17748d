/**
 * `@exactly-once/core`: the ack-last pipeline, the record state machine, the store contracts, and
 * the key, header, retry and tracing helpers. Imports no broker and no database client.
 */

export type { FsBlobStore, FsBlobStoreOptions } from './blob/fs-blob-store.js';
export { createFsBlobStore } from './blob/fs-blob-store.js';
export type { OrphanBlobOptions, OrphanBlobStats } from './blob/orphans.js';
export { collectOrphanBlobs } from './blob/orphans.js';
export type { ResultStream } from './blob/result-stream.js';
export { resultStream } from './blob/result-stream.js';
export type { BlobPointer, BlobPutOptions, BlobSource, BlobStore, ListedBlob } from './blob/types.js';
export type { JsonDecoderOptions } from './codec.js';
export { decodeResult, jsonDecoder } from './codec.js';
export type {
  DeliveryInfo,
  Handler,
  HandlerContext,
  PublishOptions,
  StepEvent,
  StepOptions,
  StepReconcileInfo,
  StepReconcileResult,
} from './context.js';
export * from './errors.js';
export type {
  ExecutedResult,
  ExecuteRequest,
  ExecuteResult,
  ExecutorOptions,
  IdempotentExecutor,
} from './executor.js';
export { createIdempotentExecutor, ExecutionFailedError, RequestInProgressError } from './executor.js';
export type { HeaderValue, MessageHeaders } from './headers.js';
export { Headers, readHeader, readIdentityHeader, textHeaders } from './headers.js';
export type { StableKeyField } from './keys.js';
export {
  canonicalJson,
  deriveChildKey,
  fingerprint,
  MAX_KEY_BYTES,
  normalizeKey,
  normalizeRequestId,
  recordKeyFor,
  scopeKey,
  sha256,
  sha256Hex,
  stableKey,
  validateName,
} from './keys.js';
export type { Logger, LogMeta } from './logger.js';
export { defaultLogger, silentLogger } from './logger.js';
export type { MissingKeyPolicy, ProcessorOptions, ResolvedProcessorOptions } from './options.js';
export {
  checkRetentionHorizon,
  MAX_DURATION_MS,
  PROCESSOR_DEFAULTS,
  resolveProcessorOptions,
} from './options.js';
export type {
  OutboxEntry,
  OutboxRelay,
  OutboxRelayOptions,
  OutboxRelayStats,
  OutboxSource,
} from './outbox/relay.js';
export { createOutboxRelay } from './outbox/relay.js';
export type { PayloadGuardOptions } from './payload-guard.js';
export type { Processor } from './processor.js';
export { createProcessor } from './processor.js';
export type { RetryPolicy, RetryPolicyOptions } from './retry.js';
export {
  backoffMs,
  DEFAULT_RETRY_POLICY,
  resolveRetryPolicy,
  retryDelayMs,
  worstCaseRetrySpanMs,
} from './retry.js';
export type { StandardSchemaV1 } from './schema.js';
export * as semconv from './semconv.js';
export type { DeadLetterReason, Delivery, Disposition, Outcome, OutgoingPublisher } from './spi.js';
export type { FaultOptions, StoreOperation } from './store/faulty-store.js';
export { withFaults } from './store/faulty-store.js';
export type { StoreHealth } from './store/health.js';
export type { MemoryStore, MemoryStoreOptions } from './store/memory-store.js';
export { createMemoryStore } from './store/memory-store.js';
export type { StuckQuery, StuckWatch, WatchStuckOptions } from './store/stuck.js';
export { findStuck, watchStuck } from './store/stuck.js';
export type { TieredStore, TieredStoreOptions } from './store/tiered-store.js';
export { createTieredStore } from './store/tiered-store.js';
export type {
  AcquireKind,
  BeginRequest,
  BeginResult,
  ClearResult,
  ClearOptions,
  CompletedRecord,
  CompleteRequest,
  FailedRecord,
  FencedResult,
  FingerprintClaim,
  HistoryEntry,
  InProgressEntry,
  InProgressQuery,
  InProgressRecord,
  MarkPublishedRequest,
  OutgoingMessage,
  OutgoingRecord,
  ProcessedRecord,
  ProcessedStore,
  ReleaseOptions,
  StepRecord,
  StepState,
  StoredResult,
} from './store/types.js';
export { RecordState } from './store/types.js';
export type { SpanKindMode } from './tracing.js';
export { withTimeout } from './wait.js';
