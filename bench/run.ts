/**
 * `npm run bench [-- options]`: consume throughput against the raw clients and AWS Powertools,
 * added latency, storage per key and outbox drain (and, on request, the Mongo store as records
 * accumulate). Prints tables on stdout, progress on stderr, and writes everything measured to
 * bench/out/<timestamp>.json. See README.md for the method. `npm run bench` builds the packages
 * first, and this runs on their dist/ JavaScript: the code an application installs.
 */
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_PREFETCH } from '@exactly-once/rabbitmq';
import { Command, InvalidArgumentError, Option } from 'commander';
import {
  ACCUMULATION_SERVERS,
  type AccumulationResult,
  type AccumulationServer,
  runAccumulation,
} from './lib/accumulation.js';
import {
  type Broker,
  CONSUME_VARIANTS,
  type ConsumeRound,
  type ConsumeVariant,
  type Driver,
  isConfluent,
  runConsume,
  summarizeConsume,
} from './lib/consume.js';
import { benchDir, env, machineInfo, sampleLoad } from './lib/env.js';
import { KafkaDriver } from './lib/kafka.js';
import { type LatencyResult, runLatency, summarizeLatency, summarizePings } from './lib/latency.js';
import { OUTBOX_VARIANTS, type OutboxRound, runOutbox, summarizeOutbox } from './lib/outbox.js';
import { type RelayRound, relayTable, runOutboxRelay, summarizeRelay } from './lib/outbox-relay.js';
import { PowertoolsKit } from './lib/powertools.js';
import { formatProfile, type ProfileSummary, summarizeProfileFile } from './lib/profile.js';
import { createProgress } from './lib/progress.js';
import { type QueueType, RabbitDriver } from './lib/rabbitmq.js';
import {
  accumulationTable,
  consumeTable,
  cpuTable,
  HEADERS,
  latencyTable,
  outboxTable,
  profileTable,
  storageTable,
  targets,
  targetsTable,
} from './lib/report.js';
import { runStorage, type StorageResult } from './lib/storage.js';
import { StoreKit } from './lib/stores.js';

const SECTIONS = [
  'kafka',
  'rabbitmq',
  'latency',
  'storage',
  'outbox',
  'outbox-relay',
  'mongo-accumulation',
] as const;
type Section = (typeof SECTIONS)[number];
/** Run only when `--only` names them: filling 100,000 records on FerretDB 1.x takes long. */
const OPT_IN: readonly Section[] = ['mongo-accumulation', 'outbox-relay'];

const int = (value: string): number => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a positive integer');
  return n;
};
const list =
  <T extends string>(allowed: readonly T[]) =>
  (value: string): T[] => {
    const items = value.split(',').map((s) => s.trim()) as T[];
    const bad = items.filter((i) => !allowed.includes(i));
    if (bad.length > 0)
      throw new InvalidArgumentError(`unknown: ${bad.join(', ')} (one of ${allowed.join(', ')})`);
    return items;
  };

