/** Shared plumbing of the Kafka adapter tests: clients, topics, offsets, ledgers, output checks. */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { KafkaConsumer, KafkaLike } from '@exactly-once/kafka';
import { Redis } from 'ioredis';
import { type Admin, Kafka, logLevel } from 'kafkajs';
import { workerArgs } from '../support/bundle.js';
import { env, uniqueName } from '../support/env.js';
import { dropStorePrefixes, trackedPrefix } from '../support/redis.js';
import { waitUntil } from '../support/wait.js';

export { dropStorePrefixes, env, uniqueName, waitUntil };

/** A fresh store key prefix, deleted by {@link dropStorePrefixes} when the file is done. */
export function storePrefix(): string {
  return trackedPrefix(uniqueName('eo'));
}

export function newKafka(clientId: string): Kafka {
  return new Kafka({
    clientId,
    brokers: env.kafkaBrokers,
    logLevel: logLevel.NOTHING,
    retry: { retries: 12, initialRetryTime: 200, maxRetryTime: 5_000 },
  });
}

const KAFKA_CLIENTS = ['kafkajs', 'confluent'] as const;
export type KafkaClientName = (typeof KAFKA_CLIENTS)[number];

/**
 * The clients the adapter's tests run on: both, or those `EO_KAFKA_CLIENTS` lists
 * (scripts/other-nodes.sh: kafkajs, the native build being for the main Node only). Topic setup,
 * input records and output checks always use kafkajs (the test's tooling, not its subject).
 */
export const CLIENTS: readonly KafkaClientName[] = (() => {
  const listed = process.env.EO_KAFKA_CLIENTS?.split(',').map((c) => c.trim());
  if (!listed) return KAFKA_CLIENTS;
  const unknown = listed.filter((c) => !(KAFKA_CLIENTS as readonly string[]).includes(c));
  if (unknown.length > 0 || listed.length === 0) {
    throw new Error(`EO_KAFKA_CLIENTS: unknown ${unknown.join(', ')} (one of ${KAFKA_CLIENTS.join(', ')})`);
  }
  return listed as KafkaClientName[];
})();

const confluentPackage = fileURLToPath(new URL('../../clients/confluent/package.json', import.meta.url));

/** The part of `@confluentinc/kafka-javascript` the tests use. */
interface ConfluentModule {
  KafkaJS: { Kafka: new (config: object) => KafkaLike; logLevel: { NOTHING: number } };
}

/**
 * `@confluentinc/kafka-javascript`, from clients/confluent: a native build, kept out of the
 * workspaces and made by scripts/confluent-client.sh (.ci/run runs it). Not built: an error
 * saying so, never a skipped test.
 */
export function confluentClient(): ConfluentModule {
  const hint = 'run `bash scripts/confluent-client.sh` (builds it from source into clients/confluent)';
  if (!existsSync(confluentPackage)) throw new Error(`clients/confluent is missing: ${hint}`);
  try {
    return createRequire(confluentPackage)('@confluentinc/kafka-javascript') as ConfluentModule;
  } catch (error) {
    throw new Error(`@confluentinc/kafka-javascript is not built or does not load: ${hint}`, {
      cause: error,
    });
  }
}

/** The `Kafka` instance the adapter under test gets: kafkajs', or librdkafka's KafkaJS API. */
export function clientKafka(client: KafkaClientName, clientId: string): KafkaLike {
  if (client === 'kafkajs') return newKafka(clientId);
  const { KafkaJS } = confluentClient();
  return new KafkaJS.Kafka({
    kafkaJS: { clientId, brokers: env.kafkaBrokers, logLevel: KafkaJS.logLevel.NOTHING },
  });
}

/**
 * Counts the group joins (assignments received) of a consumer: kafkajs' GROUP_JOIN event, or on
 * librdkafka (no `on`/`events`) its assign rebalance callback. Pass `consumerConfig` to
 * createConsumer, then `attach` the consumer.
 */
export function joinCounter(client: KafkaClientName, onJoin: () => void = () => {}) {
  let joins = 0;
  const joined = () => {
    joins++;
    onJoin();
  };
  return {
    get joins() {
      return joins;
    },
    consumerConfig:
      client === 'confluent'
        ? {
            // ERR__ASSIGN_PARTITIONS
            rebalance_cb: (event: { code?: number }) => {
              if (event?.code === -175) joined();
            },
          }
        : {},
    attach(consumer: KafkaConsumer) {
      if (client === 'kafkajs')
        consumer.consumer.on?.(consumer.consumer.events?.GROUP_JOIN as string, joined);
    },
  };
}

/** Consumer settings that keep group joins quick: dead members expire after 6 s. */
export const fastGroup = { sessionTimeout: 6_000, rebalanceTimeout: 10_000, heartbeatInterval: 500 } as const;

export async function createTopics(admin: Admin, topics: string[], numPartitions: number): Promise<void> {
  await admin.createTopics({
    topics: topics.map((topic) => ({ topic, numPartitions })),
    waitForLeaders: false,
  });
  // kafkajs' own waitForLeaders trips over concurrent creations; poll the metadata instead.
  await waitUntil(
    async () => {
      const { topics: meta } = await admin.fetchTopicMetadata({ topics });
      return meta.every(
        (t) => t.partitions.length === numPartitions && t.partitions.every((p) => p.leader >= 0),
      );
    },
    { message: `leaders of ${topics.join(', ')}` },
  );
}

