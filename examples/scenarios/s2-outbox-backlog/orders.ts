/**
 * The order service's write: the order and its events in ONE document insert. Either both are
 * stored or neither; there is no moment where the order exists without its events.
 */
import { outboxFields } from '@exactly-once/store-mongo';
import type { Collection, Document } from 'mongodb';

export const ORDER_EVENTS = 'order-events';

export interface Order {
  readonly id: string;
  readonly customer: string;
  readonly amountCents: number;
}

/** Inserts orders with their two events (OrderCreated, then OrderPriced), `batch` per insertMany. */
export async function placeOrders(
  orders: Collection<Document>,
  list: readonly Order[],
  topic = ORDER_EVENTS,
  batch = 1_000,
): Promise<void> {
  for (let i = 0; i < list.length; i += batch) {
    const docs = list.slice(i, i + batch).map((order) => ({
      _id: order.id as never,
      ...order,
      status: 'created',
      ...outboxFields(order.id, [
        // Both events carry the order id as partition key: one partition, in this order.
        { destination: topic, key: order.id, body: { type: 'OrderCreated', order } },
        {
          destination: topic,
          key: order.id,
          body: { type: 'OrderPriced', orderId: order.id, cents: order.amountCents },
        },
      ]),
    }));
    await orders.insertMany(docs, { ordered: false });
  }
}

export function makeOrders(count: number, prefix: string): Order[] {
  return Array.from({ length: count }, (_, i) => ({
    id: `${prefix}-${i}`,
    customer: `c-${i % 977}`,
    amountCents: 100 + (i % 5_000),
  }));
}
