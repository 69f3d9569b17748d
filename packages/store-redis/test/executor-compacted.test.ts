/**
 * The idempotent executor over a compacting Redis store: a duplicate answered by a compaction
 * marker says so (`compacted`), rather than looking like a handler that returned nothing.
 */
import { createIdempotentExecutor } from '@exactly-once/core';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRedisStore } from '../src/index.js';
import { dropPrefix, standalone, testPrefix } from './helpers.js';

describe('executor over a compacted record', () => {
  let client: Redis;
  const keyPrefix = testPrefix('exec-compacted');
  beforeAll(() => {
    client = standalone();
  });
  afterAll(async () => {
    await dropPrefix(client, keyPrefix);
    client.disconnect();
  });

  it('answers a compacted duplicate as duplicate and compacted, without a result; a full one without the flag', async () => {
    // Before: `{ status: 'duplicate' }` alone, indistinguishable from a handler returning nothing.
    const store = createRedisStore({ client, keyPrefix, compactAfterMs: 0 });
    const orders = createIdempotentExecutor<{ sku: string }, { orderId: string }>({
      consumer: 'orders-api',
      store,
      retentionCheck: 'off',
    });
    let runs = 0;
    const handler = () => ({ orderId: `o-${++runs}` });
    const first = await orders.execute({ key: 'k1', payload: { sku: 'x' } }, handler);
    const again = await orders.execute({ key: 'k1', payload: { sku: 'x' } }, handler);
    expect(first).toMatchObject({ status: 'completed', result: { orderId: 'o-1' } });
    expect(again).toMatchObject({ status: 'duplicate', result: { orderId: 'o-1' } });
    expect(again.compacted).toBeUndefined();

    await store.compactCompleted();
    const late = await orders.execute({ key: 'k1', payload: { sku: 'x' } }, handler);
    expect(late).toMatchObject({ status: 'duplicate', compacted: true });
    expect(late.result).toBeUndefined();
    expect(runs).toBe(1);
  });
});
