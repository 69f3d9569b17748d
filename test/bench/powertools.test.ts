/**
 * The bench's Powertools competitor against the real Redis: a completed record delivered again
 * must be answered with its stored result. Powertools' cache layer (2.30-2.35) drops the payload's
 * validation hash when it completes a record, so every redelivery failed validation and the
 * bench's raw Kafka loop fetched the record again for ever (a hung bench round).
 */
import { Redis } from 'ioredis';
import { afterAll, expect, it } from 'vitest';
import { PowertoolsKit } from '../../bench/lib/powertools.js';

const kit = new PowertoolsKit();
const cleaner = new Redis(process.env.EO_REDIS_URL ?? 'redis://127.0.0.1:6379', {
  db: Number(process.env.EO_BENCH_REDIS_DB ?? 14),
});

afterAll(async () => {
  await kit.close();
  cleaner.disconnect();
});

it('answers a completed record delivered again with its result, and still refuses a changed payload', async () => {
  let runs = 0;
  const powertools = await kit.make(async (order) => {
    runs += 1;
    return { ok: true, orderId: order.orderId };
  }, cleaner);
  try {
    const event = { key: 'order-1', payload: { orderId: 'o-1', amount: 5 } };
    await expect(powertools.handle(event)).resolves.toEqual({ ok: true, orderId: 'o-1' });
    await expect(powertools.handle(event)).resolves.toEqual({ ok: true, orderId: 'o-1' });
    expect(runs).toBe(1);
    await expect(
      powertools.handle({ key: 'order-1', payload: { orderId: 'o-1', amount: 6 } }),
    ).rejects.toMatchObject({ name: 'IdempotencyValidationError' });
    // The completion is one SET, as before: the fix adds no command.
    expect(powertools.calls).toEqual({ get: 2, set: 4, del: 0 });
  } finally {
    await powertools.cleanup();
  }
});