/** Sum over partitions of the high watermark: the number of records in a compaction-free topic. */
export async function topicSize(admin: Admin, topic: string): Promise<number> {
  const offsets = await admin.fetchTopicOffsets(topic);
  return offsets.reduce((n, p) => n + Number(p.high) - Number(p.low), 0);
}

/** Committed offsets of a group, by partition (-1 when none). */
export async function committed(admin: Admin, groupId: string, topic: string): Promise<Map<number, number>> {
  const [t] = await admin.fetchOffsets({ groupId, topics: [topic] });
  return new Map((t?.partitions ?? []).map((p) => [p.partition, Number(p.offset)]));
}

/** True when the group committed every partition up to its end. */
export async function fullyCommitted(admin: Admin, groupId: string, topic: string): Promise<boolean> {
  const ends = await admin.fetchTopicOffsets(topic);
  const done = await committed(admin, groupId, topic);
  return ends.every((p) => p.high === p.low || (done.get(p.partition) ?? -1) >= Number(p.high));
}

export function newRedis(): Redis {
  return new Redis(env.redisUrl, { maxRetriesPerRequest: 2, lazyConnect: false });
}

/** One JSON order per key, spread over partitions by the Kafka key. */
export async function produceOrders(
  kafka: Kafka,
  topic: string,
  ids: string[],
  extra: (id: string) => Record<string, string> = () => ({}),
): Promise<void> {
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  try {
    for (let i = 0; i < ids.length; i += 500) {
      await producer.send({
        topic,
        acks: -1,
        messages: ids.slice(i, i + 500).map((id) => ({
          key: id,
          value: JSON.stringify({ id }),
          headers: { 'x-idempotency-key': id, 'x-request-id': `req-${id}`, ...extra(id) },
        })),
      });
    }
  } finally {
    await producer.disconnect();
  }
}

export interface ReadRecord {
  key: string | null;
  value: string | null;
  /** The last value of each header. */
  headers: Record<string, string>;
  /** Every value of each header, in record order (a header can be repeated). */
  headerValues: Record<string, string[]>;
  partition: number;
  offset: string;
}

/** Reads a topic from the beginning until `count` records arrived (or `done` says so). */
export async function readTopic(
  kafka: Kafka,
  topic: string,
  done: (records: ReadRecord[]) => boolean,
  timeoutMs = 60_000,
): Promise<ReadRecord[]> {
  const consumer = kafka.consumer({ groupId: uniqueName('reader'), ...fastGroup });
  const records: ReadRecord[] = [];
  await consumer.connect();
  try {
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ partition, message }) => {
        const headers: Record<string, string> = {};
        const headerValues: Record<string, string[]> = {};
        for (const [k, v] of Object.entries(message.headers ?? {})) {
          const all = (Array.isArray(v) ? v : [v]).filter((x) => x !== undefined).map(String);
          headerValues[k] = all;
          const last = all[all.length - 1];
          if (last !== undefined) headers[k] = last;
        }
        records.push({
          key: message.key === null ? null : String(message.key),
          value: message.value === null ? null : String(message.value),
          headers,
          headerValues,
          partition,
          offset: message.offset,
        });
      },
    });
    await waitUntil(() => done(records), { timeoutMs, message: `records of ${topic}` });
    return records;
  } finally {
    await consumer.disconnect();
  }
}

/** Distinct `x-idempotency-key` values among records. */
export function distinctKeys(records: ReadRecord[]): number {
  return new Set(records.map((r) => r.headers['x-idempotency-key'])).size;
}

export interface WorkerConfig {
  topic: string;
  outTopic: string;
  dlqTopic: string;
  groupId: string;
  ledger: string;
  storePrefix: string;
  killPoint?: 'after-begin' | 'in-handler' | 'after-complete' | 'after-publish' | 'before-commit' | 'none';
  /** Kill at the n-th event of the kill point. */
  killAt?: number;
  handlerDelayMs?: number;
  /** The client the worker's adapter runs on. @defaultValue 'kafkajs' */
  client?: KafkaClientName;
}

/** Spawns the crash worker as a real process (SIGKILL is the real thing). */
export function spawnWorker(config: WorkerConfig, log: (line: string) => void = () => {}): ChildProcess {
  const child = spawn(process.execPath, workerArgs('test/kafka/crash-worker.ts'), {
    cwd: fileURLToPath(new URL('../..', import.meta.url)),
    env: {
      ...process.env,
      EO_WORKER_CONFIG: JSON.stringify(config),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const forward = (chunk: Buffer) => {
    for (const line of chunk.toString().split('\n')) if (line.trim()) log(line);
  };
  child.stdout?.on('data', forward);
  child.stderr?.on('data', forward);
  return child;
}

export function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  }
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
}

/** Ledger counts: handler runs (not idempotent) and idempotent effects, per key. */
export async function ledger(
  redis: Redis,
  name: string,
): Promise<{ runs: number; effects: number; keysRun: number }> {
  const runs = await redis.hvals(`${name}:runs`);
  return {
    runs: runs.reduce((n, v) => n + Number(v), 0),
    keysRun: runs.length,
    effects: await redis.hlen(`${name}:effects`),
  };
}

export function table(title: string, rows: Record<string, string | number>[]): void {
  console.log(`\n${title}`);
  console.table(rows);
}

/** Keeps expected warnings (store down, broker gone) out of the test output. */
export const quietLogger = { debug() {}, info() {}, warn() {}, error() {} };
