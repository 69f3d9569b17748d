/**
 * `@exactly-once/core/testing`: the conformance kit store implementations run against their real
 * servers. Imports vitest, so load it from test files only.
 */
export {
  type ConformanceOptions,
  describeStoreConformance,
  type StoreUnderTest,
} from './conformance.js';
