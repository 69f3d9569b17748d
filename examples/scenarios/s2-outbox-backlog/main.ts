/**
 * `npm run scenario -- s2-outbox-backlog [--orders 100000]`: stops and restarts the local Kafka
 * (scripts/infra.sh) while 100,000 orders are placed, then prints what the relay did.
 */
import { execFileSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { runBacklogScenario } from './scenario.js';

const { values } = parseArgs({
  options: {
    orders: { type: 'string', default: '100000' },
    window: { type: 'string', default: '2048' },
    'lag-threshold': { type: 'string', default: '10000' },
    mongo: { type: 'string', default: process.env.EO_MONGO_JAVA_URL ?? 'mongodb://127.0.0.1:27018' },
    brokers: { type: 'string', default: process.env.EO_KAFKA_BROKERS ?? '127.0.0.1:9092' },
  },
});
const infra = (...args: string[]) =>
  execFileSync('bash', ['scripts/infra.sh', ...args], { stdio: 'inherit' });

const result = await runBacklogScenario({
  mongoUrl: values.mongo,
  brokers: values.brokers.split(','),
  orders: Number(values.orders),
  windowMax: Number(values.window),
  lagThreshold: Number(values['lag-threshold']),
  stopKafka: async () => {
    infra('down', 'kafka');
  },
  startKafka: async () => {
    infra('up', 'kafka');
  },
  log: (line) => console.log(line),
});
const t = result.topic;
console.table({
  'events written with their orders': result.events,
  'lag alerts (lag when raised)': result.alerts.join(', '),
  'alert cleared after the drain': result.recovered,
  'max messages in flight / window': `${result.maxInFlight} / ${result.windowMax}`,
  'rounds not confirmed (retried)': result.failedRounds,
  'drain, messages/s': Math.round(result.drainRate),
  'raw confirmed publish, messages/s': Math.round(result.rawRate),
  'drain / raw': (result.drainRate / result.rawRate).toFixed(2),
  'orders missing an event': t.missing,
  'orders with events out of order': t.outOfOrder,
  'events sent twice': t.duplicates,
});
const ok =
  t.missing === 0 && t.outOfOrder === 0 && result.maxInFlight <= result.windowMax && result.alerts.length > 0;
console.log(ok ? 'PASS' : 'FAIL');
process.exitCode = ok ? 0 : 1;
