/**
 * The charge service: a RabbitMQ consumer of pending charges. The charge is a journaled step with
 * `reconcile`: before calling the provider the step journals that it started; a later attempt
 * that finds it started but not done (the answer was lost, or the worker died) asks the provider
 * by the charge's idempotency key instead of charging blind. The provider's answer is encrypted,
 * so the transaction id always comes from that lookup, never from the answer.
 */
import type { Logger, ProcessedStore, RetryPolicyOptions } from '@exactly-once/core';
import { createConsumer, type RabbitConsumer } from '@exactly-once/rabbitmq';
import type { Redis } from 'ioredis';
import type { Provider, ProviderCharge } from './provider.js';

/** A charge to make: the message body. The message's `x-idempotency-key` is the payment id. */
export interface PendingCharge {
  paymentId: string;
  customerId: string;
  amountCents: number;
}

/** Our record of a payment, written once the charge is known. */
export interface PaymentRecord {
  paymentId: string;
  /** The key the charge was made under (`ctx.keyFor('charge')`). */
  chargeKey: string;
  transactionId: string;
  customerId: string;
  amountCents: number;
  /** `charged`: this run charged; `reconciled`: an earlier run did, found at the provider. */
  via: 'charged' | 'reconciled';
}

/** Our payments table (a Redis hash here): what the daily reconciliation compares. */
export interface PaymentRecords {
  save(record: PaymentRecord): Promise<void>;
  list(): Promise<PaymentRecord[]>;
}

export function createPaymentRecords(redis: Redis, name: string): PaymentRecords {
  const key = `${name}:payments`;
  return {
    async save(record) {
      await redis.hset(key, record.paymentId, JSON.stringify(record));
    },
    async list() {
      return Object.values(await redis.hgetall(key)).map((j) => JSON.parse(j) as PaymentRecord);
    },
  };
}

/** The charge step's journaled result. */
type Charge = Pick<PaymentRecord, 'transactionId' | 'amountCents' | 'via'>;

export const CONSUMER = 'charges';

export interface ChargeServiceOptions {
  connection: string;
  queue: string;
  store: ProcessedStore;
  provider: Provider;
  records: PaymentRecords;
  leaseMs?: number;
  retry?: RetryPolicyOptions;
  retryDelaysMs?: number[];
  logger?: Logger;
}

export function createChargeService(options: ChargeServiceOptions): RabbitConsumer {
  const { provider, records } = options;
  const asCharge = (found: ProviderCharge, via: PaymentRecord['via']): Charge => ({
    transactionId: found.id,
    amountCents: found.amountCents,
    via,
  });
  return createConsumer<PendingCharge>({
    connection: options.connection,
    queue: options.queue,
    consumer: CONSUMER,
    store: options.store,
    prefetch: 10,
    leaseMs: options.leaseMs ?? 5_000,
    retry: options.retry ?? { maxAttempts: 5, initialDelayMs: 200, maxDelayMs: 1_000 },
    retryDelaysMs: options.retryDelaysMs ?? [200, 1_000],
    ...(options.logger ? { logger: options.logger } : {}),
    handler: async (pending, ctx) => {
      const chargeKey = ctx.keyFor('charge');
      const charge = await ctx.step<Charge>(
        'charge',
        async (signal) => {
          // The answer is sealed: we cannot read the transaction id from it...
          await provider.charge(
            { idempotencyKey: chargeKey, customerId: pending.customerId, amountCents: pending.amountCents },
            signal,
          );
          // ...so we verify the charge by its idempotency key, as reconcile does.
          const found = await provider.findByIdempotencyKey(chargeKey);
          if (!found) throw new Error(`the provider answered but has no charge under ${chargeKey}`);
          return asCharge(found, 'charged');
        },
        {
          // An earlier attempt started this step and never journaled its result: ask first.
          reconcile: async ({ key }) => {
            const found = await provider.findByIdempotencyKey(key);
            return found ? { done: true, value: asCharge(found, 'reconciled') } : { done: false };
          },
        },
      );
      await records.save({
        paymentId: pending.paymentId,
        chargeKey,
        customerId: pending.customerId,
        ...charge,
      });
      return charge;
    },
  });
}
