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
  /** A wait fails after this long without progress. @defaultValue 120000 */
  stallMs?: number;
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
  // The raw comparison's topic too, now: created right after Kafka's restart, its metadata may not
  // have reached the broker yet (kafkajs then fails with "does not host this topic-partition").
  await admin.createTopics({
    topics: [runTopic, `${runTopic}-raw`].map((topic) => ({ topic, numPartitions: 4 })),
    waitForLeaders: true,
  });
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
    // A warning per failed round while Kafka is down would flood the log: the first of each
    // kind of failure is printed, then every 20th of them.
    logger: {
      debug() {},
      info() {},
      warn: warnSome(log),
      error: (m, f) => log(`relay: ${m} ${JSON.stringify(f ?? {})}`),
    },
  });
  const list = makeOrders(o.orders, `o-${run}`);
  const toTopic = (docs: typeof list) => placeOrders(orders, docs, runTopic);
  const warm = list.slice(0, o.warmup ?? 100);
  // Every wait below fails, with the relay's counters, once nothing moved for `stallMs`: a hung
  // phase then says which it was instead of running into the caller's timeout.
  const stallMs = o.stallMs ?? 120_000;
  const relayState = () => JSON.stringify(relayed.relay.stats());
  // Progress is messages confirmed or marked: failed rounds retried forever are not progress.
  const moved = () => {
    const { published, unmarked } = relayed.relay.stats();
    return [published, unmarked];
  };
  const until = (
    what: string,
    done: () => boolean,
    progress: () => unknown = () => relayed.relay.stats().published,
  ) => waitUntil(what, done, progress, stallMs, relayState);
  const drained = async (what: string) => {
    let done = false;
    const marked = relayed.relay.drained().then(() => {
      done = true;
    });
    await until(`${what} relayed and marked`, () => done, moved);
    await marked;
  };

  await toTopic(warm);
  await drained('warm-up');
  log(`${warm.length} orders relayed with Kafka up; stopping Kafka`);

  await o.stopKafka();
  const started = performance.now();
  await toTopic(list.slice(warm.length));
  log(
    `${list.length - warm.length} orders placed while Kafka was down (${((performance.now() - started) / 1000).toFixed(1)} s)`,
  );
  await until(
    'the lag alert',
    () => alerts.length > 0,
    () => alerts.length,
  );
  await o.startKafka();
  log('Kafka is back; draining');

  // The drain is timed from the first confirmed round after the outage to the last message of the
  // backlog confirmed (marking the documents published continues in the background).
  const backlog = (list.length - warm.length) * 2;
  const before = relayed.relay.stats().published;
  await until('the first round after the outage', () => relayed.relay.stats().published > before);
  const drainStart = performance.now();
  await until('the backlog', () => relayed.relay.stats().published - before >= backlog);
  const drainSeconds = (performance.now() - drainStart) / 1000;
  const sent = relayed.relay.stats().published - before;
  await drained('the backlog');
  const stats = relayed.relay.stats();
  const waited = performance.now();
  while (!recovered && performance.now() - waited < 10_000) await new Promise((r) => setTimeout(r, 100));
  await relayed.stop();
  log(`drained ${sent} messages in ${drainSeconds.toFixed(1)} s; max in flight ${stats.maxInFlight}`);

  log('publishing the same number raw');
  const rawRate = await rawConfirmedRate(kafka, `${runTopic}-raw`, sent, o.windowMax);
  log('reading the topic back');
  const check = await checkTopic(
    kafka,
    runTopic,
    list.map((x) => x.id),
    stallMs,
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
    drainRate: sent / drainSeconds,
    rawRate,
    failedRounds: stats.failures,
    topic: check,
  };
}

/** Polls `done` every 5 ms; throws once `progress()` has not changed for `stallMs`. */
async function waitUntil(
  what: string,
  done: () => boolean,
  progress: () => unknown,
  stallMs: number,
  state: () => string,
): Promise<void> {
  let last = JSON.stringify(progress());
  let movedAt = performance.now();
  while (!done()) {
    await new Promise((r) => setTimeout(r, 5));
    const now = JSON.stringify(progress());
    if (now !== last) [last, movedAt] = [now, performance.now()];
    else if (performance.now() - movedAt > stallMs) {
      throw new Error(`waiting for ${what}: no progress for ${stallMs / 1000} s; relay ${state()}`);
    }
  }
}

/**
 * Messages per second of the same producer publishing `count` similar messages to `topic` (created
 * already), `batch` per confirmed call.
 */
async function rawConfirmedRate(kafka: Kafka, topic: string, count: number, batch: number): Promise<number> {
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

/** A logger's `warn` printing the first warning of each message and every 20th after it. */
function warnSome(log: (line: string) => void): (message: string, meta?: object) => void {
  const seen = new Map<string, number>();
  return (message, meta) => {
    const n = (seen.get(message) ?? 0) + 1;
    seen.set(message, n);
    if (n === 1 || n % 20 === 0) log(`relay (${n}x): ${message} ${JSON.stringify(meta ?? {})}`);
  };
}
