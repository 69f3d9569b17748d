/**
 * A soak worker: one real consumer process (RabbitMQ or Kafka) with a real processed-store (Redis,
 * Redis Cluster or MongoDB on FerretDB), wrapped in the crash ledger's hooks
 * (test/support/crash-ledger.ts). Unlike the crash-matrix workers it is not told where to die when
 * it starts: the harness (soak.ts) arms it over IPC, one kill or one pause at a time.
 *
 * IPC from the harness:
 *   { type: 'arm', point, at }  die (SIGKILL, logged in the ledger first) at the at-th event of point
 *   { type: 'disarm' }
 *   { type: 'pause' }           at the next handler run, after its effect: log the run in
 *                               `<ledger>:stops` and SIGSTOP itself; the harness SIGCONTs it once
 *                               another worker took the key over
 * IPC to the harness: { type: 'ready' } once the consumer started.
 *
 * Besides the crash ledger's keys it writes `<ledger>:fenced` (store key -> completes the store
 * refused as stale: the lease had passed to another worker).
 */

import {
  type CompleteRequest,
  type FencedResult,
  type HandlerContext,
  type OutgoingMessage,
  type ProcessedStore,
  type Processor,
  scopeKey,
} from '@exactly-once/core';
import { createConsumer as createKafkaConsumer, createProducer, type KafkaLike } from '@exactly-once/kafka';
import { createPublisher, createConsumer as createRabbitConsumer } from '@exactly-once/rabbitmq';
import { createMongoStore } from '@exactly-once/store-mongo';
import { createRedisStore } from '@exactly-once/store-redis';
import { Cluster, Redis } from 'ioredis';
import { type Consumer, Kafka, logLevel } from 'kafkajs';
import { MongoClient } from 'mongodb';
import { crashKit } from '../support/crash-ledger.js';
import { env } from '../support/env.js';
import {
  CONSUMER,
  type SoakWorkerConfig,
  type StopEntry,
  type WorkerCommand,
  type WorkerState,
} from './protocol.js';

const config = JSON.parse(process.env.EO_SOAK_WORKER ?? '{}') as SoakWorkerConfig;
const quiet = { debug() {}, info() {}, warn() {}, error() {} };
/** The worker's last events, sent to the harness on `dump` (see WorkerState). */
const recent: string[] = [];
let last = { line: '', count: 0 };
function note(line: string): void {
  if (process.env.EO_SOAK_VERBOSE) console.error(line);
  const at = new Date().toISOString().slice(11, 23);
  // A store outage repeats one warning per message: one line, counted.
  if (line === last.line && recent.length > 0) {
    last.count++;
    recent[recent.length - 1] = `${at} ${line} (x${last.count}, the last at this time)`;
    return;
  }
  last = { line, count: 1 };
  recent.push(`${at} ${line}`);
  if (recent.length > 40) recent.shift();
}
/** Store client facts for the dump (MongoDB: the driver's view of the server). */
let storeState: () => unknown = () => undefined;
const logger = {
  ...quiet,
  warn: (m: string, meta?: unknown) => note(`warn ${m} ${JSON.stringify(meta)}`),
  error: (m: string, meta?: unknown) => note(`error ${m} ${JSON.stringify(meta)}`),
};

const ledgerRedis = new Redis(env.redisUrl, { maxRetriesPerRequest: 5 });

let closeStore: () => Promise<void> = async () => {};
function openStore(): ProcessedStore {
  const { kind, url } = config.store;
  if (kind === 'mongo') {
    const client = new MongoClient(url, { serverSelectionTimeoutMS: 5_000 });
    // The driver's own account of the server, for a stall (see WorkerState).
    for (const event of ['serverDescriptionChanged', 'connectionPoolCleared', 'connectionPoolReady'] as const)
      client.on(event, (e: { newDescription?: { type: string; error?: { message?: string } } }) =>
        note(
          `mongo ${event}${e.newDescription ? ` ${e.newDescription.type} ${e.newDescription.error?.message ?? ''}` : ''}`,
        ),
      );
    client.on('serverHeartbeatFailed', (e) => note(`mongo heartbeat failed: ${e.failure.message}`));
    storeState = () => {
      const topology = (
        client as unknown as { topology?: { description?: { servers: Map<string, unknown> } } }
      ).topology;
      const servers = (topology as { s?: { servers?: Map<string, unknown> } } | undefined)?.s?.servers;
      return [...(topology?.description?.servers.values() ?? [])].map((d) => {
        const { address, type, error, topologyVersion } = d as {
          address: string;
          type: string;
          error?: { message?: string };
          topologyVersion?: unknown;
        };
        // The server monitor's own state: a monitor that never checks again leaves the server
        // Unknown for ever.
        const monitor = (
          servers?.get(address) as
            | {
                monitor?: {
                  s?: { state?: string };
                  monitorId?: unknown;
                  connection?: { closed?: boolean } | null;
                };
              }
            | undefined
        )?.monitor;
        return {
          address,
          type,
          error: error?.message,
          streaming: topologyVersion != null,
          monitor: monitor && {
            state: monitor.s?.state,
            interval: monitor.monitorId,
            connection: monitor.connection === null ? 'none' : monitor.connection?.closed ? 'closed' : 'open',
          },
        };
      });
    };
    closeStore = () => client.close();
    return createMongoStore({ db: client.db(config.storeName) });
  }
  const client =
    kind === 'redis'
      ? new Redis(url, { maxRetriesPerRequest: 2 })
      : new Cluster(
          url.split(',').map((hp) => ({ host: hp.split(':')[0]!, port: Number(hp.split(':')[1]) })),
          { redisOptions: { maxRetriesPerRequest: 2 } },
        );
  client.on('error', () => {}); // down during the store restart: the store reports it
  closeStore = async () => {
    await client.quit().catch(() => {});
  };
  return createRedisStore({ client, keyPrefix: config.storeName });
}

