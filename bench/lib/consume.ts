/**
 * The consume-throughput method, shared by both brokers. Per round, every variant gets a fresh
 * topic/queue pre-loaded with its messages; only consuming them is timed (first delivery seen to
 * last message settled). Variants run in a different order each round (interleaved), so drift in
 * the machine's load spreads over all of them; figures are medians over rounds, and ratios are
 * medians of per-round ratios (each variant against the raw run of the same round).
 */
import type { ProcessedStore } from '@exactly-once/core';
import type { Delivery, Disposition, Processor } from '@exactly-once/core/spi';
import { sampleLoad } from './env.js';
import type { PowertoolsKit } from './powertools.js';
import {
  type CpuPerMessage,
  type CpuSnapshot,
  perMessage,
  redisServerPids,
  resolveGroups,
  snapshot,
} from './process-cpu.js';
import type { Progress } from './progress.js';
import { CpuProfiler, type ProfileSummary } from './profile.js';
import { Meter, median, rotate, within } from './stats.js';
import { batchTotals, commandDelta, commandStats, isMongo, type StoreKind, type StoreKit } from './stores.js';
import { handler, type Order } from './workload.js';

export const CONSUME_VARIANTS = [
  'raw',
  'sdk-memory',
  'sdk-redis',
  'sdk-redis-cluster',
  'sdk-mongo',
  'sdk-mongo-java',
  'powertools',
  'raw-confluent',
  'sdk-redis-confluent',
] as const;
export type ConsumeVariant = (typeof CONSUME_VARIANTS)[number];
/** The Kafka client a consume variant runs on. */
export type KafkaClient = 'kafkajs' | 'confluent';

/**
 * Kafka only: `raw` and `sdk-redis` on `@confluentinc/kafka-javascript` (librdkafka, built into
 * clients/confluent by scripts/confluent-client.sh) instead of kafkajs.
 */
export const isConfluent = (variant: string): boolean => variant.endsWith('-confluent');
/** The raw run a variant's ratios pair with: its own client's (raw-confluent: kafkajs' raw). */
export const rawOf = (variant: ConsumeVariant): ConsumeVariant =>
  variant === 'sdk-redis-confluent' ? 'raw-confluent' : 'raw';
export type Broker = 'kafka' | 'rabbitmq';

/** What a raw consumer runs per message: the handler, or the handler wrapped by Powertools. */
export type Handle = (payload: Order, key: string) => Promise<unknown>;

export interface Running {
  stop(): Promise<void>;
}

/** One pre-loaded topic or queue. */
export interface Source {
  /**
   * A plain client consumer: decode, `handle`, ack/commit. `onError` counts failed handles.
   * `client`: Kafka's client (RabbitMQ has one).
   */
  startRaw(
    meter: Meter,
    handle: Handle,
    onError: (error: unknown) => void,
    client: KafkaClient,
  ): Promise<Running>;
  /** The SDK's consumer on `store`, with the same handler; counts pipeline outcomes. */
  startSdk(
    meter: Meter,
    store: ProcessedStore,
    outcomes: Record<string, number>,
    client: KafkaClient,
  ): Promise<Running>;
  remove(): Promise<void>;
}

export interface Driver {
  readonly broker: Broker;
  /** Creates a fresh topic/queue named after `batch` and loads `messages` messages into it. */
  prepare(batch: string, messages: number): Promise<Source>;
  close(): Promise<void>;
}

export interface ConsumeRound {
  broker: Broker;
  variant: ConsumeVariant;
  round: number;
  messages: number;
  seconds: number;
  rate: number;
  p50Ms: number;
  p99Ms: number;
  /**
   * Calls on the processed-store wrapper (SDK; a batch call counts as one) or Redis commands
   * sent by Powertools, per message.
   */
  storeCallsPerMsg?: number;
  storeCalls?: Record<string, number>;
  /** SDK: keys carried by each batch operation, summed over its calls. */
  batchKeys?: Record<string, number>;
  /** SDK: keys per batch call (all batch operations). */
  keysPerBatch?: number;
  /**
   * `INFO commandstats` delta of the commands this variant uses, per message (server-wide;
   * `sdk-redis-cluster`: summed over the cluster's masters).
   */
  serverCmdsPerMsg?: number;
  /** Redis CPU (µs) in those commands per message, from the same delta (server-wide). */
  serverUsPerMsg?: number;
  /** CPU per message of this process, the broker and the Redis server(s), in µs (see process-cpu.ts). */
  cpu?: CpuPerMessage;
  outcomes: Record<string, number>;
  errors: number;
  loadBefore: number;
  loadAfter: number;
}

