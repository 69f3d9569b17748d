/**
 * Fault injection for tests: a {@link ProcessedStore} wrapper that fails chosen operations the way
 * an unreachable store does, with {@link StoreUnavailableError}.
 */
import { StoreUnavailableError } from '../errors.js';
import type { ProcessedStore } from './types.js';

/** Names of the {@link ProcessedStore} operations a fault can target. */
export type StoreOperation =
  | 'begin'
  | 'extend'
  | 'complete'
  | 'release'
  | 'fail'
  | 'markPublished'
  | 'saveStep'
  | 'markStepStarted'
  | 'claimFingerprint'
  | 'releaseFingerprint'
  | 'get'
  | 'clear';

export interface FaultOptions {
  /**
   * Called before each operation; `true` makes it throw without reaching the store, like a
   * refused connection.
   */
  readonly failWhen: (op: StoreOperation, key: string) => boolean;
  /**
   * Called after each operation the store carried out; `true` makes it throw anyway, like a reply
   * lost on the way back: the write happened but the caller cannot know. Retries must cope.
   */
  readonly loseReplyWhen?: (op: StoreOperation, key: string) => boolean;
}

/**
 * Wraps `store` so that the operations `options.failWhen` picks throw
 * {@link StoreUnavailableError}. For tests only.
 *
 * @example
 * ```ts
 * let down = false;
 * const store = withFaults(createMemoryStore(), { failWhen: () => down });
 * down = true; // every operation now fails until `down = false`
 * ```
 */
export function withFaults(store: ProcessedStore, options: FaultOptions): ProcessedStore {
  const guard = async <T>(op: StoreOperation, key: string, run: () => Promise<T>): Promise<T> => {
    if (options.failWhen(op, key)) throw injected(op, 'before');
    const value = await run();
    if (options.loseReplyWhen?.(op, key)) throw injected(op, 'after');
    return value;
  };

  const started = store.markStepStarted?.bind(store);
  const claim = store.claimFingerprint?.bind(store);
  const unclaim = store.releaseFingerprint?.bind(store);
  const wrapped: ProcessedStore = {
    begin: (request) => guard('begin', request.key, () => store.begin(request)),
    extend: (key, fence, leaseMs) => guard('extend', key, () => store.extend(key, fence, leaseMs)),
    complete: (request) => guard('complete', request.key, () => store.complete(request)),
    release: (key, fence, error, releaseOptions) =>
      guard('release', key, () => store.release(key, fence, error, releaseOptions)),
    fail: (key, fence, error, retentionMs) =>
      guard('fail', key, () => store.fail(key, fence, error, retentionMs)),
    markPublished: (key, fence, ids) =>
      guard('markPublished', key, () => store.markPublished(key, fence, ids)),
    saveStep: (key, fence, name, result) =>
      guard('saveStep', key, () => store.saveStep(key, fence, name, result)),
    ...(started === undefined
      ? {}
      : {
          markStepStarted: (key: string, fence: number, name: string) =>
            guard('markStepStarted', key, () => started(key, fence, name)),
        }),
    ...(claim === undefined
      ? {}
      : {
          claimFingerprint: (scope: string, fingerprint: string, key: string, windowMs: number) =>
            guard('claimFingerprint', key, () => claim(scope, fingerprint, key, windowMs)),
        }),
    ...(unclaim === undefined
      ? {}
      : {
          releaseFingerprint: (scope: string, fingerprint: string, key: string) =>
            guard('releaseFingerprint', key, () => unclaim(scope, fingerprint, key)),
        }),
    get: (key) => guard('get', key, () => store.get(key)),
    clear: (key, options) => guard('clear', key, () => store.clear(key, options)),
  };
  // What reaches no server, or only reads, is passed through untouched.
  const close = store.close?.bind(store);
  const list = store.listInProgress?.bind(store);
  const retention = store.effectiveRetentionMs?.bind(store);
  return {
    ...wrapped,
    ...(close === undefined ? {} : { close }),
    ...(list === undefined ? {} : { listInProgress: list }),
    ...(retention === undefined ? {} : { effectiveRetentionMs: retention }),
  };
}

function injected(op: StoreOperation, when: 'before' | 'after'): StoreUnavailableError {
  return new StoreUnavailableError({
    operation: op,
    message: `processed-store ${op} failed: injected fault (${when === 'before' ? 'not applied' : 'applied, reply lost'})`,
  });
}