const kit = crashKit({ redis: ledgerRedis, ledger: config.ledger, store: openStore() });
const fencedKey = `${config.ledger}:fenced`;
const stopsKey = `${config.ledger}:stops`;

/** kit.store, plus a count of the completes the store refused (a stale fence). */
const store: ProcessedStore = Object.create(kit.store) as ProcessedStore;
const countRefused = async (requests: readonly CompleteRequest[], results: readonly FencedResult[]) => {
  const refused = requests.filter((_, i) => results[i] !== 'ok');
  if (refused.length === 0) return;
  const tx = ledgerRedis.multi();
  for (const r of refused) tx.hincrby(fencedKey, r.key, 1);
  await tx.exec();
};
store.complete = async (request) => {
  const r = await kit.store.complete(request);
  await countRefused([request], [r]);
  return r;
};
if (kit.store.completeMany) {
  const completeMany = kit.store.completeMany.bind(kit.store);
  store.completeMany = async (requests) => {
    const results = await completeMany(requests);
    await countRefused(requests, results);
    return results;
  };
}

let pauseArmed = false;
/** mid-batch needs completes that go out together: pair handlers up while it is armed (see the crash worker). */
let waiting: (() => void) | undefined;
function pairUp(): Promise<void> {
  const other = waiting;
  if (other) {
    waiting = undefined;
    other();
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    const release = () => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      if (waiting === release) waiting = undefined;
      resolve();
    }, 100);
    waiting = release;
  });
}

async function handle(id: string, ctx: HandlerContext): Promise<{ ok: true }> {
  note(`handling ${ctx.key} attempt ${ctx.attempt}`);
  await kit.started(ctx);
  await kit.effect(ctx);
  if (pauseArmed) {
    pauseArmed = false;
    const entry: StopEntry = {
      key: scopeKey('default', ctx.consumer, ctx.key),
      attempt: ctx.attempt,
      fence: ctx.fence,
      pid: process.pid,
    };
    await ledgerRedis.rpush(stopsKey, JSON.stringify(entry));
    process.kill(process.pid, 'SIGSTOP');
    // Continued by the harness long after the lease ended: the store must refuse what follows.
  }
  if (kit.armed === 'mid-batch') await pairUp();
  // Kafka: the routing key is the record key; RabbitMQ: no routing key, `out` is a queue.
  ctx.publish(
    config.out,
    { id },
    {
      ...(config.transport === 'kafka' ? { routingKey: id } : {}),
      headers: kit.publishHeaders(ctx),
    },
  );
  return { ok: true };
}

process.on('message', (m: WorkerCommand) => {
  if (m.type !== 'dump') note(`command ${JSON.stringify(m)}`);
  if (m.type === 'dump') process.send?.(dump());
  else if (m.type === 'arm') kit.arm(m.point, m.at);
  else if (m.type === 'disarm') {
    kit.arm('none', 0);
    pauseArmed = false;
  } else if (m.type === 'pause') pauseArmed = true;
});