export interface ConsumeOptions {
  rounds: number;
  messages: number;
  mongoMessages: number;
  /** Messages of each variant's unreported first run (0: none; see runConsume). */
  warmupMessages: number;
  variants: readonly ConsumeVariant[];
  timeoutMs: number;
  /**
   * When set, one extra run of each of PROFILED variants, not part of the figures, is
   * CPU-profiled to `<profilePrefix>-<broker>-<variant>.cpuprofile`.
   */
  profilePrefix?: string;
}

/** The comparison that explains the figures: raw, pipeline alone, pipeline + Redis, Powertools. */
export const PROFILED: readonly ConsumeVariant[] = [
  'raw',
  'sdk-memory',
  'sdk-redis',
  'powertools',
  'raw-confluent',
  'sdk-redis-confluent',
];

/**
 * Times every delivery through the processor and counts outcomes. The adapters call it through
 * the processor object, so replacing its methods there sees every delivery: `process` (RabbitMQ,
 * and Kafka records run again) and `processInOrder` (the ordered groups of a Kafka partition,
 * whose deliveries all start when the group does). The settle (ack, offset resolve) follows when
 * a disposition resolves.
 */
export function instrument(processor: Processor, meter: Meter, outcomes: Record<string, number>): void {
  const observe = (startedAt: number, d: Disposition): Disposition => {
    outcomes[d.outcome] = (outcomes[d.outcome] ?? 0) + 1;
    if (d.action === 'ack') meter.settle(startedAt);
    return d;
  };
  const process = processor.process.bind(processor);
  processor.process = async (delivery) => {
    const startedAt = meter.start();
    return observe(startedAt, await process(delivery));
  };
  const processInOrder = processor.processInOrder.bind(processor);
  processor.processInOrder = (deliveries: readonly Delivery[]) => {
    const starts = deliveries.map(() => meter.start());
    const run = processInOrder(deliveries);
    return {
      dispositions: run.dispositions.map((p, i) => p.then((d) => observe(starts[i] as number, d))),
      release: () => run.release(),
    };
  };
}

export const storeOf = (variant: string): StoreKind | undefined =>
  variant.startsWith('sdk-') ? (variant.slice(4).replace(/-confluent$/, '') as StoreKind) : undefined;

/** Short names in topic, queue and message key names. */
const CODES: Record<ConsumeVariant, string> = {
  raw: 'raw',
  'sdk-memory': 'mem',
  'sdk-redis': 'red',
  'sdk-redis-cluster': 'rcl',
  'sdk-mongo': 'mon',
  'sdk-mongo-java': 'mjv',
  powertools: 'pow',
  'raw-confluent': 'rcf',
  'sdk-redis-confluent': 'scf',
};

const SDK_REDIS_COMMANDS = ['evalsha', 'eval'];
const POWERTOOLS_COMMANDS = ['set', 'get', 'del'];

/**
 * Runs a measurement, once more after a failure: on a shared machine other work may restart a
 * broker or Redis under a run. A failed attempt's figures are discarded, never reported.
 */
export async function retried<T>(what: string, progress: Progress, run: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await run();
    } catch (error) {
      if (attempt >= 3) throw error;
      progress.note(
        `${what} failed (${error instanceof Error ? error.message : String(error)}); again in 15 s`,
      );
      await new Promise((resolve) => setTimeout(resolve, 15_000));
    }
  }
}

/** Handler failures per message after which a raw or Powertools run gives up (see runOne). */
const HANDLER_ERRORS_LIMIT = 5;

