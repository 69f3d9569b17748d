/**
 * The daily reconciliation: the provider's statement against our payments table, and the
 * charges still pending (IN_PROGRESS in the processed-store) for longer than a threshold.
 */
import { findStuck, type InProgressEntry, type ProcessedStore } from '@exactly-once/core';
import type { Provider, ProviderCharge } from './provider.js';
import { CONSUMER, type PaymentRecord, type PaymentRecords } from './service.js';

export interface ReconciliationReport {
  /** Charged at the provider under a key we have no payment for: recover or refund. */
  providerOnly: ProviderCharge[];
  /** Payments we recorded that the provider does not know: alert (error or fraud). */
  oursOnly: PaymentRecord[];
  /** Idempotency keys the provider charged more than once: refund the extra charges. */
  chargedTwice: { idempotencyKey: string; charges: ProviderCharge[] }[];
  /** Same key, different amount or transaction id. */
  mismatched: { ours: PaymentRecord; provider: ProviderCharge }[];
  /** Charges whose current attempt started more than `pendingOlderThanMs` ago. */
  stuck: InProgressEntry[];
}

export async function dailyReconciliation(args: {
  provider: Provider;
  records: PaymentRecords;
  store: ProcessedStore;
  /** 24 h in production; the example uses seconds. */
  pendingOlderThanMs: number;
}): Promise<ReconciliationReport> {
  const [charges, ours, stuck] = await Promise.all([
    args.provider.listCharges(),
    args.records.list(),
    findStuck(args.store, { consumer: CONSUMER, olderThanMs: args.pendingOlderThanMs }),
  ]);
  const byKey = new Map<string, ProviderCharge[]>();
  for (const c of charges) byKey.set(c.idempotencyKey, [...(byKey.get(c.idempotencyKey) ?? []), c]);
  const ourKeys = new Set(ours.map((r) => r.chargeKey));
  const report: ReconciliationReport = {
    providerOnly: [],
    oursOnly: [],
    chargedTwice: [],
    mismatched: [],
    stuck,
  };
  for (const [idempotencyKey, list] of byKey) {
    if (!ourKeys.has(idempotencyKey)) report.providerOnly.push(...list);
    if (list.length > 1) report.chargedTwice.push({ idempotencyKey, charges: list });
  }
  for (const record of ours) {
    const first = byKey.get(record.chargeKey)?.[0];
    if (!first) report.oursOnly.push(record);
    else if (first.id !== record.transactionId || first.amountCents !== record.amountCents)
      report.mismatched.push({ ours: record, provider: first });
  }
  return report;
}
