/**
 * The renewal consumer (RabbitMQ, Redis store): Payment -> Email -> Status as three journaled
 * steps, each with its own policy.
 *
 * - payment: exactly once. Made with `ctx.keyFor('payment')`, and reconciled by that key if an
 *   earlier attempt started it and never journaled the answer;
 * - email: the first try and 5 retries with backoff, then give up and carry on (`onGiveUp:
 *   'continue'`): the give-up is journaled (never re-sent by a later attempt), reported through
 *   `onStepEvent`, and the subscription is marked `receiptPending`;
 * - status: retried until it works; `onStepEvent` gets an `alert` after 10 failures.
 */
import type { Logger, ProcessedStore, StepEvent } from '@exactly-once/core';
import { createConsumer, type RabbitConsumer } from '@exactly-once/rabbitmq';
import type { Billing, BillingCharge, Mailer, StatusDb } from './fakes.js';

export interface Renewal {
  renewalId: string;
  subscriptionId: string;
  customerId: string;
  email: string;
  amountCents: number;
}

export interface RenewalResult {
  paymentId: string;
  receiptSent: boolean;
  /** The receipt email gave up: the customer sees "receipt pending", support follows up. */
  receiptPending: boolean;
}

export const CONSUMER = 'renewals';

/** Delays between retries. Production values by default; tests shrink them. */
export interface RenewalTiming {
  /** Email: 1 s, 2 s, 4 s, 8 s, 16 s between the 6 tries. */
  emailInitialDelayMs: number;
  /** Status: every 10 s until it works. */
  statusDelayMs: number;
}

export const PRODUCTION_TIMING: RenewalTiming = { emailInitialDelayMs: 1_000, statusDelayMs: 10_000 };

export function createRenewalConsumer(options: {
  connection: string;
  queue: string;
  store: ProcessedStore;
  billing: Billing;
  mailer: Mailer;
  statusDb: StatusDb;
  onStepEvent: (event: StepEvent) => void;
  timing?: RenewalTiming;
  leaseMs?: number;
  logger?: Logger;
}): RabbitConsumer {
  const { billing, mailer, statusDb } = options;
  const timing = options.timing ?? PRODUCTION_TIMING;
  return createConsumer<Renewal, RenewalResult>({
    connection: options.connection,
    queue: options.queue,
    consumer: CONSUMER,
    store: options.store,
    prefetch: 10,
    leaseMs: options.leaseMs ?? 10_000,
    retryDelaysMs: [1_000, 5_000],
    onStepEvent: options.onStepEvent,
    ...(options.logger ? { logger: options.logger } : {}),
    handler: async (renewal, ctx) => {
      const payment = await ctx.step<BillingCharge>(
        'payment',
        () =>
          billing.charge({
            key: ctx.keyFor('payment'),
            customerId: renewal.customerId,
            amountCents: renewal.amountCents,
          }),
        {
          reconcile: async ({ key }) => {
            const found = await billing.findCharge(key);
            return found ? { done: true, value: found } : { done: false };
          },
        },
      );
      const email = await ctx.step<{ sent: boolean; messageId?: string }>(
        'email',
        async () => {
          const { messageId } = await mailer.sendReceipt({
            to: renewal.email,
            renewalId: renewal.renewalId,
            key: ctx.keyFor('email'),
          });
          return { sent: true, messageId };
        },
        {
          retry: {
            maxAttempts: 6,
            initialDelayMs: timing.emailInitialDelayMs,
            multiplier: 2,
            jitter: 'none',
          },
          onGiveUp: 'continue',
          fallback: { sent: false },
        },
      );
      await ctx.step(
        'status',
        () =>
          statusDb.activate(renewal.subscriptionId, { paymentId: payment.id, receiptPending: !email.sent }),
        {
          retry: {
            maxAttempts: Number.MAX_SAFE_INTEGER,
            initialDelayMs: timing.statusDelayMs,
            maxDelayMs: timing.statusDelayMs,
            jitter: 'none',
          },
          alertAfter: 10,
        },
      );
      return { paymentId: payment.id, receiptSent: email.sent, receiptPending: !email.sent };
    },
  });
}
