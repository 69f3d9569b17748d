/**
 * S5, a late retry after Redis forgot: `npm run scenario -- s5-late-retry`.
 * Time is scaled: 2 s stand for Redis's 24 hours, 60 s for MongoDB's 30 days.
 */
import { runLateRetry } from './scenario.js';

const report = await runLateRetry({ log: (line) => console.log(`- ${line}`) });
const perRequest = (rows: readonly { requestId: string }[]) =>
  [...new Set(rows.map((r) => r.requestId))].map(
    (id) => `${id} ×${rows.filter((r) => r.requestId === id).length}`,
  );
console.log('\nB (billing) charges, from its ledger:      ', perRequest(report.billing).join(', '));
console.log('C (notification) emails, from its ledger: ', perRequest(report.notification).join(', '));
console.log('B on Redis alone, the same late retry:     ', `${report.redisOnly.effects} charges`);
const ok =
  report.billing.length === report.orders.length &&
  report.notification.length === report.orders.length &&
  report.lateRetry.billingDuplicates === 1 &&
  report.lateRetry.notificationDuplicates === 1 &&
  report.stuck.alert.some((e) => e.key.endsWith(report.stuck.requestId)) &&
  report.stuck.effects === 1;
console.log(
  ok ? 'OK: every order charged once and emailed once; the stuck order raised the alert' : 'NOT OK',
);
process.exitCode = ok ? 0 : 1;
