/**
 * DESTRUCTIVE (restarts the shared RabbitMQ and Kafka brokers; `npm test` runs it alone, after
 * the other files): the soak of `npm run soak` (soak.ts), smaller. Every transport x store
 * combination, 1,000 messages each (300 on the MongoDB store: FerretDB 1.x serialises its writers,
 * and 500 took more than 2 minutes; the disturbances come at the same fractions of the run, so
 * only the quiet stretches are shorter), with duplicates, SIGKILLs at random pipeline points, one
 * worker SIGSTOPped past its lease, and a crash-restart of the soak's own store. To stay within a
 * few minutes, each broker is restarted once per transport, during one of its three combinations,
 * instead of once per combination as `npm run soak` does.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type SoakServers, startSoakServers } from './servers.js';
import { ALL_COMBINATIONS, combinationName, runSoak, type SoakRow, soakDetails, soakTable } from './soak.js';

const MESSAGES = Number(process.env.EO_SOAK_MESSAGES ?? 1_000);
/** Messages of a combination: 30% of MESSAGES on the MongoDB store (see above). */
const messagesOf = (store: string) => (store === 'mongo' ? Math.ceil(MESSAGES * 0.3) : MESSAGES);
const KILLS = Number(process.env.EO_SOAK_KILLS ?? 6);
/** The combination of each transport whose run restarts the broker. */
const BROKER_RESTART = new Set(['rabbitmq x mongo', 'kafka x redis']);

const root = fileURLToPath(new URL('../..', import.meta.url));
const run = promisify(execFile);
let servers: SoakServers | undefined;
const rows: SoakRow[] = [];

beforeAll(async () => {
  servers = await startSoakServers(['redis', 'redis-cluster', 'mongo']);
});

afterAll(async () => {
  await servers?.stop();
  if (rows.length) console.log(`\nSoak (messages per combination in the table)\n\n${soakTable(rows)}`);
  // Leave the brokers up for whatever runs next, even when a run failed half-way.
  await run('bash', ['scripts/infra.sh', 'up', 'rabbitmq', 'kafka'], { cwd: root, timeout: 300_000 });
}, 360_000);

describe('soak (destructive): SIGKILLs, a SIGSTOP, broker and store restarts, 8 racing workers', () => {
  for (const combination of ALL_COMBINATIONS) {
    const name = combinationName(combination);
    const messages = messagesOf(combination.store);
    it(`${name}: no duplicate effect, nothing lost, no double completion`, async () => {
      const row = await runSoak(combination, {
        messages,
        kills: KILLS,
        brokerRestart: BROKER_RESTART.has(name),
        servers: servers!,
        log: (line) => {
          if (process.env.EO_TEST_VERBOSE) console.log(line);
        },
      });
      rows.push(row);
      console.log(soakDetails(row));
      expect(row.problems, 'ledger lines the crash model does not explain').toEqual([]);
      expect(row.duplicateEffects, 'duplicate effects').toBe(0);
      expect(row.lost, 'lost').toBe(0);
      expect(row.doubleCompletions, 'double completions').toBe(0);
      expect(row.effects, 'one idempotent effect per key').toBe(messages);
      expect(row.outgoingDistinct, 'outgoing messages delivered').toBe(messages);
      expect(row.deadLettered, 'dead-lettered').toBe(0);
      // The disturbances did happen.
      expect(row.kills, 'SIGKILLs').toBeGreaterThanOrEqual(Math.min(KILLS, 4));
      expect(row.stops, 'SIGSTOP past the lease').toBe(1);
      expect(row.stoppedRunSuperseded, 'the stopped run reached its effect and was superseded').toBe(true);
      expect(row.storeRestarts, 'store restarts').toBe(1);
      expect(row.brokerRestarts, 'broker restarts').toBe(BROKER_RESTART.has(name) ? 1 : 0);
    }, 900_000);
  }
});