let stop: () => Promise<void>;
let dump: () => WorkerState = () => ({ type: 'state', stats: undefined, recent });
if (config.transport === 'rabbitmq') {
  const rabbit = createPublisher({ connection: env.amqpUrl });
  const publisher = {
    async publish(messages: readonly OutgoingMessage[]) {
      await rabbit.publish(messages);
      await kit.published(messages);
    },
  };
  const consumer = createRabbitConsumer<{ id: string }>({
    connection: env.amqpUrl,
    queue: config.source,
    consumer: CONSUMER,
    store,
    publisher,
    prefetch: 8,
    leaseMs: config.leaseMs,
    retentionCheck: 'off',
    retryDelaysMs: [100, 500],
    retry: { maxAttempts: 50, initialDelayMs: 100, maxDelayMs: 500 },
    logger,
    handler: (order, ctx) => handle(order.id, ctx),
  });
  await consumer.start();
  probeLiveness(consumer.processor);
  dump = () => ({ type: 'state', stats: consumer.stats, store: storeState(), recent });
  stop = async () => {
    await consumer.stop({ timeoutMs: 5_000 });
    await rabbit.close();
  };
} else {
  const realKafka = new Kafka({
    clientId: `soak-${process.pid}`,
    brokers: env.kafkaBrokers,
    logLevel: logLevel.NOTHING,
    retry: { retries: 30, initialRetryTime: 300, maxRetryTime: 5_000 },
  });
  const clients: { consumer: Consumer; assigned: unknown }[] = [];
  // The client wrapper is where a kill lands between resolving offsets and committing them.
  const kafka: KafkaLike = {
    producer: (c) => realKafka.producer(c as Parameters<typeof realKafka.producer>[0]),
    consumer(c) {
      const consumer = realKafka.consumer(c as Parameters<typeof realKafka.consumer>[0]);
      const client = { consumer, assigned: undefined as unknown };
      clients.push(client);
      consumer.on(consumer.events.GROUP_JOIN, (e) => {
        client.assigned = e.payload.memberAssignment;
        note(`joined: ${JSON.stringify(e.payload.memberAssignment)}`);
      });
      // A crash kafkajs does not restart (a non-retriable error) leaves a worker that consumes
      // nothing: exit, the harness starts a new one.
      consumer.on(consumer.events.CRASH, (e) => {
        if (!e.payload.restart) {
          console.error(`kafka consumer crashed for good: ${String(e.payload.error)}`);
          process.exit(3);
        }
      });
      const run = consumer.run.bind(consumer);
      consumer.run = (cfg) =>
        run({
          ...cfg,
          eachBatch: cfg?.eachBatch
            ? (payload) =>
                cfg.eachBatch!({
                  ...payload,
                  commitOffsetsIfNecessary: async (offsets) => {
                    await kit.hit('before-commit');
                    return payload.commitOffsetsIfNecessary(offsets);
                  },
                })
            : undefined,
        });
      return consumer as unknown as ReturnType<KafkaLike['consumer']>;
    },
  };
  const producer = createProducer({ kafka });
  const publisher = {
    ...producer,
    async publish(messages: Parameters<typeof producer.publish>[0]) {
      await producer.publish(messages);
      await kit.published(messages);
    },
  };
  const consumer = createKafkaConsumer<{ id: string }>({
    kafka,
    groupId: config.groupId!,
    consumer: CONSUMER,
    topics: [config.source],
    deadLetter: { topic: config.dlqTopic! },
    producer: publisher,
    store,
    fromBeginning: true,
    consumerConfig: {
      sessionTimeout: 6_000,
      rebalanceTimeout: 10_000,
      heartbeatInterval: 500,
      retry: { retries: 30, initialRetryTime: 300, maxRetryTime: 5_000 },
    },
    leaseMs: config.leaseMs,
    retentionCheck: 'off',
    retry: { maxAttempts: 50, initialDelayMs: 100, maxDelayMs: 1_000 },
    logger,
    handler: (order, ctx) => handle(order.id, ctx),
  });
  await consumer.start();
  probeLiveness(consumer.processor);
  dump = () => ({
    type: 'state',
    stats: consumer.stats,
    kafka: clients.map((c) => ({ assigned: c.assigned, paused: c.consumer.paused() })),
    store: storeState(),
    recent,
  });
  stop = async () => {
    await consumer.stop();
    await producer.disconnect();
  };
}

/**
 * The liveness probe a production worker would have (core README, "Liveness"): a store client
 * that has not answered for a minute is broken in this process (the MongoDB driver's monitor can
 * hang for good when the server dies mid-check), while it holds messages or partitions other
 * workers could process. Exit; the harness starts a new worker, with a new client.
 */
const STORE_PATIENCE_MS = 60_000;
function probeLiveness(processor: Pick<Processor, 'storeHealth'>): void {
  setInterval(() => {
    const since = processor.storeHealth().unavailableSince;
    if (since === undefined || Date.now() - since < STORE_PATIENCE_MS) return;
    console.error(`liveness: the store has not answered for ${Date.now() - since} ms; exiting for a restart`);
    console.error(recent.slice(-5).join('\n'));
    process.exit(4);
  }, 5_000).unref();
}

let stopping = false;
process.on('SIGTERM', () => {
  if (stopping) return;
  stopping = true;
  void (async () => {
    await stop().catch(() => {});
    await closeStore().catch(() => {});
    await ledgerRedis.quit().catch(() => {});
    process.exit(0);
  })();
});
// The harness is gone (killed, or ended without stopping its workers): nothing will stop this
// worker or count its effects any more.
process.on('disconnect', () => process.exit(0));
process.send?.({ type: 'ready' });
