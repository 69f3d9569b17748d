/**
 * The application's payment client that the RabbitMQ README's handler calls (`payments.charge`):
 * the one name that README leaves to the reader. It records each charge.
 */
export interface Charge {
  orderId: string;
  amount: number;
  idempotencyKey: string;
}

export const charges: Charge[] = [];

export const payments = {
  async charge(
    order: { orderId: string; amount: number },
    options: { idempotencyKey: string; signal?: AbortSignal },
  ) {
    charges.push({ orderId: order.orderId, amount: order.amount, idempotencyKey: options.idempotencyKey });
    return { chargeId: `ch-${charges.length}` };
  },
};
