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
  'history',
  'claimFingerprint',
  'releaseFingerprint',
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

type Call = (...args: unknown[]) => Promise<unknown>;

/**
 * `delegate(store)` with each server call the store has replaced by `wrap(name, call)`, where
 * `call` runs the store's own method with the store as `this`.
 */
export function wrapServerCalls(
  store: ProcessedStore,
  wrap: (name: (typeof SERVER_CALLS)[number], call: Call) => Call,
): ProcessedStore {
  const wrapped = delegate(store) as unknown as Record<string, Call>;
  for (const name of SERVER_CALLS) {
    const method = (store as unknown as Record<string, Call | undefined>)[name];
    if (typeof method === 'function') wrapped[name] = wrap(name, (...args) => method.apply(store, args));
  }
  return wrapped as unknown as ProcessedStore;
}