export async function runConsume(
  driver: Driver,
  options: ConsumeOptions,
  kits: { stores: StoreKit; powertools: PowertoolsKit },
  progress: Progress,
): Promise<{ rounds: ConsumeRound[]; profiles: ProfileSummary[] }> {
  const results: ConsumeRound[] = [];
  const variants =
    driver.broker === 'kafka' ? options.variants : options.variants.filter((v) => !isConfluent(v));
  // One unreported run of each variant first. A variant's first run in a process paid for
  // compiling its code paths (1.5-2x the CPU a message of its later runs), so round 1 was slow
  // for every variant, and with 3 rounds that run weighed on the medians.
  if (options.warmupMessages > 0) {
    const warmup = {
      ...options,
      messages: options.warmupMessages,
      mongoMessages: Math.min(options.mongoMessages, options.warmupMessages),
    };
    for (const variant of variants) {
      progress.note(
        `${driver.broker}: warm-up run of ${variant} (${warmup.messages} messages, not reported)`,
      );
      await retried(`${driver.broker} ${variant} warm-up`, progress, () =>
        runOne(driver, variant, options.rounds + 1, warmup, kits, progress),
      );
    }
  }
  for (let round = 0; round < options.rounds; round++) {
    for (const variant of rotate(variants, round)) {
      const result = await retried(`${driver.broker} ${variant}`, progress, () =>
        runOne(driver, variant, round, options, kits, progress),
      );
      results.push(result);
      progress.note(
        `${driver.broker} r${round + 1} ${variant.padEnd(10)} ${result.rate.toFixed(0).padStart(7)} msg/s ` +
          `p50 ${result.p50Ms.toFixed(2)} ms (load ${result.loadBefore})`,
      );
    }
  }
  const profiles: ProfileSummary[] = [];
  const prefix = options.profilePrefix;
  if (!prefix) return { rounds: results, profiles };
  // Profiled apart: the inspector slows the process it samples, so these runs are not reported.
  for (const variant of PROFILED.filter((v) => variants.includes(v))) {
    progress.note(`${driver.broker}: profiling one more ${variant} run`);
    const profiler = new CpuProfiler();
    const file = `${prefix}-${driver.broker}-${variant}.cpuprofile`;
    const messages = options.messages;
    await runOne(driver, variant, options.rounds, options, kits, progress, {
      prepare: () => profiler.prepare(),
      begin: () => {
        void profiler.start();
      },
      stop: async () => {
        profiles.push(
          await profiler.stop(file, `${driver.broker} ${variant}, ${messages} messages`, messages),
        );
      },
    });
  }
  return { rounds: results, profiles };
}

export async function runOne(
  driver: Driver,
  variant: ConsumeVariant,
  round: number,
  options: Pick<ConsumeOptions, 'messages' | 'mongoMessages' | 'timeoutMs'>,
  kits: { stores: StoreKit; powertools: PowertoolsKit },
  progress: Progress,
  /**
   * Covers the consuming window only: `begin` runs when the first message arrives (not around
   * pre-loading, group joins or shutdown), `stop` after the last one settled.
   */
  window?: { prepare(): Promise<void>; begin(): void; stop(): Promise<void> },
): Promise<ConsumeRound> {
  const kind = storeOf(variant);
  const client: KafkaClient = isConfluent(variant) ? 'confluent' : 'kafkajs';
  const messages = isMongo(kind) ? options.mongoMessages : options.messages;
  const batch = `${driver.broker.slice(0, 2)}${round}${CODES[variant]}`;
  const source = await driver.prepare(batch, messages);
  const meter = new Meter(messages);
  const outcomes: Record<string, number> = {};
  let errors = 0;
  const store = kind ? await kits.stores.make(kind) : undefined;
  const pt = variant === 'powertools' ? await kits.powertools.make(handler, kits.stores.redis) : undefined;
  const usesRedis = kind === 'redis' || kind === 'redis-cluster' || pt !== undefined;
  // The connections of the server(s) the variant's commands go to: the masters of a cluster.
  const statsClients = usesRedis ? await kits.stores.statsClients(kind ?? 'redis') : [];
  const cpuGroups = resolveGroups(driver.broker, await redisServerPids(statsClients));
  const task = progress.track(`${driver.broker} ${variant} r${round + 1}`, messages, () => meter.settled);
  let running: Running | undefined;
  try {
    // Server command counters from the first delivery on. INFO goes out on the stores' own
    // connection ahead of that delivery's first command, so none of them is missed.
    let before: ReturnType<typeof commandStats> | undefined;
    let cpuBefore: CpuSnapshot | undefined;
    meter.onFirst = () => {
      window?.begin();
      cpuBefore = snapshot(cpuGroups);
      if (usesRedis) before = commandStats(statsClients);
    };
    const loadBefore = sampleLoad().load1;
    await window?.prepare();
    if (store) {
      running = await source.startSdk(meter, store.store, outcomes, client);
    } else {
      const handle: Handle = pt ? (payload, key) => pt.handle({ key, payload }) : handler;
      // The raw loops fetch a failed record again, as a real consumer retries it: a handler that
      // fails for good (a Powertools validation error on every redelivery) loops until the
      // round's timeout. Far more failures than records ends the round with that error instead.
      const onError = (error: unknown) => {
        if (++errors === HANDLER_ERRORS_LIMIT * messages) {
          const last = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
          meter.fail(
            new Error(
              `${driver.broker} ${variant}: ${errors} handler failures (the last: ${last}), ${meter.settled} settled`,
            ),
          );
        }
      };
      running = await source.startRaw(meter, handle, onError, client);
    }
    await within(meter.finished, options.timeoutMs, `${driver.broker} ${variant} consuming ${messages}`);
    const cpuAfter = snapshot(cpuGroups);
    const after = usesRedis ? await commandStats(statsClients) : undefined;
    await window?.stop();
    const loadAfter = sampleLoad().load1;
    const counted = await before;
    const { p50, p99 } = meter.durations.summary();
    const result: ConsumeRound = {
      broker: driver.broker,
      variant,
      round: round + 1,
      messages,
      seconds: meter.seconds,
      rate: meter.rate,
      p50Ms: p50,
      p99Ms: p99,
      outcomes,
      errors,
      loadBefore,
      loadAfter,
    };
    if (cpuBefore) result.cpu = perMessage(cpuBefore, cpuAfter, messages);
    if (store) {
      result.storeCalls = { ...store.calls };
      result.storeCallsPerMsg = store.total() / messages;
      result.batchKeys = { ...store.batchKeys };
      const batches = batchTotals(store.calls, store.batchKeys);
      if (batches.calls > 0) result.keysPerBatch = batches.keys / batches.calls;
    } else if (pt) {
      result.storeCalls = { ...pt.calls };
      result.storeCallsPerMsg = pt.total() / messages;
    }
    if (counted && after) {
      const names = pt ? POWERTOOLS_COMMANDS : SDK_REDIS_COMMANDS;
      const delta = commandDelta(counted, after, names);
      result.serverCmdsPerMsg = delta.calls / messages;
      result.serverUsPerMsg = delta.usec / messages;
    }
    return result;
  } finally {
    task.stop();
    await running?.stop().catch((e: unknown) => progress.note(`stop failed: ${String(e)}`));
    await source.remove().catch((e: unknown) => progress.note(`cleanup failed: ${String(e)}`));
    await store?.cleanup();
    await pt?.cleanup();
  }
}

