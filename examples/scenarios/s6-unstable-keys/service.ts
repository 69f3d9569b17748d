/**
 * The charge consumer: RabbitMQ, Redis store, one card charge per message. Deduplication is by
 * `x-idempotency-key`; `payloadGuard` adds the check of S6: the same payload under another key
 * within the window is flagged, or dead-lettered (`DUPLICATE_PAYLOAD`).
 */
import type { Logger, PayloadGuardOptions, ProcessedStore } from '@exactly-once/core';
import { createConsumer, type RabbitConsumer } from '@exactly-once/rabbitmq';
import type { ChargeRequest } from './keys.js';

export interface Charge {
  key: string;
  userId: string;
  amountCents: number;
}

/** The card statement: every charge, never deduplicated. */
export interface CardLedger {
  readonly charges: Charge[];
}

export function createChargeConsumer(options: {
  connection: string;
  queue: string;
  store: ProcessedStore;
  card: CardLedger;
  payloadGuard?: PayloadGuardOptions;
  logger?: Logger;
}): RabbitConsumer {
  return createConsumer<ChargeRequest>({
    connection: options.connection,
    queue: options.queue,
    consumer: 'charges',
    store: options.store,
    retryDelaysMs: [200],
    ...(options.payloadGuard ? { payloadGuard: options.payloadGuard } : {}),
    ...(options.logger ? { logger: options.logger } : {}),
    handler: async (request, ctx) => {
      options.card.charges.push({ key: ctx.key, userId: request.userId, amountCents: request.amountCents });
      return { charged: request.amountCents };
    },
  });
}
