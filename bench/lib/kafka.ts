/**
 * Kafka driver, on kafkajs or (the `-confluent` variants) `@confluentinc/kafka-javascript`. Raw
 * and SDK consumers are configured alike: same partitions, same `partitionsConsumedConcurrently`,
 * same fetch wait, manual offset resolution and explicit commits every 100 settled records and
 * at the end of each batch, one at a time and not awaited by the records but at the batch's end
 * (the SDK's own commit cadence), so the difference between them is the SDK's work per record.
 * Topics are created and loaded with kafkajs for every variant.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { createConsumer, type KafkaLike } from '@exactly-once/kafka';
import type { ProcessedStore } from '@exactly-once/core';
import { type Admin, type EachBatchPayload, Kafka, logLevel } from 'kafkajs';
import type { Driver, Handle, KafkaClient, Running, Source } from './consume.js';
import { instrument } from './consume.js';
import { env, repoRoot, uniqueName } from './env.js';
import type { Meter } from './stats.js';
import { handler, message, type Order } from './workload.js';

const COMMIT_EVERY = 100;
/** kafkajs defaults, except the fetch wait, which the SDK lowers to 1 s; raw gets the same. */
const CONSUMER_CONFIG = { maxWaitTimeInMs: 1000 } as const;
/** Records retained for an hour: anything a failed cleanup leaves behind expires by itself. */
const RETENTION = { retentionMs: 3_600_000, retentionCheck: 'off' } as const;

/** What the raw confluent variant uses of `@confluentinc/kafka-javascript`'s KafkaJS API. */
interface ConfluentConsumer {
  connect(): Promise<void>;
  disconnect(): Promise<void>;
  subscribe(s: { topics: string[] }): Promise<void>;
  run(config: {
    eachBatchAutoResolve: boolean;
    partitionsConsumedConcurrently: number;
    eachBatch: (payload: EachBatchPayload) => Promise<void>;
  }): Promise<void>;
  commitOffsets(offsets: { topic: string; partition: number; offset: string }[]): Promise<void>;
}
interface ConfluentKafka extends KafkaLike {
  consumer(config: object): ConfluentConsumer & ReturnType<KafkaLike['consumer']>;
}

/** `@confluentinc/kafka-javascript`, from clients/confluent (not a workspace: a native build). */
function confluentKafka(): ConfluentKafka {
  const pkg = join(repoRoot, 'clients/confluent/package.json');
  const hint = 'run `bash scripts/confluent-client.sh` to build clients/confluent';
  if (!existsSync(pkg)) throw new Error(`the -confluent variants need clients/confluent: ${hint}`);
  let KafkaJS: { Kafka: new (config: object) => ConfluentKafka; logLevel: { NOTHING: number } };
  try {
    ({ KafkaJS } = createRequire(pkg)('@confluentinc/kafka-javascript'));
  } catch (error) {
    throw new Error(`@confluentinc/kafka-javascript is not built: ${hint}`, { cause: error });
  }
  return new KafkaJS.Kafka({
    kafkaJS: { clientId: 'eo-bench', brokers: [...env.kafkaBrokers], logLevel: KafkaJS.logLevel.NOTHING },
  });
}

export class KafkaDriver implements Driver {
  readonly broker = 'kafka' as const;
  private readonly kafka: Kafka;
  private confluent: ConfluentKafka | undefined;

  constructor(private readonly partitions: number) {
    this.kafka = new Kafka({
      clientId: 'eo-bench',
      brokers: [...env.kafkaBrokers],
      logLevel: logLevel.NOTHING,
      retry: { retries: 10, initialRetryTime: 200, maxRetryTime: 5_000 },
    });
  }

  /**
   * Admin and producer clients are made per topic: a kafkajs client keeps refreshing metadata of
   * every topic it ever touched, and fails once one of them was deleted.
   */
  async prepare(batch: string, messages: number): Promise<Source> {
    const admin = this.kafka.admin();
    await admin.connect();
    const topic = uniqueName(`eo-bench-${batch}`);
    await admin.createTopics({ topics: [{ topic, numPartitions: this.partitions }], waitForLeaders: false });
    await waitForLeaders(admin, topic, this.partitions);
    const producer = this.kafka.producer({ allowAutoTopicCreation: false });
    await producer.connect();
    try {
      for (let i = 0; i < messages; i += 1000) {
        const chunk = Array.from({ length: Math.min(1000, messages - i) }, (_, j) => message(batch, i + j));
        await producer.send({
          topic,
          acks: -1,
          messages: chunk.map((m) => ({ key: m.key, value: m.body, headers: m.headers })),
        });
      }
    } finally {
      await producer.disconnect();
    }
    return new KafkaSource(
      this.kafka,
      () => (this.confluent ??= confluentKafka()),
      admin,
      topic,
      this.partitions,
    );
  }

  async close(): Promise<void> {}
}

