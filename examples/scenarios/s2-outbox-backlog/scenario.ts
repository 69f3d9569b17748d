/**
 * S2 end to end: the relay runs, Kafka goes down, orders keep coming (a backlog builds and the
 * lag alert fires), Kafka comes back, the relay drains the backlog with a bounded, adaptive window.
 * Then the same number of messages is published raw (confirmed, same producer, window-sized
 * batches) for the speed comparison, and the topic is read back outside the SDK.
 */
import { randomUUID } from 'node:crypto';
import { createProducer } from '@exactly-once/kafka';
import type { OutgoingMessage } from '@exactly-once/core';
import { Kafka, logLevel } from 'kafkajs';
import { MongoClient } from 'mongodb';
import { makeOrders, ORDER_EVENTS, placeOrders } from './orders.js';
import { startOrderRelay } from './relay.js';
import { checkTopic, type TopicCheck } from './verify.js';

export interface BacklogOptions {
  mongoUrl: string;
  brokers: string[];
  orders: number;
  /** Orders placed while Kafka is up, before the outage. */
  warmup?: number;
  lagThreshold: number;
  windowMax: number;
  stopKafka(): Promise<void>;
  startKafka(): Promise<void>;
  log?(line: string): void;
}

export interface BacklogResult {
  readonly events: number;
  readonly alerts: readonly number[];
  readonly recovered: boolean;
  readonly maxInFlight: number;
  readonly windowMax: number;
  readonly drainSeconds: number;
  readonly drainRate: number;
  readonly rawRate: number;
  readonly failedRounds: number;
  readonly topic: TopicCheck;
}

export async function runBacklogScenario(o: BacklogOptions): Promise<BacklogResult> {
  const log = o.log ?? (() => {});
  const run = randomUUID().slice(0, 8);
  const topic = ORDER_EVENTS;
  const mongo = new MongoClient(o.mongoUrl);
  await mongo.connect();
  const orders = mongo.db('scenario_outbox').collection(`orders_${run}`);
  const kafka = new Kafka({ clientId: `s2-${run}`, brokers: o.brokers, logLevel: logLevel.NOTHING });
  const admin = kafka.admin();
  await admin.connect();
  // A fresh topic per run keeps the read-back exact.
  const runTopic = `${topic}-${run}`;
  await admin.createTopics({ topics: [{ topic: runTopic, numPartitions: 4 }], waitForLeaders: true });
  await admin.disconnect();

  const alerts: number[] = [];
  let recovered = false;
  const relayed = await startOrderRelay({
    orders,
    kafka,
    window: { initial: 256, min: 16, max: o.windowMax },
    lagAlert: {
      threshold: o.lagThreshold,
      everyMs: 500,
      onAlert: (lag) => {
        alerts.push(lag);
        log(`ALERT outbox lag ${lag} > ${o.lagThreshold}`);
      },
      onRecover: (lag) => {
        recovered = true;
        log(`outbox lag back to ${lag}`);
      },
    },
    logger: { debug() {}, info() {}, warn() {}, error: (m) => log(`relay: ${m}`) },
  });
  const list = makeOrders(o.orders, `o-${run}`);
  const toTopic = (docs: typeof list) => placeOrders(orders, docs, runTopic);
  const warm = list.slice(0, o.warmup ?? 100);
  await toTopic(warm);
  await relayed.relay.drained();
  log(`${warm.length} orders relayed with Kafka up; stopping Kafka`);

  await o.stopKafka();
  const started = performance.now();
  await toTopic(list.slice(warm.length));
  log(
    `${list.length - warm.length} orders placed while Kafka was down (${((performance.now() - started) / 1000).toFixed(1)} s)`,
  );
  while (alerts.length === 0) await new Promise((r) => setTimeout(r, 100));
  await o.startKafka();
  log('Kafka is back; draining');

  // The drain is timed from the first confirmed round after the outage to the last message of the
  // backlog confirmed (marking the documents published continues in the background).
  const backlog = (list.length - warm.length) * 2;
  const before = relayed.relay.stats().published;
  while (relayed.relay.stats().published === before) await new Promise((r) => setTimeout(r, 5));
  const drainStart = performance.now();
  while (relayed.relay.stats().published - before < backlog) await new Promise((r) => setTimeout(r, 5));
  const drainSeconds = (performance.now() - drainStart) / 1000;
  const drained = relayed.relay.stats().published - before;
  await relayed.relay.drained();
  const stats = relayed.relay.stats();
  const waited = performance.now();
  while (!recovered && performance.now() - waited < 10_000) await new Promise((r) => setTimeout(r, 100));
  await relayed.stop();
  log(`drained ${drained} messages in ${drainSeconds.toFixed(1)} s; max in flight ${stats.maxInFlight}`);

  const rawRate = await rawConfirmedRate(kafka, `${runTopic}-raw`, drained, o.windowMax);
  const check = await checkTopic(
    kafka,
    runTopic,
    list.map((x) => x.id),
  );
  await orders.drop().catch(() => {});
  await mongo.close();
  return {
    events: list.length * 2,
    alerts,
    recovered,
    maxInFlight: stats.maxInFlight,
    windowMax: o.windowMax,
    drainSeconds,
    drainRate: drained / drainSeconds,
    rawRate,
    failedRounds: stats.failures,
    topic: check,
  };
}

/** Messages per second of the same producer publishing `count` similar messages, `batch` per confirmed call. */
async function rawConfirmedRate(kafka: Kafka, topic: string, count: number, batch: number): Promise<number> {
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic, numPartitions: 4 }], waitForLeaders: true });
  await admin.disconnect();
  const producer = createProducer({ kafka });
  await producer.connect();
  const body = Buffer.from(
    JSON.stringify({
      type: 'OrderCreated',
      order: { id: 'o-00000000-0', customer: 'c-1', amountCents: 100 },
    }),
  );
  const started = performance.now();
  for (let sent = 0; sent < count; sent += batch) {
    const messages: OutgoingMessage[] = Array.from({ length: Math.min(batch, count - sent) }, (_, i) => ({
      id: `raw-${sent + i}`,
      destination: topic,
      routingKey: `o-${(sent + i) >> 1}`,
      body,
      headers: { 'x-idempotency-key': `raw-${sent + i}` },
    }));
    await producer.publish(messages);
  }
  const rate = count / ((performance.now() - started) / 1000);
  await producer.disconnect();
  return rate;
}
