/**
 * S5, A -> B -> C and a retry after Redis forgot (examples/scenarios/s5-late-retry), on the real
 * servers: RabbitMQ into B, Kafka into C, Redis + FerretDB as the tiered store. Injected: an
 * immediate client retry, a client retry and a Kafka replay after the hot tier's retention
 * passed, the same late retry against a B on Redis alone, and an order whose handler blocks.
 * Counted outside the SDK: each service's own ledger of effects, with the request id on each row.
 */
import { describe, expect, it } from 'vitest';
import { runLateRetry } from '../../examples/scenarios/s5-late-retry/scenario.js';

describe('S5: a late retry is answered from the cold tier', () => {
  it('charges and emails each order once, end to end, whatever comes back late; a stuck order raises the alert', async () => {
    const report = await runLateRetry({ orders: 3, log: (line) => console.log(line) });

    // The retention check counts the cold tier: Redis alone (2 s) is refused at start.
    expect(report.retentionCheck.redisOnly).toMatch(/^ConfigError: .*retentionMs \(2000 ms\) is shorter/);

    // One charge and one email per order, each row carrying the client's request id.
    const ids = (rows: readonly { requestId: string }[]) => rows.map((r) => r.requestId).sort();
    expect(report.billing).toHaveLength(report.orders.length);
    expect(report.notification).toHaveLength(report.orders.length);
    expect(new Set(ids(report.billing)).size).toBe(report.orders.length);
    expect(ids(report.notification)).toEqual(ids(report.billing));
    for (const row of report.billing) expect(row.requestId).toMatch(new RegExp(`-${row.orderId}$`));

    // The immediate retry was answered by Redis; the late ones by MongoDB after Redis forgot.
    expect(report.immediateRetry.billingDuplicates).toBeGreaterThanOrEqual(1);
    expect(report.lateRetry.billingHotForgot).toBe(true);
    expect(report.lateRetry.notificationHotForgot).toBe(true);
    expect(report.lateRetry.billingDuplicates).toBe(1);
    expect(report.lateRetry.notificationDuplicates).toBe(1);

    // Without the cold tier the same late retry charges again: the failure is real.
    expect(report.redisOnly.effects).toBe(2);

    // The blocked order was named by the stuck alert, then completed once and left no stuck record.
    expect(report.stuck.alert.map((e) => e.key)).toContain(`default:billing:${report.stuck.requestId}`);
    expect(report.stuck.effects).toBe(1);
    expect(report.stuck.afterRelease).toBe(0);
  }, 180_000);
});
