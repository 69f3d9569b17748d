/**
 * Added latency per message without a broker and without concurrency: the same delivery objects
 * go one at a time through the raw handler (decode + handler), the SDK's `processor.process` on
 * each store, and the Powertools-wrapped handler. Broker costs are the same for all variants, so
 * they are left out; what remains is the SDK's own time per message and its store round trips.
 * Under load (the consume runs) latency also includes queueing behind other messages in flight.
 */
import { createProcessor, type Processor } from '@exactly-once/core';
import type { Delivery } from '@exactly-once/core/spi';
import type { PowertoolsKit } from './powertools.js';
import type { Progress } from './progress.js';
import { Durations, median, rotate } from './stats.js';
import type { StoreKind, StoreKit } from './stores.js';
import { handler, message, type Order } from './workload.js';

export const LATENCY_VARIANTS = ['raw', 'sdk-memory', 'sdk-redis', 'sdk-mongo', 'powertools'] as const;
export type LatencyVariant = (typeof LATENCY_VARIANTS)[number];

export interface LatencyRound {
  variant: LatencyVariant;
  round: number;
  messages: number;
  p50Us: number;
  p99Us: number;
  storeCallsPerMsg?: number;
  storeCalls?: Record<string, number>;
}

export interface LatencySummary {
  variant: LatencyVariant;
  p50Us: number;
  p99Us: number;
  addedP50Us: number;
  addedP99Us: number;
  storeCallsPerMsg: number;
}

const deliveryOf = (batch: string, i: number): Delivery => {
  const m = message(batch, i);
  return { body: m.body, headers: m.headers, destination: 'bench', system: 'bench' };
};

export async function runLatency(
  options: { rounds: number; messages: number; mongoMessages: number; variants: readonly LatencyVariant[] },
  kits: { stores: StoreKit; powertools: PowertoolsKit },
  progress: Progress,
): Promise<LatencyRound[]> {
  const rounds: LatencyRound[] = [];
  for (let round = 0; round < options.rounds; round++) {
    for (const variant of rotate(options.variants, round)) {
      const n = variant === 'sdk-mongo' ? options.mongoMessages : options.messages;
      const batch = `lat-${kits.stores.runId}-${round}-${variant}`;
      const durations = new Durations(n);
      let done = 0;
      const task = progress.track(`latency ${variant} r${round + 1}`, n, () => done);
      const kind = variant.startsWith('sdk-') ? (variant.slice(4) as StoreKind) : undefined;
      const store = kind ? await kits.stores.make(kind) : undefined;
      const pt =
        variant === 'powertools' ? await kits.powertools.make(handler, kits.stores.redis) : undefined;
      let processor: Processor | undefined;
      if (store) {
        processor = createProcessor<Order>({
          consumer: 'bench',
          store: store.store,
          handler,
          retentionMs: 3_600_000,
          retentionCheck: 'off',
        });
      }
      try {
        for (let i = 0; i < n; i++) {
          const d = deliveryOf(batch, i);
          const t = performance.now();
          if (processor) {
            const result = await processor.process(d);
            if (result.action !== 'ack') throw new Error(`latency ${variant}: ${result.outcome}`);
          } else {
            const payload = JSON.parse(Buffer.from(d.body).toString()) as Order;
            if (pt) await pt.handle({ key: String(d.headers['x-idempotency-key']), payload });
            else await handler(payload);
          }
          durations.add((performance.now() - t) * 1000);
          done++;
        }
      } finally {
        task.stop();
        await store?.cleanup();
        await pt?.cleanup();
      }
      const { p50, p99 } = durations.summary();
      const r: LatencyRound = { variant, round: round + 1, messages: n, p50Us: p50, p99Us: p99 };
      if (store) {
        r.storeCalls = { ...store.calls };
        r.storeCallsPerMsg = store.total() / n;
      } else if (pt) {
        r.storeCalls = { ...pt.calls };
        r.storeCallsPerMsg = pt.total() / n;
      }
      rounds.push(r);
    }
  }
  return rounds;
}

export function summarizeLatency(rounds: readonly LatencyRound[]): LatencySummary[] {
  const raw = (round: number) => rounds.find((r) => r.variant === 'raw' && r.round === round);
  return LATENCY_VARIANTS.flatMap((variant) => {
    const rs = rounds.filter((r) => r.variant === variant);
    if (rs.length === 0) return [];
    const added = (f: (r: LatencyRound) => number) =>
      median(rs.map((r) => (raw(r.round) ? f(r) - f(raw(r.round) as LatencyRound) : Number.NaN)));
    return [
      {
        variant,
        p50Us: median(rs.map((r) => r.p50Us)),
        p99Us: median(rs.map((r) => r.p99Us)),
        addedP50Us: added((r) => r.p50Us),
        addedP99Us: added((r) => r.p99Us),
        storeCallsPerMsg: median(rs.map((r) => r.storeCallsPerMsg ?? Number.NaN)),
      },
    ];
  });
}