const program = new Command('bench')
  .description('exactly-once benchmarks: throughput, latency, storage, outbox drain')
  .option('--quick', 'tiny sizes, one round: checks the harness runs (CI); figures mean nothing')
  .option(
    '--only <sections>',
    `comma list of ${SECTIONS.join(',')} (default all but ${OPT_IN.join(',')})`,
    list(SECTIONS),
  )
  .option('--messages <n>', 'messages per RabbitMQ consume run (default 50000; quick 60)', int)
  .option(
    '--kafka-messages <n>',
    'messages per Kafka consume run: several fetches of them, see README (default 200000; quick 60)',
    int,
  )
  .option(
    '--mongo-messages <n>',
    'messages per sdk-mongo and sdk-mongo-java run (default 500; quick 20)',
    int,
  )
  .option('--rounds <n>', 'interleaved rounds of consume and latency runs (default 5; quick 1)', int)
  .option(
    '--warmup <n>',
    'messages of the unreported first run of each consume variant (default 5000; quick 0)',
    int,
  )
  .option(
    '--variants <list>',
    `consume/latency variants (${CONSUME_VARIANTS.join(',')})`,
    list(CONSUME_VARIANTS),
  )
  .option('--partitions <n>', 'Kafka partitions = partitionsConsumedConcurrently (default 4)', int)
  .option(
    '--prefetch <n>',
    `RabbitMQ prefetch of every variant (default: the SDK consumer's, ${DEFAULT_PREFETCH})`,
    int,
  )
  .option('--queue-type <type>', 'quorum (the SDK default) or classic', 'quorum')
  .option('--latency-messages <n>', 'serial messages per latency run (default 2000; quick 30)', int)
  .option('--pings <n>', 'PINGs timed per latency round for the Redis round trip (default 1000)', int)
  .option('--storage-keys <n>', 'Redis keys written by the store bench (default 200000; quick 500)', int)
  .option('--mongo-docs <n>', 'records written by the store-mongo bench (default 2000; quick 30)', int)
  .option('--sample-keys <n>', 'keys written for MEMORY USAGE samples (default 2000; quick 50)', int)
  .option('--outbox <n>', 'outbox backlog size (default 100000; quick 200)', int)
  .option('--outbox-window <n>', 'max unconfirmed messages during the drain (default 256)', int)
  .option('--outbox-rounds <n>', 'interleaved outbox rounds (default 3; quick 1)', int)
  .option(
    '--outbox-relay-window <n>',
    'outbox-relay: the relay window and raw batch size (default 2048)',
    int,
  )
  .option(
    '--accumulation <n1,n2,...>',
    'mongo-accumulation: record counts at which to measure (default 10000,100000; quick 100,200)',
    (value: string) => {
      const sizes = value.split(',').map((v) => int(v.trim()));
      if (sizes.some((n, i) => i > 0 && n <= (sizes[i - 1] as number)))
        throw new InvalidArgumentError('expected increasing record counts');
      return sizes;
    },
  )
  .option(
    '--accumulation-ops <n>',
    'mongo-accumulation: timed operations per size and kind (default 2000; quick 50)',
    int,
  )
  .option('--redis-autopipelining', "experiment: ioredis enableAutoPipelining on the SDK stores' client")
  .option('--timeout <s>', 'give up on one measurement after this many seconds (default 1800)', int)
  .option('--profile', 'CPU-profile extra, unreported raw/sdk-memory/sdk-redis/powertools consume runs')
  .option('--summarize-profile <file>', 'only print the summary of a .cpuprofile (e.g. from node --cpu-prof)')
  .option(
    '--profile-messages <n>',
    'with --summarize-profile: messages in the profile, for CPU per message',
    int,
  )
  .option('--no-progress', 'no progress bars or notes on stderr')
  .option('--out <dir>', 'where the JSON goes', join(benchDir, 'out'))
  .addOption(
    new Option(
      '--broker-apart <file>',
      'internal: run the broker section --only names, write its runs to file',
    ).hideHelp(),
  );

program.parse();
const o = program.opts();

if (o.summarizeProfile) {
  console.log(formatProfile(await summarizeProfileFile(String(o.summarizeProfile), o.profileMessages)));
  process.exit(0);
}

const quick = o.quick === true;
const pick = (value: unknown, full: number, small: number): number =>
  typeof value === 'number' ? value : quick ? small : full;
const config = {
  quick,
  sections: (o.only as Section[] | undefined) ?? SECTIONS.filter((s) => !OPT_IN.includes(s)),
  messages: pick(o.messages, 50_000, 60),
  kafkaMessages: pick(o.kafkaMessages, 200_000, 60),
  mongoMessages: pick(o.mongoMessages, 500, 20),
  rounds: pick(o.rounds, 5, 1),
  warmup: pick(o.warmup, 5000, 0),
  variants: (o.variants as ConsumeVariant[] | undefined) ?? [...CONSUME_VARIANTS],
  partitions: pick(o.partitions, 4, 2),
  // The SDK consumer's own default (its exported constant), for the raw and Powertools variants too.
  prefetch: pick(o.prefetch, DEFAULT_PREFETCH, DEFAULT_PREFETCH),
  prefetchSource: typeof o.prefetch === 'number' ? '--prefetch' : "the SDK's default",
  pings: pick(o.pings, 1000, 1000),
  queueType: (o.queueType === 'classic' ? 'classic' : 'quorum') as QueueType,
  latencyMessages: pick(o.latencyMessages, 2000, 30),
  storageKeys: pick(o.storageKeys, 200_000, 500),
  mongoDocs: pick(o.mongoDocs, 2000, 30),
  sampleKeys: pick(o.sampleKeys, 2000, 50),
  outbox: pick(o.outbox, 100_000, 200),
  outboxWindow: pick(o.outboxWindow, 256, 64),
  outboxRounds: pick(o.outboxRounds, 3, 1),
  outboxRelayWindow: pick(o.outboxRelayWindow, 2048, 64),
  accumulation: (o.accumulation as number[] | undefined) ?? (quick ? [100, 200] : [10_000, 100_000]),
  accumulationOps: pick(o.accumulationOps, 2000, 50),
  timeoutMs: pick(o.timeout, 1800, 300) * 1000,
  profile: o.profile === true,
  redisAutoPipelining: o.redisAutopipelining === true,
};
/** Set in the process that runs one broker's section for its parent (see consumeApart). */
const brokerRunsFile = typeof o.brokerApart === 'string' ? o.brokerApart : undefined;
if (!config.variants.includes('raw') && brokerRunsFile === undefined)
  console.error('note: without the raw variant there are no ratios');

