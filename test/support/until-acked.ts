/**
 * Driving a processor as a broker drives a consumer: a message keyed `k` is delivered again until
 * it is acked, for tests that watch a store fail under it.
 */
import { type Delivery, type Disposition, Headers } from '@exactly-once/core';

/** A JSON message `{ k }` keyed `k`, as a test's `orders` queue would deliver it. */
export function keyedDelivery(k: string): Delivery {
  return {
    body: new TextEncoder().encode(JSON.stringify({ k })),
    headers: { [Headers.IdempotencyKey]: k, [Headers.RequestId]: `req-${k}` },
    destination: 'orders',
    system: 'test',
  };
}

/**
 * Delivers `k` to `p` again after each answer that is not an ack (at most 60 times, then throws),
 * keeping every answer in `outcomes`.
 */
export function untilAckedBy(
  p: { process(delivery: Delivery): Promise<Disposition> },
  outcomes: Disposition[],
): (k: string) => Promise<Disposition> {
  return async (k) => {
    for (let i = 0; i < 60; i++) {
      const d = await p.process(keyedDelivery(k));
      outcomes.push(d);
      if (d.action === 'ack') return d;
    }
    throw new Error(`${k} never acked`);
  };
}
