/**
 * Consumer semantics against the real broker, on each client (kafkajs and
 * `@confluentinc/kafka-javascript`): per-partition order, broker-id keys, heartbeats during work
 * longer than the session timeout, long retry waits that pause only their partition, the
 * optional retry topic, revocation, and commit on stop.
 */
import { PermanentError, recordKeyFor } from '@exactly-once/core';
import { createConsumer, type KafkaConsumer, type KafkaLike } from '@exactly-once/kafka';
import { createPublisher } from '@exactly-once/rabbitmq';
import { createRedisStore, redisKeyFor } from '@exactly-once/store-redis';
import type { Redis } from 'ioredis';
import type { Admin, Kafka } from 'kafkajs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { rawChannel } from '../rabbitmq/helpers.js';
import { env } from '../support/env.js';
import {
  CLIENTS,
  clientKafka,
  committed,
  createTopics,
  dropStorePrefixes,
  fastGroup,
  fullyCommitted,
  joinCounter,
  newKafka,
  newRedis,
  quietLogger,
  readTopic,
  storePrefix,
  topicSize,
  uniqueName,
  waitUntil,
} from './helpers.js';

let kafka: Kafka;
let admin: Admin;
let redis: Redis;
const running: KafkaConsumer[] = [];

beforeAll(async () => {
  kafka = newKafka('consumer-test');
  admin = kafka.admin();
  await admin.connect();
  redis = newRedis();
});

afterEach(async () => {
  await Promise.all(running.splice(0).map((c) => c.stop()));
});

afterAll(async () => {
  await admin?.disconnect();
  if (redis) await dropStorePrefixes(redis);
  await redis?.quit();
});

async function setup(partitions = 3) {
  const topic = uniqueName('consumer');
  await createTopics(admin, [topic, `${topic}.dlq`, `${topic}.retry`], partitions);
  return { topic, dlq: `${topic}.dlq`, retry: `${topic}.retry`, groupId: uniqueName('consumer-group') };
}

async function send(
  topic: string,
  messages: { key: string; value: unknown; id?: string; partition?: number }[],
) {
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  await producer.send({
    topic,
    acks: -1,
    messages: messages.map((m) => ({
      key: m.key,
      ...(m.partition === undefined ? {} : { partition: m.partition }),
      value: JSON.stringify(m.value),
      headers: m.id ? { 'x-idempotency-key': m.id } : {},
    })),
  });
  await producer.disconnect();
}

function start<T>(options: Parameters<typeof createConsumer<T>>[0]): Promise<KafkaConsumer> {
  const consumer = createConsumer<T>({
    fromBeginning: true,
    consumerConfig: fastGroup,
    logger: quietLogger,
    ...options,
  });
  running.push(consumer);
  return consumer.start().then(() => consumer);
}

const store = () => createRedisStore({ client: redis, keyPrefix: storePrefix() });