const stamp = new Date().toISOString().replace(/[:.]/g, '-');
await mkdir(String(o.out), { recursive: true });
const progress = createProgress(o.progress !== false);
const machine = machineInfo();
const startedAt = new Date().toISOString();
const loads = [sampleLoad()];
const stores = new StoreKit(config.redisAutoPipelining);
const powertools = new PowertoolsKit();
const kits = { stores, powertools };
const failures: { section: Section; error: string }[] = [];
const consumeRounds: ConsumeRound[] = [];
const profiles: ProfileSummary[] = [];
let latency: LatencyResult | undefined;
let storage: StorageResult | undefined;
let outboxRounds: OutboxRound[] | undefined;
let accumulation: AccumulationResult | undefined;
let relayRounds: RelayRound[] | undefined;

if (brokerRunsFile === undefined)
  progress.note(
    `bench ${quick ? '(quick) ' : ''}sections ${config.sections.join(',')}; ` +
      `load ${machine.loadavg.join(' ')} on ${machine.nproc} CPUs`,
  );

async function section(name: Section, run: () => Promise<void>): Promise<void> {
  if (!config.sections.includes(name)) return;
  try {
    await run();
  } catch (error) {
    failures.push({
      section: name,
      error: error instanceof Error ? (error.stack ?? error.message) : String(error),
    });
    progress.note(`${name} failed: ${error instanceof Error ? error.message : String(error)}`);
  } finally {
    loads.push(sampleLoad());
  }
}

/** What a broker section's own process hands back (see {@link consumeApart}). */
interface BrokerRuns {
  readonly rounds: ConsumeRound[];
  readonly profiles: ProfileSummary[];
  readonly failures: { section: Section; error: string }[];
}

/**
 * A broker's section in a process of its own, as an application runs one broker per process. In
 * one process with the Kafka section before it, RabbitMQ's sdk-memory took 33-41 us of consumer
 * CPU a message against 23-27 us in a process that had run only RabbitMQ (raw 10-13 us either
 * way): the second broker's figures depended on what the process had run before.
 */
