/**
 * The verification table: what the outside world saw (the client's answers, the provider's
 * charges, the email API's sends, the dead-letter queues) against what exactly-once requires,
 * plus each service's own outcome counters.
 */
import { createFsBlobStore } from '@exactly-once/core';
import type { ProviderState } from '../billing/payment-provider.js';
import type { SinkState } from '../notification/email-sink.js';
import { RECEIPT_BYTES } from '../shared/config.js';
import type { OrderResult } from './traffic.js';

export interface Row {
  label: string;
  expected: string;
  actual: string;
  /** undefined: informational. */
  ok?: boolean;
}

export interface Observed {
  results: OrderResult[];
  missingKey: { sent: number; rejected400: number };
  provider: ProviderState;
  sink: SinkState;
  deadLetters: { billing: number; notification: number };
  outcomes: Record<'order' | 'billing' | 'notification', Record<string, number>>;
  injected: {
    rabbitDuplicates: number;
    kafkaDuplicates: number;
    tamperedRabbit: number;
    tamperedKafka: number;
  };
  /** Orders whose trace shows billing or notification completing the key twice. */
  completedTwice: { billing: number; notification: number };
  killed: { billing: number; notification: number };
  blobDir: string;
  crashes: string[];
}

const countBy = <T>(items: T[], key: (t: T) => string) => {
  const m = new Map<string, number>();
  for (const i of items) m.set(key(i), (m.get(key(i)) ?? 0) + 1);
  return m;
};

export async function buildTable(o: Observed): Promise<Row[]> {
  const accepted = o.results.filter((r) => r.orderId !== undefined);
  const byOrder = new Map(accepted.map((r) => [r.orderId as string, r]));
  const n = o.results.length;
  const rows: Row[] = [];
  const exact = (label: string, expected: number, actual: number) =>
    rows.push({ label, expected: String(expected), actual: String(actual), ok: expected === actual });
  const atLeast = (label: string, min: number, actual: number) =>
    rows.push({ label, expected: `>= ${min}`, actual: String(actual), ok: actual >= min });
  const info = (label: string, actual: number | string) =>
    rows.push({ label, expected: '', actual: String(actual) });

  exact('orders accepted (201)', n, accepted.length);
  exact(
    'client answers not as expected',
    0,
    o.results.reduce((s, r) => s + r.problems.length, 0),
  );
  info(
    'answers replayed from the store',
    o.results.reduce((s, r) => s + r.replayed, 0),
  );
  exact(
    'key reused with another body -> 422',
    o.results.filter((r) => r.plan.conflict).length,
    o.results.reduce((s, r) => s + r.rejected422, 0),
  );
  exact('no Idempotency-Key -> 400', o.missingKey.sent, o.missingKey.rejected400);
  info('HTTP requests sent', o.results.reduce((s, r) => s + r.requests, 0) + o.missingKey.sent);

  const charges = countBy(o.provider.charges, (c) => c.orderId);
  exact('charges made at the provider', n, o.provider.charges.length);
  atLeast('charge requests at the provider', o.provider.charges.length, o.provider.stats.requests);
  info('  of which answered from its key store', o.provider.stats.replays);
  exact(
    'orders not charged exactly once',
    0,
    accepted.filter((r) => charges.get(r.orderId as string) !== 1).length,
  );
  exact(
    'charges for unknown orders or amounts',
    0,
    o.provider.charges.filter((c) => byOrder.get(c.orderId)?.plan.body.amountCents !== c.amountCents).length,
  );

  const emails = countBy(o.sink.emails, (e) => e.orderId);
  const chargeOf = new Map(o.provider.charges.map((c) => [c.orderId, c.id]));
  exact('emails sent', n, o.sink.emails.length);
  info('email requests at the email API', o.sink.stats.requests);
  exact(
    'orders not emailed exactly once',
    0,
    accepted.filter((r) => emails.get(r.orderId as string) !== 1).length,
  );
  exact(
    "emails without their order's charge",
    0,
    o.sink.emails.filter((e) => chargeOf.get(e.orderId) !== e.chargeId).length,
  );

  const blobs = createFsBlobStore({ directory: o.blobDir });
  const itemized = accepted.filter((r) => r.plan.body.receipt === 'itemized');
  let verified = 0;
  for (const e of o.sink.emails.filter((x) => byOrder.get(x.orderId)?.plan.body.receipt === 'itemized')) {
    // get() checks size and sha256 against the pointer.
    const bytes = e.receipt ? await blobs.get(e.receipt).catch(() => undefined) : undefined;
    if (bytes && bytes.byteLength >= RECEIPT_BYTES) verified++;
  }
  exact(
    `${(RECEIPT_BYTES / 2 ** 20).toFixed(0)} MiB receipts by reference, verified`,
    itemized.length,
    verified,
  );

  const dup = (s: keyof Observed['outcomes']) => o.outcomes[s].duplicate ?? 0;
  const replays = o.results.filter((r) => r.plan.replay).length;
  const concurrentCopies = 2 * o.results.filter((r) => r.plan.concurrent).length;
  atLeast('duplicates stopped: order (A)', replays + concurrentCopies, dup('order'));
  atLeast('duplicates stopped: billing (B)', o.injected.rabbitDuplicates, dup('billing'));
  atLeast('duplicates stopped: notification (C)', o.injected.kafkaDuplicates, dup('notification'));
  exact('keys completed twice: billing (B), traces', 0, o.completedTwice.billing);
  exact('keys completed twice: notification (C), traces', 0, o.completedTwice.notification);
  for (const s of ['billing', 'notification'] as const) {
    const takeovers = o.outcomes[s].takeover ?? 0;
    if (o.killed[s] > 0) atLeast(`takeovers after SIGKILL: ${s}`, o.killed[s], takeovers);
    else info(`takeovers: ${s}`, takeovers);
  }
  exact('dead letters: billing (tampered copies)', o.injected.tamperedRabbit, o.deadLetters.billing);
  exact('dead letters: notification (tampered copies)', o.injected.tamperedKafka, o.deadLetters.notification);
  exact('services that crashed on their own', 0, o.crashes.length);
  return rows;
}

export function printTable(rows: Row[]): void {
  const w = Math.max(...rows.map((r) => r.label.length));
  const line = (a: string, b: string, c: string, d: string) =>
    console.log(`  ${a.padEnd(w)}  ${b.padStart(9)}  ${c.padStart(7)}  ${d}`);
  line('check', 'expected', 'actual', '');
  line('-'.repeat(w), '-'.repeat(9), '-'.repeat(7), '');
  for (const r of rows) line(r.label, r.expected, r.actual, r.ok === undefined ? '' : r.ok ? 'ok' : 'FAIL');
}
