/** The messages every variant consumes and the trivial handler every variant runs. */
import type { Logger } from '@exactly-once/core';

/** For pipelines whose failures are staged on purpose (the outbox backlog): nothing to report. */
export const quietLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

export interface Order {
  readonly orderId: string;
  readonly amount: number;
}

/** Trivial on purpose: what is measured is the cost around the handler, not the handler. */
export async function handler(order: Order): Promise<{ ok: true; orderId: string }> {
  return { ok: true, orderId: order.orderId };
}

export interface BenchMessage {
  readonly key: string;
  readonly body: Buffer;
  readonly headers: Record<string, string>;
}

/**
 * Message `i` of a batch named `batch`: a small JSON order with a unique `x-idempotency-key`
 * (every message is new to the store, so every one runs the full begin/handler/complete path).
 */
export function message(batch: string, i: number): BenchMessage {
  const key = `${batch}-${i}`;
  const order: Order = { orderId: `o-${i}`, amount: (i % 97) + 1 };
  return {
    key,
    body: Buffer.from(JSON.stringify(order)),
    headers: { 'x-idempotency-key': key, 'x-request-id': `req-${key}`, 'content-type': 'application/json' },
  };
}
