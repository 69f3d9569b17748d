/**
 * `@exactly-once/core/testing`: the conformance kit store implementations run against their real
 * servers. Imports vitest, so load it from test files only.
 */
export { type BlobStoreUnderTest, describeBlobStoreConformance } from './blob-conformance.js';
export { type ConformanceOptions, describeStoreConformance, type StoreUnderTest } from './conformance.js';
export {
  describeFingerprintClaimConformance,
  type FingerprintClaimConformanceOptions,
} from './fingerprint-conformance.js';