export interface ConsumeSummary {
  broker: Broker;
  variant: ConsumeVariant;
  rounds: number;
  messages: number;
  rate: number;
  vsRaw: number;
  vsPowertools: number;
  p50Ms: number;
  p99Ms: number;
  addedP50Ms: number;
  addedP99Ms: number;
  storeCallsPerMsg: number;
  keysPerBatch: number;
  serverCmdsPerMsg: number;
  serverUsPerMsg: number;
  /** Medians of the rounds' CPU per message (µs): this process, the broker, Redis (NaN: not measured). */
  consumerCpuUs: number;
  brokerCpuUs: number;
  redisCpuUs: number;
  load: number;
}

/** Medians per variant; ratios and added latencies are paired with the same round's raw run. */
export function summarizeConsume(rounds: readonly ConsumeRound[]): ConsumeSummary[] {
  const out: ConsumeSummary[] = [];
  const brokers = [...new Set(rounds.map((r) => r.broker))];
  for (const broker of brokers) {
    const mine = rounds.filter((r) => r.broker === broker);
    const ref = (variant: ConsumeVariant, round: number) =>
      mine.find((r) => r.variant === variant && r.round === round);
    for (const variant of CONSUME_VARIANTS) {
      const rs = mine.filter((r) => r.variant === variant);
      if (rs.length === 0) continue;
      const paired = (other: ConsumeVariant, f: (r: ConsumeRound, o: ConsumeRound) => number) =>
        median(
          rs.map((r) => {
            const o = ref(other, r.round);
            return o ? f(r, o) : Number.NaN;
          }),
        );
      out.push({
        broker,
        variant,
        rounds: rs.length,
        messages: rs[0]?.messages ?? 0,
        rate: median(rs.map((r) => r.rate)),
        vsRaw: paired(rawOf(variant), (r, o) => r.rate / o.rate),
        vsPowertools: paired('powertools', (r, o) => r.rate / o.rate),
        p50Ms: median(rs.map((r) => r.p50Ms)),
        p99Ms: median(rs.map((r) => r.p99Ms)),
        addedP50Ms: paired(rawOf(variant), (r, o) => r.p50Ms - o.p50Ms),
        addedP99Ms: paired(rawOf(variant), (r, o) => r.p99Ms - o.p99Ms),
        storeCallsPerMsg: median(rs.map((r) => r.storeCallsPerMsg ?? Number.NaN)),
        keysPerBatch: median(rs.map((r) => r.keysPerBatch ?? Number.NaN)),
        serverCmdsPerMsg: median(rs.map((r) => r.serverCmdsPerMsg ?? Number.NaN)),
        serverUsPerMsg: median(rs.map((r) => r.serverUsPerMsg ?? Number.NaN)),
        consumerCpuUs: median(rs.map((r) => r.cpu?.consumerUs ?? Number.NaN)),
        brokerCpuUs: median(rs.map((r) => r.cpu?.brokerUs ?? Number.NaN)),
        redisCpuUs: median(rs.map((r) => r.cpu?.redisUs ?? Number.NaN)),
        load: median(rs.map((r) => (r.loadBefore + r.loadAfter) / 2)),
      });
    }
  }
  return out;
}
