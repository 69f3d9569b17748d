/**
 * A fake card processor with its own ledger. It does **not** deduplicate: every call charges the
 * card again, like a processor without idempotency keys (or whose key window has passed). So its
 * ledger counts what really happened to the customer's card, whatever the API in front of it
 * believes.
 */
import { randomUUID } from 'node:crypto';

export interface ChargeRequest {
  customerId: string;
  amountCents: number;
  currency: string;
  /** Sent along for the record; this processor ignores it (the worst case). */
  idempotencyKey: string;
}

export interface Charge {
  transactionId: string;
  customerId: string;
  amountCents: number;
  currency: string;
  idempotencyKey: string;
}

export interface CardProcessor {
  charge(request: ChargeRequest): Promise<Charge>;
  /** Every charge made, in order: the card statement. */
  readonly ledger: readonly Charge[];
  /**
   * Holds every charge after it is made until `release()` is called (to keep a request in
   * flight while a duplicate arrives). Returns `release`.
   */
  hold(): () => void;
}

export function createCardProcessor(options: { latencyMs?: number } = {}): CardProcessor {
  const ledger: Charge[] = [];
  let gate: Promise<void> | undefined;
  return {
    ledger,
    async charge(request) {
      await new Promise((r) => setTimeout(r, options.latencyMs ?? 5));
      const charge: Charge = { transactionId: `txn_${randomUUID().slice(0, 8)}`, ...request };
      ledger.push(charge);
      if (gate) await gate;
      return charge;
    },
    hold() {
      let release = () => {};
      gate = new Promise<void>((r) => {
        release = () => {
          gate = undefined;
          r();
        };
      });
      return release;
    },
  };
}
