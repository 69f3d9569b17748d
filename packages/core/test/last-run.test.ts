/**
 * `Processor.lastRunMayHaveDied`: what the RabbitMQ adapter asks of a redelivered message before
 * running it alone. Only a key IN_PROGRESS under a lease nobody gave back is a suspect.
 */
import { describe, expect, it } from 'vitest';
import { scopeKey } from '../src/keys.js';
import { createProcessor } from '../src/processor.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import type { ProcessedStore } from '../src/store/types.js';
import { delivery } from './helpers.js';

const error = { name: 'Error', code: 'X', message: 'x', retryable: true };

async function suspectAfter(setUp: (store: ProcessedStore, key: string) => Promise<unknown>) {
  const store = createMemoryStore();
  const p = createProcessor({ consumer: 'c', store, retentionCheck: 'off', handler: () => {} });
  const d = delivery({ a: 1 }, { 'x-idempotency-key': 'k' });
  const key = scopeKey('default', 'c', 'k');
  await setUp(store, key);
  return p.lastRunMayHaveDied(d);
}

/** Begins `key` in the store directly: held under a lease, as by a worker that died. */
async function begin(store: ProcessedStore, key: string) {
  const r = await store.begin({ key, fingerprint: 'f', owner: 'w', leaseMs: 60_000 });
  if (r.status !== 'acquired') throw new Error(r.status);
  return r;
}

describe('lastRunMayHaveDied', () => {
  it('is false for a key never begun', async () => {
    expect(await suspectAfter(async () => {})).toBe(false);
  });

  it('is true for a key held under a lease (its worker may be dead), or a takeover given back unrun', async () => {
    expect(await suspectAfter((store, key) => begin(store, key))).toBe(true);
    expect(
      await suspectAfter(async (store, key) => {
        const first = await begin(store, key);
        await store.release(key, first.fence, error, { notRun: true, takenOver: true });
      }),
    ).toBe(true);
  });

  it('is false for a key given back (a stop that cut the run, a retryable failure), completed or failed', async () => {
    expect(
      await suspectAfter(async (store, key) => {
        const first = await begin(store, key);
        await store.release(key, first.fence, error, { notRun: true });
      }),
    ).toBe(false);
    expect(
      await suspectAfter(async (store, key) => {
        const first = await begin(store, key);
        await store.release(key, first.fence, error);
      }),
    ).toBe(false);
    expect(
      await suspectAfter(async (store, key) => {
        const first = await begin(store, key);
        await store.complete({ key, fence: first.fence, retentionMs: 60_000, outgoing: [] });
      }),
    ).toBe(false);
    expect(
      await suspectAfter(async (store, key) => {
        const first = await begin(store, key);
        await store.fail(key, first.fence, error, 60_000);
      }),
    ).toBe(false);
  });

  it('is true for a message it cannot read, and when the store does not answer', async () => {
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      retentionCheck: 'off',
      handler: () => {},
    });
    expect(await p.lastRunMayHaveDied(delivery('{not json', { 'x-idempotency-key': 'k' }))).toBe(true);
    const down = createMemoryStore();
    down.get = async () => {
      throw new Error('connection refused');
    };
    const q = createProcessor({ consumer: 'c', store: down, retentionCheck: 'off', handler: () => {} });
    expect(await q.lastRunMayHaveDied(delivery({ a: 1 }, { 'x-idempotency-key': 'k' }))).toBe(true);
  });
});
