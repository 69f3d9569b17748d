/**
 * The core README's "Testing your handler" section, as a test: a handler run through the real
 * pipeline on the in-memory store, with a publisher that keeps what it is given. (The README's
 * copy uses node:test; this one vitest.)
 */
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import {
  createMemoryStore,
  createProcessor,
  type Delivery,
  type HandlerContext,
  type Logger,
  type OutgoingMessage,
  type OutgoingPublisher,
} from '../src/index.js';

const Order = z.object({ orderId: z.string(), amount: z.number().int().positive() });
type Order = z.infer<typeof Order>;

const charges: string[] = [];
async function handleOrder(order: Order, ctx: HandlerContext) {
  const chargeId = await ctx.step('charge', async () => {
    charges.push(ctx.keyFor('charge'));
    return `ch-${order.orderId}`;
  });
  ctx.publish('payment-captured', { orderId: order.orderId, chargeId });
  return { chargeId };
}

describe("the README's handler test", () => {
  it('runs once per key, refuses a payload of the wrong shape, and publishes once', async () => {
    const sent: OutgoingMessage[] = [];
    const publisher: OutgoingPublisher = {
      publish: async (messages) => {
        sent.push(...messages);
      },
    };
    const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {} };
    const processor = createProcessor({
      consumer: 'billing',
      store: createMemoryStore(),
      publisher,
      schema: Order,
      handler: handleOrder,
      logger: quiet,
    });
    const delivery = (key: string, payload: unknown): Delivery => ({
      body: Buffer.from(JSON.stringify(payload)),
      headers: { 'x-idempotency-key': key },
      destination: 'orders',
      system: 'test',
    });

    const first = await processor.process(delivery('o-1', { orderId: 'o-1', amount: 500 }));
    expect(first).toMatchObject({ action: 'ack', outcome: 'acquired' });
    const again = await processor.process(delivery('o-1', { orderId: 'o-1', amount: 500 }));
    expect(again).toMatchObject({ action: 'ack', outcome: 'duplicate' });
    const refused = await processor.process(delivery('o-2', { orderId: 'o-2' }));
    expect(refused.action === 'dead-letter' && refused.reason.error.code).toBe('MALFORMED_MESSAGE');
    expect(charges).toHaveLength(1);
    expect(sent.map((m) => m.destination)).toEqual(['payment-captured']);
    expect(JSON.parse(Buffer.from(sent[0]?.body ?? []).toString())).toEqual({
      orderId: 'o-1',
      chargeId: 'ch-o-1',
    });
  });
});
