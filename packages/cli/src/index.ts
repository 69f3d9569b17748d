/**
 * `@exactly-once/cli`: the `exactly-once` operator command (see README.md). The module exports
 * the command runner and the pure parts (storage sizing, span-tree rendering) for scripts.
 */
export type { CapacityEstimate, CapacityInput } from './commands/capacity.js';
export {
  estimateCapacity,
  MARKER_BUCKET_BYTES,
  MARKER_BUCKETS,
  MARKER_BYTES,
  RECORD_BYTES,
  RECORD_WITH_INDEX_BYTES,
  renderCapacity,
} from './commands/capacity.js';
export type { RecordView } from './commands/inspect.js';
export { recordView, renderRecord } from './commands/inspect.js';
export type { JaegerSpan, JaegerTrace, SpanNode } from './commands/trace.js';
export { renderSpanTree, spanTree } from './commands/trace.js';
export { CliError, UsageError } from './errors.js';
export { main } from './main.js';
export type { Io } from './output.js';
export { parseDays, parseDuration } from './parse.js';