/** kafkajs' own `waitForLeaders` trips over concurrent creations (other tests); poll metadata. */
async function waitForLeaders(admin: Admin, topic: string, partitions: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    try {
      const { topics } = await admin.fetchTopicMetadata({ topics: [topic] });
      const parts = topics[0]?.partitions ?? [];
      if (parts.length === partitions && parts.every((p) => p.leader >= 0)) return;
    } catch {
      // not known yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no leaders for ${topic}`);
}

class KafkaSource implements Source {
  private readonly groups: string[] = [];

  constructor(
    private readonly kafka: Kafka,
    private readonly confluent: () => ConfluentKafka,
    private readonly admin: Admin,
    private readonly topic: string,
    private readonly partitions: number,
  ) {}

  async startRaw(
    meter: Meter,
    handle: Handle,
    onError: (error: unknown) => void,
    client: KafkaClient,
  ): Promise<Running> {
    if (client === 'confluent') return this.startRawConfluent(meter, handle, onError);
    const groupId = uniqueName('eo-bench-raw');
    this.groups.push(groupId);
    const consumer = this.kafka.consumer({ groupId, ...CONSUMER_CONFIG });
    await consumer.connect();
    await consumer.subscribe({ topics: [this.topic], fromBeginning: true });
    await consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: this.partitions,
      eachBatch: (payload) =>
        rawBatch(payload, meter, handle, onError, (offset) =>
          payload.commitOffsetsIfNecessary({
            topics: [
              { topic: payload.batch.topic, partitions: [{ partition: payload.batch.partition, offset }] },
            ],
          }),
        ),
    });
    return { stop: () => consumer.disconnect() };
  }

  /**
   * The same consumer on librdkafka's KafkaJS API: no auto-commit and the start position are
   * consumer options there, and explicit offsets are committed through the consumer (the
   * payload's commit takes no offsets).
   */
  private async startRawConfluent(
    meter: Meter,
    handle: Handle,
    onError: (error: unknown) => void,
  ): Promise<Running> {
    const groupId = uniqueName('eo-bench-raw');
    this.groups.push(groupId);
    const consumer = this.confluent().consumer({
      kafkaJS: { groupId, ...CONSUMER_CONFIG, fromBeginning: true, autoCommit: false },
    });
    await consumer.connect();
    await consumer.subscribe({ topics: [this.topic] });
    await consumer.run({
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: this.partitions,
      eachBatch: (payload) =>
        rawBatch(payload, meter, handle, onError, (offset) =>
          consumer.commitOffsets([
            { topic: payload.batch.topic, partition: payload.batch.partition, offset },
          ]),
        ),
    });
    return { stop: () => consumer.disconnect() };
  }

  async startSdk(
    meter: Meter,
    store: ProcessedStore,
    outcomes: Record<string, number>,
    client: KafkaClient,
  ): Promise<Running> {
    const groupId = uniqueName('eo-bench-sdk');
    this.groups.push(groupId);
    const consumer = createConsumer<Order>({
      kafka: client === 'confluent' ? this.confluent() : this.kafka,
      groupId,
      topics: [this.topic],
      deadLetter: { topic: `${this.topic}.dlq` },
      store,
      handler,
      fromBeginning: true,
      partitionsConsumedConcurrently: this.partitions,
      consumerConfig: CONSUMER_CONFIG,
      commitEveryMessages: COMMIT_EVERY,
      ...RETENTION,
    });
    instrument(consumer.processor, meter, outcomes);
    await consumer.start();
    return { stop: () => consumer.stop() };
  }

  async remove(): Promise<void> {
    const existing = new Set(await this.admin.listTopics());
    const topics = [this.topic, `${this.topic}.dlq`].filter((t) => existing.has(t));
    try {
      if (topics.length > 0) await this.admin.deleteTopics({ topics, timeout: 30_000 });
      await this.admin.deleteGroups(this.groups).catch(() => {});
    } finally {
      await this.admin.disconnect();
    }
  }
}

/**
 * The raw consumers' batch, on either client: decode, handle, resolve, commit `offset + 1` every
 * COMMIT_EVERY records and at the end.
 */
async function rawBatch(
  payload: Pick<EachBatchPayload, 'batch' | 'resolveOffset' | 'isRunning' | 'isStale'>,
  meter: Meter,
  handle: Handle,
  onError: (error: unknown) => void,
  commitNext: (offset: string) => Promise<void>,
): Promise<void> {
  const { batch, resolveOffset, isRunning, isStale } = payload;
  const commit = (offset: string) => commitNext((BigInt(offset) + 1n).toString());
  // As the SDK commits: one commit on its way at a time, not awaited by the records; the batch's
  // last commit after it.
  let committing: Promise<void> | undefined;
  let committed: string | undefined;
  let commitFailed: { error: unknown } | undefined;
  const commitAlong = (offset: string) => {
    committing = commit(offset).then(
      () => {
        committed = offset;
        committing = undefined;
      },
      (error: unknown) => {
        committing = undefined;
        commitFailed ??= { error };
      },
    );
  };
  let last: string | undefined;
  let since = 0;
  for (const m of batch.messages) {
    if (!isRunning() || isStale()) break;
    const startedAt = meter.start();
    const order = JSON.parse((m.value as Buffer).toString()) as Order;
    const key = String(m.headers?.['x-idempotency-key']);
    try {
      await handle(order, key);
    } catch (error) {
      onError(error);
      break; // the record is fetched again, as a real consumer would retry it
    }
    resolveOffset(m.offset);
    last = m.offset;
    meter.settle(startedAt);
    if (++since >= COMMIT_EVERY && committing === undefined) {
      commitAlong(m.offset);
      since = 0;
    }
  }
  await committing;
  // Thrown from the batch, as an awaited commit's failure was: kafkajs fetches it again.
  if (commitFailed) throw commitFailed.error;
  if (last !== undefined && last !== committed) await commit(last);
}
