import { expect } from 'vitest';
import { ExecutionFailedError } from '../src/executor.js';
import type { Delivery, OutgoingPublisher } from '../src/spi.js';
import type { OutgoingMessage, ProcessedStore } from '../src/store/types.js';

const enc = new TextEncoder();

export function delivery(
  payload: unknown,
  headers: Record<string, string | Uint8Array> = {},
  extra: Partial<Delivery> = {},
): Delivery {
  return {
    body: typeof payload === 'string' ? enc.encode(payload) : enc.encode(JSON.stringify(payload)),
    headers,
    destination: 'orders',
    system: 'test',
    ...extra,
  };
}

/** The ExecutionFailedError an executor call must end in. */
export const failure = (call: Promise<unknown>): Promise<ExecutionFailedError> =>
  call.then(
    () => expect.fail('the call succeeded'),
    (error: unknown) => {
      expect(error).toBeInstanceOf(ExecutionFailedError);
      return error as ExecutionFailedError;
    },
  );

/** A publisher that records what it was asked to send and can be made to fail. */
export function recordingPublisher(): OutgoingPublisher & { sent: OutgoingMessage[]; failing: boolean } {
  const p = {
    sent: [] as OutgoingMessage[],
    failing: false,
    async publish(messages: readonly OutgoingMessage[]) {
      if (p.failing) throw new Error('broker did not confirm');
      p.sent.push(...messages);
    },
  };
  return p;
}

export function deferred<T = void>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/**
 * `store` whose lease extensions hang (a stalled connection) until `release()`: a heartbeat can
 * then neither extend the lease nor notice that it lost it. `reached` resolves once one is held.
 */
export function withHeldExtensions(store: ProcessedStore): {
  store: ProcessedStore;
  reached: Promise<void>;
  release: () => void;
} {
  const held = deferred();
  const reached = deferred();
  return {
    store: {
      ...store,
      extend: async (...args) => {
        reached.resolve();
        await held.promise;
        return store.extend(...args);
      },
    },
    reached: reached.promise,
    release: () => held.resolve(),
  };
}
