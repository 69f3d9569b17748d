/**
 * What the driver does to the brokers and stores directly: the run's topology, a tap on each flow
 * (to re-publish exact copies of real messages), dead-letter counts, the RabbitMQ restart, and
 * deleting everything the run created.
 */
import { spawn } from 'node:child_process';
import { openSync } from 'node:fs';
import amqp, { type ChannelModel, type ConfirmChannel, type MessageProperties } from 'amqplib';
import { Redis } from 'ioredis';
import { type Admin, type Consumer, type IHeaders, Kafka, logLevel, type Producer } from 'kafkajs';
import { MongoClient } from 'mongodb';
import { BILLING_RETRY_DELAYS_MS, type RunNames, servers } from '../shared/config.js';

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function newKafka(clientId: string): Kafka {
  return new Kafka({
    clientId,
    brokers: [...servers.kafkaBrokers],
    logLevel: logLevel.NOTHING,
    retry: { retries: 12, initialRetryTime: 200, maxRetryTime: 5_000 },
  });
}

export async function createTopics(admin: Admin, names: RunNames): Promise<void> {
  await admin.createTopics({
    topics: [
      { topic: names.paymentsTopic, numPartitions: 4 },
      { topic: names.paymentsDeadLetters, numPartitions: 1 },
    ],
    waitForLeaders: false,
  });
  const topics = [names.paymentsTopic, names.paymentsDeadLetters];
  for (let i = 0; i < 100; i++) {
    const meta = await admin.fetchTopicMetadata({ topics }).catch(() => undefined);
    if (meta?.topics.every((t) => t.partitions.length > 0 && t.partitions.every((p) => p.leader >= 0)))
      return;
    await sleep(200);
  }
  throw new Error(`topics ${topics.join(', ')} have no leaders`);
}

/**
 * A publishes to an exchange; B's queue (declared by B with its retry and dead-letter queues) and
 * the driver's tap queue are both bound to it, so the tap sees every OrderCreated exactly as sent.
 */
export async function bindOrderQueues(names: RunNames): Promise<void> {
  const conn = await amqp.connect(servers.amqpUrl);
  try {
    const ch = await conn.createChannel();
    await ch.assertExchange(names.ordersExchange, 'direct', { durable: true });
    await ch.assertQueue(names.tapQueue, { durable: true });
    await ch.bindQueue(names.billingQueue, names.ordersExchange, names.orderCreatedKey);
    await ch.bindQueue(names.tapQueue, names.ordersExchange, names.orderCreatedKey);
  } finally {
    await conn.close();
  }
}

interface TappedAmqp {
  content: Buffer;
  properties: MessageProperties;
}

/** Reads the tap queue and re-publishes copies straight into B's queue. Survives a broker restart. */
export class RabbitTap {
  readonly messages = new Map<string, TappedAmqp>();
  private conn: ChannelModel | undefined;
  private ch: ConfirmChannel | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly names: RunNames) {}

  start(): void {
    const tick = async () => {
      try {
        const ch = await this.channel();
        for (
          let m = await ch.get(this.names.tapQueue, { noAck: true });
          m;
          m = await ch.get(this.names.tapQueue, { noAck: true })
        ) {
          const id = String(m.properties.headers?.['x-request-id'] ?? '');
          if (!this.messages.has(id)) this.messages.set(id, { content: m.content, properties: m.properties });
        }
      } catch {
        this.reset(); // the broker is down or restarting; try again next tick
      }
      this.timer = setTimeout(tick, 100);
    };
    void tick();
  }

  /**
   * Publishes a copy of the message for `requestId` into B's queue, as is or changed by `edit`.
   * Returns false when the tap has not seen the message yet or the broker did not confirm.
   */
  async republish(requestId: string, edit?: (body: Record<string, unknown>) => void): Promise<boolean> {
    const m = this.messages.get(requestId);
    if (!m) return false;
    let content = m.content;
    if (edit) {
      const body = JSON.parse(content.toString('utf8')) as Record<string, unknown>;
      edit(body);
      content = Buffer.from(JSON.stringify(body));
    }
    try {
      const ch = await this.channel();
      const p = m.properties;
      ch.sendToQueue(this.names.billingQueue, content, {
        persistent: true,
        headers: p.headers,
        ...(p.messageId ? { messageId: String(p.messageId) } : {}),
        ...(p.contentType ? { contentType: String(p.contentType) } : {}),
      });
      await ch.waitForConfirms();
      return true;
    } catch {
      this.reset();
      return false;
    }
  }

  private async channel(): Promise<ConfirmChannel> {
    if (this.ch) return this.ch;
    const conn = await amqp.connect(servers.amqpUrl);
    conn.on('error', () => {});
    conn.on('close', () => {
      if (this.conn === conn) this.reset();
    });
    const ch = await conn.createConfirmChannel();
    ch.on('error', () => {});
    this.conn = conn;
    this.ch = ch;
    return ch;
  }

  private reset(): void {
    const conn = this.conn;
    this.conn = undefined;
    this.ch = undefined;
    conn?.close().catch(() => {});
  }

  async stop(): Promise<void> {
    clearTimeout(this.timer);
    const conn = this.conn;
    this.conn = undefined;
    this.ch = undefined;
    await conn?.close().catch(() => {});
  }
}

