/**
 * The base of the store wrappers (deadline, coalescing): an object that answers every store
 * method by calling the store's own, with the store as `this`. A wrapper replaces the methods it
 * wraps and inherits the rest. `Object.create(store)` alone would call the rest with the wrapper
 * as `this`, and a class store's private fields (`#client`) fail on any `this` but its own.
 */
import type { ProcessedStore } from './types.js';

/** The store's calls that go to the server: all methods but `close` and `effectiveRetentionMs`. */
export const SERVER_CALLS = [
  'begin',
  'beginMany',
  'extend',
  'complete',
  'completeMany',
  'release',
  'fail',
  'markPublished',
  'markPublishedMany',
  'saveStep',
  'markStepStarted',
  'get',
  'clear',
  'listInProgress',
  'claimFingerprint',
] as const satisfies readonly (keyof ProcessedStore)[];

const METHODS = [
  ...SERVER_CALLS,
  'close',
  'effectiveRetentionMs',
] as const satisfies readonly (keyof ProcessedStore)[];

export function delegate(store: ProcessedStore): ProcessedStore {
  const wrapper = Object.create(store) as Record<string, unknown>;
  for (const name of METHODS) {
    const method = store[name];
    if (typeof method === 'function') wrapper[name] = method.bind(store);
  }
  return wrapper as unknown as ProcessedStore;
}
