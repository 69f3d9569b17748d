/**
 * Document-outbox drain to Kafka: a backlog of N order documents, each written with two events
 * (`outboxFields`), drained by `createOutboxRelay` over `createMongoOutboxSource` with the SDK's
 * Kafka producer, against `raw-publish`: the same producer publishing the same number of
 * messages in window-sized confirmed batches, nothing read or marked. Interleaved per round.
 *
 * The drain is timed from the relay's start to the last backlog message confirmed; marking the
 * documents published continues in the background and is not in the figure (it is in the note).
 */
import { createOutboxRelay, type OutgoingMessage } from '@exactly-once/core';
import { createProducer } from '@exactly-once/kafka';
import { createMongoOutboxSource, outboxFields } from '@exactly-once/store-mongo';
import { Kafka, logLevel } from 'kafkajs';
import { MongoClient } from 'mongodb';
import { env, sampleLoad, uniqueName } from './env.js';
import type { Progress } from './progress.js';
import { median, rotate } from './stats.js';
import { table } from './report.js';
import { quietLogger } from './workload.js';

export const RELAY_VARIANTS = ['raw-publish', 'relay-drain'] as const;
export type RelayVariant = (typeof RELAY_VARIANTS)[number];

export interface RelayRound {
  variant: RelayVariant;
  round: number;
  messages: number;
  window: number;
  rate: number;
  maxInFlight: number;
  /** relay-drain: seconds after the drain until every document was marked published. */
  markLagSeconds?: number;
  load: number;
}

export interface RelayOptions {
  rounds: number;
  /** Orders in the backlog (two messages each). */
  orders: number;
  window: number;
  mongoUrl: string;
}

export async function runOutboxRelay(o: RelayOptions, progress: Progress): Promise<RelayRound[]> {
  const kafka = new Kafka({
    clientId: uniqueName('bench-relay'),
    brokers: [...env.kafkaBrokers],
    logLevel: logLevel.NOTHING,
  });
  const mongo = new MongoClient(o.mongoUrl);
  await mongo.connect();
  const out: RelayRound[] = [];
  try {
    for (let round = 0; round < o.rounds; round++) {
      for (const variant of rotate(RELAY_VARIANTS, round)) {
        const topic = uniqueName(`bench-relay-${variant}`);
        const admin = kafka.admin();
        await admin.connect();
        await admin.createTopics({ topics: [{ topic, numPartitions: 4 }], waitForLeaders: true });
        await admin.disconnect();
        const producer = createProducer({ kafka });
        await producer.connect();
        const messages = o.orders * 2;
        let done = 0;
        const task = progress.track(`relay ${variant} r${round + 1}`, messages, () => done);
        try {
          if (variant === 'raw-publish') {
            const started = performance.now();
            for (let sent = 0; sent < messages; sent += o.window) {
              const batch: OutgoingMessage[] = Array.from(
                { length: Math.min(o.window, messages - sent) },
                (_, i) => ({
                  id: `raw-${sent + i}`,
                  destination: topic,
                  routingKey: `o-${(sent + i) >> 1}`,
                  body: Buffer.from(
                    JSON.stringify({ type: 'OrderCreated', orderId: `o-${(sent + i) >> 1}` }),
                  ),
                  headers: { 'x-idempotency-key': `raw-${sent + i}` },
                }),
              );
              await producer.publish(batch);
              done += batch.length;
            }
            const seconds = (performance.now() - started) / 1000;
            out.push({
              variant,
              round,
              messages,
              window: o.window,
              rate: messages / seconds,
              maxInFlight: o.window,
              load: sampleLoad().load1,
            });
          } else {
            const orders = mongo.db('bench_outbox').collection(uniqueName('orders'));
            for (let i = 0; i < o.orders; i += 1_000) {
              const docs = Array.from({ length: Math.min(1_000, o.orders - i) }, (_, j) => {
                const id = `o-${i + j}`;
                return {
                  _id: id as never,
                  status: 'created',
                  ...outboxFields(id, [
                    { destination: topic, key: id, body: { type: 'OrderCreated', orderId: id } },
                    { destination: topic, key: id, body: { type: 'OrderPriced', orderId: id } },
                  ]),
                };
              });
              await orders.insertMany(docs, { ordered: false });
            }
            const source = createMongoOutboxSource({ collection: orders });
            await source.ensureIndexes();
            const relay = createOutboxRelay({
              source,
              publisher: producer,
              window: { initial: 256, min: 16, max: o.window },
              logger: quietLogger,
            });
            const started = performance.now();
            relay.start();
            while (relay.stats().published < messages) {
              done = relay.stats().published;
              await new Promise((r) => setTimeout(r, 2));
            }
            const seconds = (performance.now() - started) / 1000;
            await relay.drained();
            const markLagSeconds = (performance.now() - started) / 1000 - seconds;
            const stats = relay.stats();
            await relay.stop();
            await orders.drop().catch(() => {});
            out.push({
              variant,
              round,
              messages,
              window: o.window,
              rate: messages / seconds,
              maxInFlight: stats.maxInFlight,
              markLagSeconds,
              load: sampleLoad().load1,
            });
          }
        } finally {
          task.stop();
          await producer.disconnect();
        }
      }
    }
  } finally {
    await mongo.close();
  }
  return out;
}

export interface RelaySummary {
  variant: RelayVariant;
  messages: number;
  window: number;
  rate: number;
  vsRaw: number;
  maxInFlight: number;
  markLagSeconds: number;
  load: number;
}

export function summarizeRelay(rounds: readonly RelayRound[]): RelaySummary[] {
  return RELAY_VARIANTS.map((variant) => {
    const mine = rounds.filter((r) => r.variant === variant);
    const ratios = mine.map((r) => {
      const raw = rounds.find((x) => x.variant === 'raw-publish' && x.round === r.round);
      return raw ? r.rate / raw.rate : Number.NaN;
    });
    return {
      variant,
      messages: mine[0]?.messages ?? 0,
      window: mine[0]?.window ?? 0,
      rate: median(mine.map((r) => r.rate)),
      vsRaw: median(ratios),
      maxInFlight: Math.max(...mine.map((r) => r.maxInFlight)),
      markLagSeconds: median(mine.map((r) => r.markLagSeconds ?? Number.NaN)),
      load: median(mine.map((r) => r.load)),
    };
  });
}

export function relayTable(rows: readonly RelaySummary[]): string {
  return table(
    [
      ['variant', 0],
      ['msgs', 0],
      ['window', 0],
      ['msgs/s', 0],
      ['x raw (target >= 0.8)', 2],
      ['max in-flight (target <= window)', 0],
      ['marked s after', 1],
      ['load', 1],
    ],
    rows.map((r) => [
      r.variant,
      r.messages,
      r.window,
      r.rate,
      r.vsRaw,
      r.maxInFlight,
      r.markLagSeconds,
      r.load,
    ]),
  );
}