async function consumeApart(broker: Broker): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'eo-bench-'));
  const file = join(dir, 'runs.json');
  try {
    // A later --only wins: the child runs this one section with every other option as given.
    const args = [...process.execArgv, process.argv[1] as string, ...process.argv.slice(2)];
    const child = spawn(process.execPath, [...args, '--only', broker, '--broker-apart', file], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    const code = await new Promise<number | null>((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', resolve);
    });
    const runs = JSON.parse(await readFile(file, 'utf8').catch(() => 'null')) as BrokerRuns | null;
    if (runs === null)
      throw new Error(`the ${broker} section's process exited with ${code} and wrote nothing`);
    consumeRounds.push(...runs.rounds);
    profiles.push(...runs.profiles);
    failures.push(...runs.failures);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function consume(driver: Driver): Promise<void> {
  try {
    const result = await runConsume(
      driver,
      {
        rounds: config.rounds,
        messages: driver.broker === 'kafka' ? config.kafkaMessages : config.messages,
        mongoMessages: config.mongoMessages,
        warmupMessages: config.warmup,
        variants: config.variants,
        timeoutMs: config.timeoutMs,
        ...(config.profile ? { profilePrefix: join(String(o.out), stamp) } : {}),
      },
      kits,
      progress,
    );
    consumeRounds.push(...result.rounds);
    profiles.push(...result.profiles);
  } finally {
    await driver.close();
  }
}

try {
  // A broker's section runs in its own process: this one, when its parent started it for that.
  const here = brokerRunsFile !== undefined;
  await section('kafka', () => (here ? consume(new KafkaDriver(config.partitions)) : consumeApart('kafka')));
  await section('rabbitmq', () =>
    here ? consume(new RabbitDriver(config.prefetch, config.queueType)) : consumeApart('rabbitmq'),
  );
  await section('latency', async () => {
    latency = await runLatency(
      {
        rounds: config.rounds,
        messages: config.latencyMessages,
        mongoMessages: Math.min(config.latencyMessages, config.mongoMessages),
        // No broker here: a Kafka client variant would only repeat raw and sdk-redis.
        variants: config.variants.filter((v) => !isConfluent(v)),
        pings: config.pings,
      },
      kits,
      progress,
    );
  });
  await section('storage', async () => {
    storage = await runStorage(
      {
        redisKeys: config.storageKeys,
        mongoDocs: config.mongoDocs,
        sampleKeys: config.sampleKeys,
        timeoutMs: config.timeoutMs,
      },
      kits,
      progress,
    );
  });
  await section('outbox', async () => {
    outboxRounds = await runOutbox(
      {
        rounds: config.outboxRounds,
        messages: config.outbox,
        window: config.outboxWindow,
        queueType: config.queueType,
        variants: OUTBOX_VARIANTS,
      },
      stores,
      progress,
    );
  });
  await section('outbox-relay', async () => {
    relayRounds = await runOutboxRelay(
      {
        rounds: config.outboxRounds,
        orders: Math.ceil(config.outbox / 2),
        window: config.outboxRelayWindow,
        mongoUrl: env.mongoJavaUrl,
      },
      progress,
    );
  });
  await section('mongo-accumulation', async () => {
    // The servers of the Mongo variants asked for: sdk-mongo is FerretDB, sdk-mongo-java mongo-java-server.
    const servers = ACCUMULATION_SERVERS.filter((s: AccumulationServer) =>
      config.variants.includes(s === 'ferretdb' ? 'sdk-mongo' : 'sdk-mongo-java'),
    );
    if (servers.length === 0) throw new Error('--variants names neither sdk-mongo nor sdk-mongo-java');
    accumulation = await runAccumulation(
      {
        servers,
        records: config.accumulation,
        ops: config.accumulationOps,
        concurrency: 32,
        timeoutMs: config.timeoutMs,
      },
      progress,
    );
  });
} finally {
  progress.close();
  await stores.close().catch(() => {});
  await powertools.close().catch(() => {});
}

if (brokerRunsFile !== undefined) {
  const runs: BrokerRuns = { rounds: consumeRounds, profiles, failures };
  await writeFile(brokerRunsFile, JSON.stringify(runs));
  process.exit(0);
}

const consumeSummary = summarizeConsume(consumeRounds);
const latencySummary = latency ? summarizeLatency(latency.rounds) : undefined;
const pingSummary = latency ? summarizePings(latency.pings) : undefined;
const outboxSummary = outboxRounds ? summarizeOutbox(outboxRounds) : undefined;
const targetRows = targets(
  consumeSummary,
  latencySummary && pingSummary ? { summary: latencySummary, pings: pingSummary } : undefined,
  storage?.figures,
);

const lines: string[] = [];
lines.push(
  `exactly-once bench ${quick ? '(quick: sizes too small for the figures to mean anything) ' : ''}${startedAt}`,
  `machine: ${machine.nproc} CPUs (${machine.cpuModel}), ${machine.memoryGiB} GiB, node ${machine.node}; ` +
    `load at start ${machine.loadavg.join(' ')}, during ${loads.map((l) => l.load1).join(' ')}`,
  '',
);
if (config.sections.includes('kafka') || config.sections.includes('rabbitmq')) {
  lines.push(
    `${HEADERS.consume} (medians of ${config.rounds} interleaved rounds` +
      (config.warmup > 0 ? ` after a ${config.warmup}-message warm-up run of each variant` : '') +
      `; ${config.partitions} Kafka partitions, ` +
      `RabbitMQ prefetch ${config.prefetch} (${config.prefetchSource}), ${config.queueType} queues) ==`,
    consumeTable(consumeSummary),
    '  x raw / x powertools: median of per-round ratios. p50/p99: per-message time from delivery to settle,',
    '  under full load. +p50/+p99: minus raw in the same round. store calls/msg: calls on the store, a batch',
    '  call counting as one (Powertools: Redis commands); keys/batch: keys per batch call. * srv cmds/msg,',
    "  srv us/msg: INFO commandstats deltas (calls, server CPU) of the variant's commands per message, summed",
    '  over the 3 masters for sdk-redis-cluster; server-wide, so other clients add to them.',
    '',
    `${HEADERS.cpu} (medians of the same runs, us per message; ${machine.nproc} CPUs shared by all) ==`,
    cpuTable(consumeSummary),
    '  consumer: this process (client, SDK, bench meter); broker: the RabbitMQ or Kafka server process;',
    "  redis: the Redis server(s) the variant's commands go to (utime + stime from /proc, whole process,",
    '  10 ms resolution). CPU-bound x raw: raw total / variant total, the ratio if CPU were the only limit.',
    '',
  );
}
if (latencySummary && pingSummary) {
  const us = (v: number) => (Number.isFinite(v) ? `${v.toFixed(1)} us` : '-');
  lines.push(
    `${HEADERS.latency} (no broker, one message at a time, ${config.latencyMessages} per run) ==`,
    latencyTable(latencySummary),
    `  Redis round trip (PING p50 of ${pingSummary.pings}, median of rounds): ${us(pingSummary.redisP50Us)}` +
      (Number.isFinite(pingSummary.clusterP50Us) ? `; cluster ${us(pingSummary.clusterP50Us)}` : '') +
      '. store calls/msg: a batch call counts as one.',
    '',
  );
}
if (storage) {
  lines.push(`${HEADERS.storage} (extrapolated linearly to 30M keys) ==`, storageTable(storage.figures), '');
}
if (outboxSummary) {
  lines.push(
    `${HEADERS.outbox} (${config.queueType} queue, confirms, medians of ${config.outboxRounds} rounds) ==`,
  );
  lines.push(outboxTable(outboxSummary), '');
}
if (relayRounds) {
  lines.push(
    `${HEADERS.outboxRelay} (${Math.ceil(config.outbox / 2)} order documents with 2 events each on mongo-java-server, ` +
      `Kafka, medians of ${config.outboxRounds} rounds) ==`,
    relayTable(summarizeRelay(relayRounds)),
    '  relay-drain: createOutboxRelay over createMongoOutboxSource from the first read to the last message confirmed;',
    '  raw-publish: the same producer publishing as many messages in window-sized confirmed batches.',
    '  marked s after: until every document was marked published (background, not in msgs/s).',
    '',
  );
}
if (accumulation) {
  lines.push(
    `${HEADERS.accumulation} (${accumulation.ops} timed operations per size and kind, ` +
      `concurrency ${accumulation.concurrency}) ==`,
    accumulationTable(accumulation.rows),
    '  new-key: begin + complete of a key never seen; duplicate: begin of a COMPLETED key (random over the',
    '  records written before); fill keys/s: writing up to that size. docs: heads + chain elements.',
    '',
  );
}
lines.push(`${HEADERS.targets} (reported, not asserted) ==`, targetsTable(targetRows), '');
if (profiles.length > 0) {
  lines.push(`${HEADERS.profiles} (extra runs, not in the figures above; details in the JSON) ==`);
  lines.push(profileTable(profiles), '');
  for (const p of profiles.filter((x) => x.label.includes('sdk-redis'))) lines.push(formatProfile(p), '');
}
for (const f of failures) lines.push(`section ${f.section} FAILED: ${f.error}`, '');

const file = join(String(o.out), `${stamp}.json`);
await writeFile(
  file,
  `${JSON.stringify(
    {
      startedAt,
      finishedAt: new Date().toISOString(),
      command: `npm run bench -- ${process.argv.slice(2).join(' ')}`.trim(),
      config,
      machine,
      loads,
      consume: { summary: consumeSummary, rounds: consumeRounds },
      latency: latency
        ? { summary: latencySummary, pingSummary, rounds: latency.rounds, pings: latency.pings }
        : undefined,
      storage,
      outbox: outboxRounds ? { summary: outboxSummary, rounds: outboxRounds } : undefined,
      accumulation,
      outboxRelay: relayRounds ? { summary: summarizeRelay(relayRounds), rounds: relayRounds } : undefined,
      targets: targetRows,
      profiles,
      failures,
    },
    null,
    2,
  )}\n`,
);
lines.push(`written ${file}`);
console.log(lines.join('\n'));
process.exit(failures.length > 0 ? 1 : 0);
