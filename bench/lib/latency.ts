/**
 * Added latency per message without a broker and without concurrency: the same delivery objects
 * go one at a time through the raw handler (decode + handler), the SDK's `processor.process` on
 * each store, and the Powertools-wrapped handler. Broker costs are the same for all variants, so
 * they are left out; what remains is the SDK's own time per message and its store round trips.
 * Under load (the consume runs) latency also includes queueing behind other messages in flight.
 *
 * Each round first times `PING` on the stores' Redis client(s): the round trip the SDK's added
 * latency is compared with (its target is at most two of them).
 */
import { createProcessor, type Processor } from '@exactly-once/core';
import type { Delivery } from '@exactly-once/core/spi';
import { CONSUME_VARIANTS, storeOf } from './consume.js';
import type { PowertoolsKit } from './powertools.js';
import type { Progress } from './progress.js';
import { Durations, median, rotate } from './stats.js';
import { isMongo, pingRtt, type StoreKit } from './stores.js';
import { handler, message, type Order } from './workload.js';

/** The consume variants, minus the broker. */
export const LATENCY_VARIANTS = CONSUME_VARIANTS;
export type LatencyVariant = (typeof LATENCY_VARIANTS)[number];

/** PING round trips of one round, µs: on the standalone server, and on the cluster when measured. */
export interface PingRound {
  round: number;
  pings: number;
  redisP50Us: number;
  redisP99Us: number;
  clusterP50Us?: number;
  clusterP99Us?: number;
}

export interface PingSummary {
  pings: number;
  /** Median over rounds of each round's median PING round trip. */
  redisP50Us: number;
  clusterP50Us: number;
}

export interface LatencyResult {
  rounds: LatencyRound[];
  pings: PingRound[];
}

export interface LatencyRound {
  variant: LatencyVariant;
  round: number;
  messages: number;
  p50Us: number;
  p99Us: number;
  storeCallsPerMsg?: number;
  storeCalls?: Record<string, number>;
  batchKeys?: Record<string, number>;
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
  options: {
    rounds: number;
    messages: number;
    mongoMessages: number;
    variants: readonly LatencyVariant[];
    pings: number;
  },
  kits: { stores: StoreKit; powertools: PowertoolsKit },
  progress: Progress,
): Promise<LatencyResult> {
  const rounds: LatencyRound[] = [];
  const pings: PingRound[] = [];
  for (let round = 0; round < options.rounds; round++) {
    const redis = await pingRtt(kits.stores.redis, options.pings);
    const ping: PingRound = {
      round: round + 1,
      pings: options.pings,
      redisP50Us: redis.p50Us,
      redisP99Us: redis.p99Us,
    };
    if (options.variants.includes('sdk-redis-cluster')) {
      const cluster = await pingRtt(await kits.stores.redisCluster(), options.pings);
      ping.clusterP50Us = cluster.p50Us;
      ping.clusterP99Us = cluster.p99Us;
    }
    pings.push(ping);
    progress.note(
      `latency r${round + 1} PING p50 ${redis.p50Us.toFixed(1)} us` +
        (ping.clusterP50Us === undefined ? '' : `, cluster ${ping.clusterP50Us.toFixed(1)} us`),
    );
    for (const variant of rotate(options.variants, round)) {
      const kind = storeOf(variant);
      const n = isMongo(kind) ? options.mongoMessages : options.messages;
      const batch = `lat-${kits.stores.runId}-${round}-${variant}`;
      const durations = new Durations(n);
      let done = 0;
      const task = progress.track(`latency ${variant} r${round + 1}`, n, () => done);
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
        r.batchKeys = { ...store.batchKeys };
      } else if (pt) {
        r.storeCalls = { ...pt.calls };
        r.storeCallsPerMsg = pt.total() / n;
      }
      rounds.push(r);
    }
  }
  return { rounds, pings };
}

export function summarizePings(pings: readonly PingRound[]): PingSummary {
  return {
    pings: pings[0]?.pings ?? 0,
    redisP50Us: median(pings.map((p) => p.redisP50Us)),
    clusterP50Us: median(pings.map((p) => p.clusterP50Us ?? Number.NaN)),
  };
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