interface TappedRecord {
  key: Buffer | null;
  value: Buffer | null;
  headers: IHeaders;
}

/** Reads the payments topic with its own group and re-produces copies of chosen records. */
export class KafkaTap {
  readonly records = new Map<string, TappedRecord>();
  private readonly consumer: Consumer;
  private readonly producer: Producer;

  constructor(
    kafka: Kafka,
    private readonly names: RunNames,
  ) {
    this.consumer = kafka.consumer({ groupId: `${names.notificationGroup}.tap`, maxWaitTimeInMs: 500 });
    this.producer = kafka.producer();
  }

  async start(): Promise<void> {
    await this.producer.connect();
    await this.consumer.connect();
    await this.consumer.subscribe({ topics: [this.names.paymentsTopic], fromBeginning: true });
    await this.consumer.run({
      eachMessage: async ({ message }) => {
        const id = message.headers?.['x-request-id']?.toString() ?? '';
        if (!this.records.has(id)) {
          this.records.set(id, { key: message.key, value: message.value, headers: message.headers ?? {} });
        }
      },
    });
  }

  async reproduce(requestId: string, edit?: (body: Record<string, unknown>) => void): Promise<boolean> {
    const r = this.records.get(requestId);
    if (!r?.value) return false;
    let value = r.value;
    if (edit) {
      const body = JSON.parse(value.toString('utf8')) as Record<string, unknown>;
      edit(body);
      value = Buffer.from(JSON.stringify(body));
    }
    await this.producer.send({
      topic: this.names.paymentsTopic,
      acks: -1,
      messages: [{ key: r.key, value, headers: r.headers }],
    });
    return true;
  }

  async stop(): Promise<void> {
    await this.consumer.disconnect().catch(() => {});
    await this.producer.disconnect().catch(() => {});
  }
}

/** Messages in B's RabbitMQ dead-letter queue and records in C's Kafka dead-letter topic. */
export async function deadLetterCounts(
  admin: Admin,
  names: RunNames,
): Promise<{ billing: number; notification: number }> {
  let billing = -1;
  try {
    const conn = await amqp.connect(servers.amqpUrl);
    try {
      const ch = await conn.createChannel();
      billing = (await ch.checkQueue(names.billingDeadLetters)).messageCount;
    } finally {
      await conn.close();
    }
  } catch {
    // broker restarting; reported as -1 and asked again
  }
  const offsets = await admin.fetchTopicOffsets(names.paymentsDeadLetters);
  const notification = offsets.reduce((n, p) => n + Number(p.high) - Number(p.low), 0);
  return { billing, notification };
}

