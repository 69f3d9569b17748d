/**
 * The three systems a renewal touches, faked with Redis as their database so that worker
 * processes that are killed and the test that counts see one state:
 *
 * - billing: charges, never deduplicated (every call charges); charges can be looked up by the
 *   idempotency key they were made with;
 * - mailer: sends receipts; an address it cannot deliver to fails every time (550); it honours
 *   idempotency keys (a key it already sent is not sent again; not every email API does);
 * - status DB: the subscription's status row; `failNext(id, n)` makes the next n writes for a
 *   subscription fail (a DB outage).
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';

export interface BillingCharge {
  id: string;
  key: string;
  customerId: string;
  amountCents: number;
}

export function createBilling(redis: Redis, name: string) {
  const charges = `${name}:billing:charges`;
  const byKey = `${name}:billing:by-key`;
  return {
    async charge(request: { key: string; customerId: string; amountCents: number }): Promise<BillingCharge> {
      const charge = { id: `ch_${randomUUID().slice(0, 8)}`, ...request };
      const json = JSON.stringify(charge);
      await redis.multi().rpush(charges, json).hsetnx(byKey, request.key, json).exec();
      return charge;
    },
    async findCharge(key: string): Promise<BillingCharge | undefined> {
      const json = await redis.hget(byKey, key);
      return json === null ? undefined : (JSON.parse(json) as BillingCharge);
    },
    /** Every charge made: the statement. */
    async listCharges(): Promise<BillingCharge[]> {
      return (await redis.lrange(charges, 0, -1)).map((j) => JSON.parse(j) as BillingCharge);
    },
  };
}

export class MailError extends Error {
  override name = 'MailError';
}

/** Records the key and the delivery at once; answers the key's message id. */
const SEND_ONCE = `
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[3])
  return ARGV[2]
end
return redis.call('HGET', KEYS[1], ARGV[1])`;

export function createMailer(redis: Redis, name: string) {
  const k = {
    undeliverable: `${name}:mail:undeliverable`,
    attempts: `${name}:mail:attempts`,
    sent: `${name}:mail:sent`,
    keys: `${name}:mail:keys`,
  };
  return {
    async sendReceipt(mail: { to: string; renewalId: string; key: string }): Promise<{ messageId: string }> {
      await redis.hincrby(k.attempts, mail.to, 1);
      if (await redis.sismember(k.undeliverable, mail.to)) {
        throw new MailError(`550 5.1.1 <${mail.to}>: mailbox unavailable`);
      }
      const messageId = `msg_${randomUUID().slice(0, 8)}`;
      // Idempotent by key: a second request with the key is answered, not sent again. The key and
      // the delivery are recorded together, as a provider does: recorded in two calls, a caller
      // killed between them left a key whose email was never delivered.
      const sent = JSON.stringify({ to: mail.to, renewalId: mail.renewalId, messageId });
      const answered = (await redis.eval(SEND_ONCE, 2, k.keys, k.sent, mail.key, messageId, sent)) as string;
      return { messageId: answered };
    },
    async markUndeliverable(address: string) {
      await redis.sadd(k.undeliverable, address);
    },
    async attempts(address: string): Promise<number> {
      return Number((await redis.hget(k.attempts, address)) ?? 0);
    },
    /** Receipts delivered. */
    async sent(): Promise<{ to: string; renewalId: string; messageId: string }[]> {
      return (await redis.lrange(k.sent, 0, -1)).map((j) => JSON.parse(j));
    },
  };
}

export class StatusDbError extends Error {
  override name = 'StatusDbError';
}

export interface SubscriptionRow {
  status: 'active';
  paymentId: string;
  /** The receipt could not be sent: show "Your receipt is being sent" and follow up. */
  receiptPending: boolean;
}

export function createStatusDb(redis: Redis, name: string) {
  const k = { rows: `${name}:status:rows`, failures: `${name}:status:fail`, writes: `${name}:status:writes` };
  return {
    async activate(subscriptionId: string, row: Omit<SubscriptionRow, 'status'>): Promise<void> {
      await redis.hincrby(k.writes, subscriptionId, 1);
      if ((await redis.hincrby(k.failures, subscriptionId, -1)) >= 0) {
        throw new StatusDbError('status DB unavailable');
      }
      await redis.hset(k.rows, subscriptionId, JSON.stringify({ status: 'active', ...row }));
    },
    async failNext(subscriptionId: string, n: number) {
      await redis.hset(k.failures, subscriptionId, n);
    },
    async get(subscriptionId: string): Promise<SubscriptionRow | undefined> {
      const json = await redis.hget(k.rows, subscriptionId);
      return json === null ? undefined : (JSON.parse(json) as SubscriptionRow);
    },
    /** Write attempts for a subscription, failed ones included. */
    async writes(subscriptionId: string): Promise<number> {
      return Number((await redis.hget(k.writes, subscriptionId)) ?? 0);
    },
  };
}

export type Billing = ReturnType<typeof createBilling>;
export type Mailer = ReturnType<typeof createMailer>;
export type StatusDb = ReturnType<typeof createStatusDb>;