describe.each(CLIENTS)('kafka consumer on %s', (client) => {
  /** The adapter's client; `kafka` (kafkajs) sets up topics, sends the input and reads the output. */
  let subject: KafkaLike;
  beforeAll(() => {
    subject = clientKafka(client, 'consumer-test');
  });

  it('keeps per-partition order, keys keyless records by topic/partition/offset, and tells the handler where each came from', async () => {
    const { topic, dlq, groupId } = await setup();
    const keys = ['a', 'b', 'c', 'd'];
    await send(
      topic,
      Array.from({ length: 200 }, (_, i) => ({
        key: keys[i % 4] as string,
        value: { k: keys[i % 4], seq: i },
      })),
    );
    const seen: { k: string; seq: number; key: string; from: string }[] = [];
    await start<{ k: string; seq: number }>({
      kafka: subject,
      groupId,
      topics: [topic],
      deadLetter: { topic: dlq },
      store: store(),
      missingKey: 'broker-id',
      handler: (p, ctx) => {
        const { destination, system, attributes } = ctx.delivery;
        const at = `kafka:${destination}:${attributes?.['messaging.destination.partition.id']}:${attributes?.['messaging.kafka.offset']}`;
        seen.push({ k: p.k, seq: p.seq, key: ctx.key, from: `${system} ${at} ${ctx.delivery.brokerId}` });
      },
    });
    await waitUntil(() => fullyCommitted(admin, groupId, topic), { message: 'all committed' });
    expect(seen).toHaveLength(200);
    for (const k of keys) {
      const seqs = seen.filter((s) => s.k === k).map((s) => s.seq);
      expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
    }
    expect(seen.every((s) => /^kafka:consumer-[^:]+:\d:\d+$/.test(s.key))).toBe(true);
    expect(new Set(seen.map((s) => s.key)).size).toBe(200);
    // The partition and offset the handler was told are the record's own (its broker id).
    expect(seen.every((s) => s.from === `kafka ${s.key} ${s.key}`)).toBe(true);
  });

  it('a record sent twice in a row (a retried send) is run once; the copy is a duplicate, never busy', async () => {
    const { topic, dlq, groupId } = await setup();
    // One partition, each payment twice in a row with the same key: the copy lands in the same
    // ordered group as its original, right behind it.
    await send(
      topic,
      Array.from({ length: 20 }, (_, i) =>
        [0, 1].map(() => ({ key: 'one', value: { i }, id: `twice-${i}` })),
      ).flat(),
    );
    const ran: number[] = [];
    const consumer = await start<{ i: number }>({
      kafka: subject,
      groupId,
      topics: [topic],
      deadLetter: { topic: dlq },
      store: store(),
      handler: (p) => {
        ran.push(p.i);
      },
    });
    await waitUntil(() => fullyCommitted(admin, groupId, topic), { message: 'all committed' });
    expect(ran).toEqual([...Array(20).keys()]);
    // Before: each copy was answered busy (its original's lease), which stopped the group, and
    // waited a tenth of the lease (3 s by default) before it was asked again.
    expect(consumer.stats.byOutcome).toEqual({ acquired: 20, duplicate: 20 });
    expect(consumer.stats.deferred).toBe(0);
  });

  it('heartbeats through a handler longer than the session timeout: no rebalance, one run', async () => {
    const { topic, dlq, groupId } = await setup(1);
    await send(topic, [
      { key: 'x', value: { slow: true }, id: 'slow' },
      { key: 'x', value: { slow: false }, id: 'fast' },
    ]);
    let runs = 0;
    const joins = joinCounter(client);
    let slowDone = false;
    const consumer = createConsumer<{ slow: boolean }>({
      kafka: subject,
      groupId,
      topics: [topic],
      deadLetter: { topic: dlq },
      store: store(),
      fromBeginning: true,
      consumerConfig: { ...fastGroup, ...joins.consumerConfig }, // session timeout 6 s
      logger: quietLogger,
      handler: async (p) => {
        runs++;
        if (p.slow) {
          // Longer than the session timeout; finishes on an observable condition.
          const until = Date.now() + fastGroup.sessionTimeout * 1.5;
          await waitUntil(() => Date.now() >= until, { timeoutMs: 20_000, intervalMs: 100 });
          slowDone = true;
        }
      },
    });
    running.push(consumer);
    joins.attach(consumer);
    await consumer.start();
    await waitUntil(() => fullyCommitted(admin, groupId, topic), { timeoutMs: 40_000, message: 'committed' });
    expect(slowDone).toBe(true);
    expect(runs).toBe(2);
    expect(joins.joins).toBe(1);
    expect(consumer.stats.abandoned).toBe(0);
  }, 60_000);

  it('a long retry wait pauses only its partition; the record is retried in place, in order', async () => {
    const { topic, dlq, groupId } = await setup(2);
    const records = [
      { key: 'p', value: { id: 'flaky-1' }, id: 'flaky-1', partition: 0 },
      { key: 'p', value: { id: 'after-flaky' }, id: 'after-flaky', partition: 0 },
      ...Array.from({ length: 40 }, (_, i) => ({
        key: `other-${i}`,
        value: { id: `o-${i}` },
        id: `o-${i}`,
        partition: 1,
      })),
    ];
    await send(topic, records);
    const order: string[] = [];
    const attempts = new Map<string, number>();
    let flakyFailures = 0;
    const consumer = await start<{ id: string }>({
      kafka: subject,
      groupId,
      topics: [topic],
      deadLetter: { topic: dlq },
      store: store(),
      maxInPlaceWaitMs: 200,
      retry: { maxAttempts: 3, initialDelayMs: 1_500, jitter: 'none' },
      handler: (p, ctx) => {
        attempts.set(p.id, ctx.attempt);
        if (p.id === 'flaky-1' && flakyFailures++ === 0) throw new Error('transient');
        order.push(p.id);
      },
    });
    await waitUntil(() => fullyCommitted(admin, groupId, topic), { message: 'all committed' });
    expect(consumer.stats.paused).toBeGreaterThanOrEqual(1);
    expect(flakyFailures).toBe(2);
    // Partition 0 kept its order: the record behind the retried one waited for it.
    expect(order.indexOf('flaky-1')).toBeLessThan(order.indexOf('after-flaky'));
    // The pause gave its lease back unrun: that was no attempt (it used to count, so a record
    // behind one retried often was dead-lettered without ever running).
    expect(attempts.get('after-flaky')).toBe(1);
    expect(attempts.get('flaky-1')).toBe(2);
    // Partition 1 did not wait for partition 0's 1.5 s retry (its 40 records take milliseconds).
    const lastOther = Math.max(...order.map((id, i) => (id.startsWith('o-') ? i : -1)));
    expect(lastOther).toBeLessThan(order.indexOf('flaky-1'));
  });

  it('with a retry topic: copies the record with its next attempt, keeps the partition flowing', async () => {
    const { topic, dlq, retry, groupId } = await setup(1);
    await send(topic, [
      { key: 'k', value: { id: 'flaky' } }, // keyless: broker-id policy, key must survive the copy
      { key: 'k', value: { id: 'next' }, id: 'next' },
    ]);
    const runs: { id: string; key: string; attempt: number }[] = [];
    let failures = 0;
    await start<{ id: string }>({
      kafka: subject,
      groupId,
      topics: [topic],
      retryTopic: retry,
      deadLetter: { topic: dlq },
      store: store(),
      missingKey: 'broker-id',
      retry: { maxAttempts: 5, initialDelayMs: 300, jitter: 'none' },
      handler: (p, ctx) => {
        runs.push({ id: p.id, key: ctx.key, attempt: ctx.attempt });
        if (p.id === 'flaky' && failures++ < 2) throw new Error('transient');
      },
    });
    await waitUntil(() => runs.filter((r) => r.id === 'flaky').length === 3, { message: 'three runs' });
    await waitUntil(() => fullyCommitted(admin, groupId, retry), { message: 'retry topic committed' });
    const flaky = runs.filter((r) => r.id === 'flaky');
    expect(new Set(flaky.map((r) => r.key)).size).toBe(1);
    expect(flaky[0]?.key).toMatch(new RegExp(`^kafka:${topic}:0:0$`));
    expect(flaky.map((r) => r.attempt)).toEqual([1, 2, 3]);
    // Order is given up for retries: the next record did not wait.
    expect(runs.findIndex((r) => r.id === 'next')).toBeLessThan(runs.findLastIndex((r) => r.id === 'flaky'));
    const copies = await readTopic(kafka, retry, (r) => r.length >= 2);
    expect(copies.map((c) => c.headers['x-eo-attempt'])).toEqual(['2', '3']);
    expect(copies.every((c) => c.headers['x-eo-original-topic'] === topic)).toBe(true);
    expect(copies.every((c) => c.headers['x-eo-original-offset'] === '0')).toBe(true);
  });

  it('on revocation gives up a slow run; the new owner waits (busy) and acks the duplicate', async () => {
    const { topic, dlq, groupId } = await setup(2);
    await send(topic, [
      { key: 'a', value: { id: 'warm' }, id: 'warm', partition: 0 },
      { key: 'b', value: { id: 'quick' }, id: 'quick', partition: 1 },
    ]);
    const runs = new Map<string, number>();
    const bJoins = joinCounter(client);
    let slowDone = false;
    const common = {
      kafka: subject,
      groupId,
      topics: [topic],
      deadLetter: { topic: dlq },
      store: store(),
      revokeGraceMs: 200,
      leaseMs: 6_000,
      handler: async (p: { id: string }) => {
        runs.set(p.id, (runs.get(p.id) ?? 0) + 1);
        if (p.id === 'slow') {
          // Runs until the second member has joined and A has given this run up (or 5 s more:
          // see the assertion on `abandoned` below).
          await waitUntil(() => bJoins.joins > 0, { timeoutMs: 40_000 });
          const until = Date.now() + 5_000;
          await waitUntil(() => (a !== undefined && a.stats.abandoned > 0) || Date.now() >= until);
          await new Promise((resolve) => setTimeout(resolve, 500));
          slowDone = true;
        }
      },
    };
    // Assigned below; the slow handler reads A's counters.
    let a: KafkaConsumer | undefined;
    a = await start<{ id: string }>(common);
    // The slow record comes once A consumes both partitions. librdkafka delivers the revocation
    // when the client fetches again, which its KafkaJS layer does between batches: here when
    // twice `rebalanceTimeout` passed without a fetch and the slow batch is marked stale.
    await waitUntil(() => runs.get('warm') === 1 && runs.get('quick') === 1, { message: 'A consuming' });
    await send(topic, [{ key: 'a', value: { id: 'slow' }, id: 'slow', partition: 0 }]);
    await waitUntil(() => runs.get('slow') === 1, { message: 'slow run started' });
    const b = createConsumer<{ id: string }>({
      ...common,
      fromBeginning: true,
      consumerConfig: { ...fastGroup, ...bJoins.consumerConfig },
      logger: quietLogger,
    });
    running.push(b);
    bJoins.attach(b);
    await b.start();
    await waitUntil(() => fullyCommitted(admin, groupId, topic), {
      timeoutMs: 100_000,
      message: 'committed',
    });
    expect(slowDone).toBe(true);
    // kafkajs tells the batch at once (its heartbeat fails with a rebalance error). librdkafka
    // marks a batch stale only when twice `rebalanceTimeout` passed without a fetch, the moment it
    // also expels the member for exceeding its poll interval: when the expulsion wins, A's run is
    // never given up, it completes under its still valid lease, and B answers the record as a
    // duplicate. Either way: one run, committed once.
    if (client === 'kafkajs') expect(a.stats.abandoned).toBeGreaterThanOrEqual(1);
    // The slow record ran once: its next owner found it busy and waited (B: deferred and asked
    // again; A, when the partition came back to it: for its own run), and acked the duplicate.
    expect(runs.get('slow')).toBe(1);
    const duplicates = (c: KafkaConsumer) => c.stats.byOutcome.duplicate ?? 0;
    expect(a.stats.deferred + b.stats.deferred + duplicates(a) + duplicates(b)).toBeGreaterThanOrEqual(1);
  }, 150_000);

  it('stop() mid-batch lets the current run finish and commits exactly what was settled', async () => {
    const { topic, dlq, groupId } = await setup(3);
    await send(
      topic,
      Array.from({ length: 90 }, (_, i) => ({ key: `k${i}`, value: { i }, id: `s-${i}` })),
    );
    let done = 0;
    const consumer = await start<{ i: number }>({
      kafka: subject,
      groupId,
      topics: [topic],
      deadLetter: { topic: dlq },
      store: store(),
      commitEveryMessages: 1_000,
      commitIntervalMs: 60_000,
      handler: async () => {
        await new Promise((r) => setTimeout(r, 30));
        done++;
      },
    });
    await waitUntil(() => done >= 20, { message: 'some processed' });
    await consumer.stop();
    const offsets = await committed(admin, groupId, topic);
    const total = [...offsets.values()].reduce((n, v) => n + Math.max(0, v), 0);
    expect(total).toBe(consumer.stats.acked);
    expect(total).toBe(done);
    expect(total).toBeLessThan(90);
  });

  it('publishes in offset order past a dead-lettered record and records that publish nothing', async () => {
    // Found by a README-only tester: the records behind a malformed one published their messages
    // side by side with the ones ahead of it (e01 e12 e02 e13 ...), out of the partition's order.
    const { topic, dlq, groupId } = await setup(1);
    const out = `${topic}.out`;
    await createTopics(admin, [out], 1);
    await send(topic, [
      ...Array.from({ length: 21 }, (_, seq) => ({ key: 'acct-1', value: { seq }, id: `${topic}-${seq}` })),
    ]);
    await start<{ seq: number }>({
      kafka: subject,
      groupId,
      topics: [topic],
      deadLetter: { topic: dlq },
      store: store(),
      validate: (m) => {
        if (m.seq === 10) throw new Error('not an event');
      },
      handler: (m, ctx) => {
        // Every fifth record changes nothing downstream: no message.
        if (m.seq % 5 !== 4) ctx.publish(out, { seq: m.seq }, { routingKey: 'acct-1' });
      },
    });
    await waitUntil(() => fullyCommitted(admin, groupId, topic), { message: 'all committed' });
    const expected = Array.from({ length: 21 }, (_, seq) => seq).filter((seq) => seq !== 10 && seq % 5 !== 4);
    const records = await readTopic(kafka, out, (r) => r.length >= expected.length);
    expect(records.map((r) => (JSON.parse(String(r.value)) as { seq: number }).seq)).toEqual(expected);
    expect(await topicSize(admin, dlq)).toBe(1);
  });

  it('a record damaged by hand dead-letters its record CORRUPT_RECORD; the partition goes on in order, nothing taken over', async () => {
    const { topic, dlq, groupId } = await setup(1);
    const keyPrefix = storePrefix();
    const damaged = redisKeyFor(keyPrefix, recordKeyFor({ consumer: groupId, key: `${topic}-2` }));
    await redis.set(damaged, 'not a record');
    await send(
      topic,
      Array.from({ length: 6 }, (_, seq) => ({ key: 'acct-1', value: { seq }, id: `${topic}-${seq}` })),
    );
    const ran: [number, number][] = [];
    await start<{ seq: number }>({
      kafka: subject,
      groupId,
      topics: [topic],
      deadLetter: { topic: dlq },
      store: createRedisStore({ client: redis, keyPrefix }),
      handler: (m, ctx) => {
        ran.push([m.seq, ctx.attempt]);
      },
    });
    await waitUntil(() => fullyCommitted(admin, groupId, topic), { message: 'all committed' });
    expect(ran).toEqual([
      [0, 1],
      [1, 1],
      [3, 1],
      [4, 1],
      [5, 1],
    ]);
    const [letter] = await readTopic(kafka, dlq, (r) => r.length >= 1);
    expect(String(letter?.headers?.['x-eo-error-code'])).toBe('CORRUPT_RECORD');
    expect(await redis.get(damaged)).toBe('not a record');
  });

  it('publisher takes the ctx.publish messages (here: RabbitMQ); producer still writes the dead letters', async () => {
    const { topic, dlq, groupId } = await setup(1);
    const queue = uniqueName('from-kafka');
    const raw = await rawChannel();
    await raw.ch.assertQueue(queue, { durable: true });
    const rabbit = createPublisher({ connection: env.amqpUrl });
    try {
      await send(topic, [
        { key: 'k', value: { id: 'ok' }, id: 'pub-ok' },
        { key: 'k', value: { id: 'bad' }, id: 'pub-bad' },
      ]);
      const consumer = await start<{ id: string }>({
        kafka: subject,
        groupId,
        topics: [topic],
        deadLetter: { topic: dlq },
        publisher: rabbit,
        store: store(),
        handler: (p, ctx) => {
          if (p.id === 'bad') throw new PermanentError('declined');
          ctx.publish(queue, { id: p.id });
        },
      });
      await waitUntil(() => fullyCommitted(admin, groupId, topic), { message: 'all committed' });
      const [out] = await waitUntil(
        async () => ((await raw.count(queue)) === 1 ? raw.drain(queue) : undefined),
        { timeoutMs: 5_000, message: 'the output in the RabbitMQ queue' },
      );
      expect(JSON.parse(String(out?.content))).toEqual({ id: 'ok' });
      expect(out?.properties.headers?.['x-request-id']).toBe('pub-ok');
      expect(await topicSize(admin, dlq)).toBe(1);
      expect(consumer.stats).toMatchObject({ received: 2, acked: 1, deadLettered: 1, inFlight: 0 });
    } finally {
      await rabbit.close();
      await raw.deleteQueues([queue]);
      await raw.close();
    }
  });
});