/** `scripts/infra.sh down rabbitmq && up rabbitmq`; resolves with how long the broker was gone. */
export function restartRabbit(repoRoot: string, logFile: string): Promise<number> {
  const started = Date.now();
  const fd = openSync(logFile, 'a');
  const child = spawn(
    'bash',
    ['-c', 'bash scripts/infra.sh down rabbitmq && bash scripts/infra.sh up rabbitmq'],
    {
      cwd: repoRoot,
      stdio: ['ignore', fd, fd],
    },
  );
  return new Promise((resolve, reject) =>
    child.once('exit', (code) =>
      code === 0
        ? resolve(Date.now() - started)
        : reject(new Error(`RabbitMQ restart failed (${code}); see ${logFile}`)),
    ),
  );
}

/** Deletes the run's queues, exchange, topics, groups, Redis records and Mongo database. */
export async function cleanup(admin: Admin, names: RunNames): Promise<void> {
  const attempts: Promise<unknown>[] = [];
  attempts.push(
    (async () => {
      const conn = await amqp.connect(servers.amqpUrl);
      try {
        const ch = await conn.createChannel();
        const queues = [
          names.billingQueue,
          names.billingDeadLetters,
          names.tapQueue,
          ...BILLING_RETRY_DELAYS_MS.map((d) => `${names.billingQueue}.retry.${d}`),
        ];
        for (const q of queues) await ch.deleteQueue(q);
        await ch.deleteExchange(names.ordersExchange);
      } finally {
        await conn.close();
      }
    })(),
  );
  attempts.push(admin.deleteTopics({ topics: [names.paymentsTopic, names.paymentsDeadLetters] }));
  attempts.push(admin.deleteGroups([names.notificationGroup, `${names.notificationGroup}.tap`]));
  attempts.push(
    (async () => {
      const redis = new Redis(servers.redisUrl);
      try {
        let cursor = '0';
        do {
          const [next, keys] = await redis.scan(cursor, 'MATCH', `${names.redisPrefix}:*`, 'COUNT', 1000);
          cursor = next;
          if (keys.length > 0) await redis.del(...keys);
        } while (cursor !== '0');
      } finally {
        redis.disconnect();
      }
    })(),
  );
  attempts.push(
    (async () => {
      const mongo = await MongoClient.connect(servers.mongoUrl, { serverSelectionTimeoutMS: 5_000 });
      try {
        await mongo.db(names.mongoDb).dropDatabase();
      } finally {
        await mongo.close();
      }
    })(),
  );
  // Best effort: a leftover only costs space, and every name is unique to the run.
  await Promise.allSettled(attempts);
}

/** Fails fast, naming the server that is missing, before anything is started. */
export async function preflight(jaegerUrl: string, zipkinUrl: string): Promise<string[]> {
  const checks: [string, () => Promise<unknown>][] = [
    [
      'Redis',
      async () => {
        const r = new Redis(servers.redisUrl, {
          lazyConnect: true,
          maxRetriesPerRequest: 0,
          retryStrategy: () => null,
        });
        await r.connect();
        await r.ping();
        r.disconnect();
      },
    ],
    ['RabbitMQ', async () => (await amqp.connect(servers.amqpUrl)).close()],
    [
      'FerretDB',
      async () => (await MongoClient.connect(servers.mongoUrl, { serverSelectionTimeoutMS: 3_000 })).close(),
    ],
    [
      'Kafka',
      async () => {
        const admin = newKafka('demo-preflight').admin();
        await admin.connect();
        await admin.disconnect();
      },
    ],
    [
      'Jaeger',
      async () =>
        (await fetch(`${jaegerUrl}/api/services`, { signal: AbortSignal.timeout(3_000) })).ok ||
        Promise.reject(),
    ],
    [
      'Zipkin',
      async () =>
        (await fetch(`${zipkinUrl}/health`, { signal: AbortSignal.timeout(3_000) })).ok || Promise.reject(),
    ],
  ];
  const missing: string[] = [];
  await Promise.all(checks.map(([name, check]) => check().catch(() => missing.push(name))));
  return missing;
}
