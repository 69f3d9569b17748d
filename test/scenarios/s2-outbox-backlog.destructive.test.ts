/**
 * S2: orders and their events written in one document; Kafka stopped while a backlog builds
 * (the lag alert fires), then started: the relay drains it with its window bound kept, nothing
 * lost, nothing reordered per order, read back from the topic outside the SDK. Destructive: it
 * stops the shared Kafka, so it runs after the other files.
 */
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { runBacklogScenario } from '../../examples/scenarios/s2-outbox-backlog/scenario.js';
import { env } from '../support/env.js';

const ORDERS = Number(process.env.EO_S2_ORDERS ?? 5_000);
const infra = (...args: string[]) =>
  execFileSync('bash', ['scripts/infra.sh', ...args], { stdio: 'inherit' });

describe('S2: outbox backlog after a Kafka outage', () => {
  it(`${ORDERS} orders placed while Kafka is down: alert, bounded drain, none lost or reordered`, async () => {
    let kafkaDown = false;
    const t0 = performance.now();
    try {
      const result = await runBacklogScenario({
        mongoUrl: env.mongoJavaUrl,
        brokers: [...env.kafkaBrokers],
        orders: ORDERS,
        windowMax: 512,
        lagThreshold: Math.floor(ORDERS / 4),
        stopKafka: async () => {
          kafkaDown = true;
          infra('down', 'kafka');
        },
        startKafka: async () => {
          infra('up', 'kafka');
          kafkaDown = false;
        },
        // Printed as they come, so a run that hangs still shows the phase it reached.
        log: (line) => console.log(`[s2 ${((performance.now() - t0) / 1000).toFixed(1)}s] ${line}`),
      });
      console.log([JSON.stringify({ ...result, topic: undefined }), JSON.stringify(result.topic)].join('\n'));
      expect(result.alerts.length).toBeGreaterThan(0);
      expect(result.alerts[0]).toBeGreaterThan(Math.floor(ORDERS / 4));
      expect(result.recovered).toBe(true);
      expect(result.maxInFlight).toBeLessThanOrEqual(512);
      expect(result.topic.missing).toBe(0);
      expect(result.topic.outOfOrder).toBe(0);
      expect(result.topic.orders).toBe(ORDERS);
      // Without a relay crash only a round that failed after Kafka appended part of it (a broker
      // coming back, partitions getting their leaders one by one) is sent twice, in part.
      expect(result.topic.duplicates).toBeLessThanOrEqual(result.failedRounds * 512);
    } finally {
      if (kafkaDown) infra('up', 'kafka');
    }
  }, 600_000);
});
