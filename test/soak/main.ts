/**
 * `npm run soak`: every transport x store combination (or those named), 10,000 messages each by
 * default, one after the other, with the soak's own store servers started for the run and stopped
 * at its end. Prints each combination's details as it ends, then the table of all.
 *
 *   npm run soak -- [--messages N] [--kills N] [--workers N] [--only rabbitmq:redis,kafka:mongo]
 *                   [--mongo-server ferretdb|mongo-java] [--no-broker-restart] [--no-store-restart]
 *                   [--no-pause]
 *
 * Exits 1 when a combination had a duplicate effect, a lost message, a double completion or a
 * ledger line the crash model does not explain.
 */

import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { DEFAULT_PORTS, type StoreKind, startSoakServers } from './servers.js';
import {
  ALL_COMBINATIONS,
  type Combination,
  combinationName,
  runSoak,
  type SoakRow,
  soakDetails,
  soakTable,
} from './soak.js';

const { values } = parseArgs({
  options: {
    messages: { type: 'string', default: '10000' },
    kills: { type: 'string', default: '20' },
    workers: { type: 'string', default: '8' },
    only: { type: 'string' },
    'mongo-server': { type: 'string', default: 'ferretdb' },
    'no-broker-restart': { type: 'boolean', default: false },
    'no-store-restart': { type: 'boolean', default: false },
    'no-pause': { type: 'boolean', default: false },
  },
});

const combinations: Combination[] = values.only
  ? values.only.split(',').map((c) => {
      const [transport, store] = c.split(':') as [Combination['transport'], StoreKind];
      const found = ALL_COMBINATIONS.find((x) => x.transport === transport && x.store === store);
      if (!found) throw new Error(`unknown combination ${c} (transport:store, e.g. kafka:redis-cluster)`);
      return found;
    })
  : [...ALL_COMBINATIONS];

const log = (line: string) => console.log(line);
const mongoServer = values['mongo-server'];
if (mongoServer !== 'ferretdb' && mongoServer !== 'mongo-java')
  throw new Error(`--mongo-server must be ferretdb or mongo-java (got ${mongoServer})`);
const servers = await startSoakServers(
  combinations.map((c) => c.store),
  DEFAULT_PORTS,
  mongoServer,
);
// Interrupted (Ctrl-C, kill): stop the soak's servers; the workers exit when this process does
// (their IPC channel closes).
for (const signal of ['SIGINT', 'SIGTERM'] as const)
  process.once(signal, () => {
    log(`\n${signal}: stopping the soak's servers`);
    void servers.stop().finally(() => process.exit(signal === 'SIGINT' ? 130 : 143));
  });
if (combinations.some((c) => c.store === 'mongo')) log(`MongoDB store on ${mongoServer}`);
const rows: SoakRow[] = [];
const t0 = Date.now();
let failed = false;
const load = () =>
  loadavg()
    .map((l) => l.toFixed(2))
    .join(' ');
try {
  for (const c of combinations) {
    log(`\n== ${combinationName(c)}: ${values.messages} messages (load ${load()})`);
    const row = await runSoak(c, {
      messages: Number(values.messages),
      kills: Number(values.kills),
      workers: Number(values.workers),
      brokerRestart: !values['no-broker-restart'],
      storeRestart: !values['no-store-restart'],
      pause: !values['no-pause'],
      servers,
      log,
    });
    rows.push(row);
    log(soakDetails(row));
    if (row.duplicateEffects || row.lost || row.doubleCompletions || row.problems.length) failed = true;
  }
} catch (error) {
  failed = true;
  throw error;
} finally {
  const kept = await servers.stop({ keepLogs: failed });
  if (kept) log(`the soak servers' logs: ${kept}`);
}
log(`\nSoak, ${((Date.now() - t0) / 60_000).toFixed(1)} min in all (load ${load()}):\n`);
log(soakTable(rows));
process.exit(failed ? 1 : 0);
