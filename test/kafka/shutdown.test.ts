/**
 * Shutdown against the real broker: after `stop()` resolved, nothing the consumer owns talks to
 * Kafka again. A run that outlived `stop()` (its handler was still busy when stop gave up on it)
 * may still reach `ctx.publish` → complete → publish; that publish is refused (ClosedError), the
 * producer is not reconnected, and the record stays uncommitted for the next owner, which answers
 * it as a duplicate and publishes the outgoing message then.
 */
import { ClosedError, type Logger, scopeKey } from '@exactly-once/core';
import {
  createConsumer,
  createProducer,
  type KafkaConsumer,
  type KafkaConsumerOptions,
  type KafkaLike,
} from '@exactly-once/kafka';
import { createRedisStore } from '@exactly-once/store-redis';
import type { Redis } from 'ioredis';
import type { Admin, ConsumerConfig, Kafka } from 'kafkajs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  committed,
  createTopics,
  dropStorePrefixes,
  fastGroup,
  fullyCommitted,
  newKafka,
  newRedis,
  produceOrders,
  quietLogger,
  storePrefix,
  topicSize,
  uniqueName,
  waitUntil,
} from './helpers.js';
import { endingOnAbort } from '../support/abort.js';

let kafka: Kafka;
let admin: Admin;
let redis: Redis;
const cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  kafka = newKafka('shutdown-test');
  admin = kafka.admin();
  await admin.connect();
  redis = newRedis();
});

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});

afterAll(async () => {
  await admin?.disconnect();
  if (redis) await dropStorePrefixes(redis);
  await redis?.quit();
});

/** The real client, with every producer's connects and disconnects counted (kafkajs events). */
function countingKafka() {
  const counts = { connects: 0, disconnects: 0, producers: 0 };
  const client: KafkaLike = {
    consumer: (config) =>
      kafka.consumer(config as unknown as ConsumerConfig) as unknown as ReturnType<KafkaLike['consumer']>,
    producer: (config) => {
      const producer = kafka.producer(config);
      counts.producers++;
      producer.on(producer.events.CONNECT, () => counts.connects++);
      producer.on(producer.events.DISCONNECT, () => counts.disconnects++);
      return producer;
    },
  };
  return { client, counts };
}

/**
 * Starts a consumer with nothing to do on a fresh topic, for tests of a stop() during its start().
 * `started` is its start()'s outcome, taken at once: it may reject while stop() is still under way.
 */
async function startIdle(client: KafkaLike) {
  const { topic, dlq, groupId, prefix } = await setup();
  const consumer = createConsumer<{ id: string }>({
    kafka: client,
    groupId,
    topics: [topic],
    deadLetter: { topic: dlq },
    store: createRedisStore({ client: redis, keyPrefix: prefix }),
    consumerConfig: fastGroup,
    handler: () => {},
  });
  cleanups.push(() => consumer.stop());
  const started = consumer.start().then(
    () => 'started',
    (error: unknown) => error,
  );
  return { consumer, groupId, started };
}

/** Logs as `{ level, message, meta }`, to see what the pipeline did with a run nobody awaits. */
function recordingLogger() {
  const lines: { level: string; message: string; meta?: Record<string, unknown> }[] = [];
  const at =
    (level: string) =>
    (message: string, meta?: Record<string, unknown>): void => {
      lines.push({ level, message, ...(meta ? { meta } : {}) });
    };
  return { logger: { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') }, lines };
}

async function setup() {
  const topic = uniqueName('shutdown');
  const out = `${topic}.out`;
  const dlq = `${topic}.dlq`;
  await createTopics(admin, [topic, out, dlq], 1);
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  await producer.send({
    topic,
    acks: -1,
    messages: [
      { key: 'k', value: JSON.stringify({ id: 'late-1' }), headers: { 'x-idempotency-key': 'late-1' } },
    ],
  });
  await producer.disconnect();
  return { topic, out, dlq, groupId: uniqueName('shutdown-group'), prefix: storePrefix() };
}

/**
 * The first owner of a test's topic, started on a store client of its own (the test closes it once
 * the consumer is idle), and the next owner's store (on the shared client) and start.
 */
async function firstOwner(
  t: Awaited<ReturnType<typeof setup>>,
  leaseMs: number,
  handler: KafkaConsumerOptions<{ id: string }>['handler'],
  firstLogger: Logger = quietLogger,
) {
  const options = {
    kafka,
    groupId: t.groupId,
    topics: [t.topic],
    deadLetter: { topic: t.dlq },
    fromBeginning: true,
    consumerConfig: fastGroup,
    leaseMs,
    logger: quietLogger,
  };
  const ownClient = newRedis();
  const a = createConsumer<{ id: string }>({
    ...options,
    store: createRedisStore({ client: ownClient, keyPrefix: t.prefix }),
    handler,
    logger: firstLogger,
  });
  cleanups.push(() => a.stop());
  await a.start();
  const store = createRedisStore({ client: redis, keyPrefix: t.prefix });
  const start = async (next: KafkaConsumerOptions<{ id: string }>['handler']): Promise<KafkaConsumer> => {
    const b = createConsumer<{ id: string }>({ ...options, store, handler: next });
    cleanups.push(() => b.stop());
    await b.start();
    return b;
  };
  return { a, ownClient, next: { store, start } };
}

describe('kafka consumer shutdown', () => {
  it('a run that outlives stop() cannot reconnect the producer; the record is redone on restart as a duplicate', async () => {
    const { topic, out, dlq, groupId, prefix } = await setup();
    const store = createRedisStore({ client: redis, keyPrefix: prefix });
    const storeKey = scopeKey('default', groupId, 'late-1');
    const { client, counts } = countingKafka();
    const { logger, lines } = recordingLogger();
    let runs = 0;
    let started = false;
    let release!: () => void;
    const released = new Promise<void>((r) => {
      release = r;
    });
    const a: KafkaConsumer = createConsumer<{ id: string }>({
      kafka: client,
      groupId,
      topics: [topic],
      deadLetter: { topic: dlq },
      store,
      fromBeginning: true,
      consumerConfig: fastGroup,
      revokeGraceMs: 200,
      leaseMs: 3_000,
      logger,
      // The assertions below find the late run's log line by its key.
      recordKeys: true,
      handler: async (p, ctx) => {
        runs++;
        started = true;
        await released; // still running when stop() gives up on it
        ctx.publish(out, { id: p.id });
      },
    });
    cleanups.push(() => a.stop());
    await a.start();
    await waitUntil(() => started, { message: 'the handler started' });
    await a.stop({ timeoutMs: 200 });
    expect(counts).toEqual({ producers: 1, connects: 1, disconnects: 1 });

    // The abandoned run goes on: complete, then publish through the consumer's producer.
    release();
    await waitUntil(
      () => counts.connects > 1 || lines.some((l) => l.meta?.key === storeKey && /publish/.test(l.message)),
      { message: 'the late run tried to publish' },
    );
    expect(counts.connects).toBe(1); // not reconnected
    expect((await store.get(storeKey))?.state).toBe('COMPLETED');
    expect(await topicSize(admin, out)).toBe(0);
    expect((await committed(admin, groupId, topic)).get(0) ?? -1).toBeLessThanOrEqual(0);

    // The next owner finds the record COMPLETED: no second handler run, the output goes out now.
    let runsAfter = 0;
    const b = createConsumer<{ id: string }>({
      kafka,
      groupId,
      topics: [topic],
      deadLetter: { topic: dlq },
      store,
      fromBeginning: true,
      consumerConfig: fastGroup,
      leaseMs: 3_000,
      handler: () => {
        runsAfter++;
      },
    });
    cleanups.push(() => b.stop());
    await b.start();
    await waitUntil(() => fullyCommitted(admin, groupId, topic), { timeoutMs: 40_000, message: 'committed' });
    expect(runs).toBe(1);
    expect(runsAfter).toBe(0);
    expect(b.stats.byOutcome.duplicate).toBe(1);
    await waitUntil(async () => (await topicSize(admin, out)) === 1, { message: 'the output published' });
  }, 90_000);

  it('idle() after stop() waits for a run stop() gave up on, so the store can be closed: the next owner acks it as a duplicate', async () => {
    // Closing the store right after stop() cut that run's completion off: the next owner took
    // the key over after the lease and ran the handler a second time.
    const t = await setup();
    let runs = 0;
    let release!: () => void;
    const released = new Promise<void>((r) => {
      release = r;
    });
    const { a, ownClient, next } = await firstOwner(t, 5_000, async () => {
      runs++;
      await released;
    });
    await waitUntil(() => runs === 1, { message: 'the handler started' });
    await a.stop({ timeoutMs: 200 });
    expect(await a.idle(50)).toBe(false); // still running
    release();
    expect(await a.idle()).toBe(true);
    await ownClient.quit(); // the store goes once nothing of the consumer runs any more

    expect((await next.store.get(scopeKey('default', t.groupId, 'late-1')))?.state).toBe('COMPLETED');
    const b = await next.start(() => void runs++);
    await waitUntil(() => fullyCommitted(admin, t.groupId, t.topic), {
      message: 'committed by the next owner',
    });
    expect(b.stats.byOutcome.duplicate).toBe(1);
    expect(runs).toBe(1);
  });

  it('stop() aborts ctx.signal of a run still going after timeoutMs: its key goes back uncounted and the next owner runs the record at once', async () => {
    // Before, the handler was never told: the next owner waited the whole lease out (busy), then
    // took the key over as after a crash, the shutdown counted as one of its attempts.
    const t = await setup();
    const attempts: number[] = [];
    const reasons: unknown[] = [];
    const warnings: string[] = [];
    const logger = { ...quietLogger, warn: (message: string) => void warnings.push(message) };
    const { a, ownClient, next } = await firstOwner(t, 120_000, endingOnAbort({ attempts, reasons }), logger);
    await waitUntil(() => attempts.length === 1, { message: 'the handler started' });
    await a.stop({ timeoutMs: 200 });
    expect(await a.idle()).toBe(true);
    expect(warnings).toContain(
      'stopping with runs still going after timeoutMs; their records go to the next owner',
    );
    await ownClient.quit();
    expect(reasons).toHaveLength(1);
    expect(reasons[0]).toBeInstanceOf(ClosedError);

    const storeKey = scopeKey('default', t.groupId, 'late-1');
    expect(await next.store.get(storeKey)).toMatchObject({ state: 'IN_PROGRESS', leaseUntil: 0, attempt: 0 });
    const b = await next.start((_, ctx) => void attempts.push(ctx.attempt));
    await waitUntil(() => fullyCommitted(admin, t.groupId, t.topic), {
      message: 'committed by the next owner',
    });
    expect(b.stats.byOutcome.acquired).toBe(1);
    expect(attempts).toEqual([1, 1]);
    expect((await next.store.get(storeKey))?.state).toBe('COMPLETED');
  });

  it('after stop() the default producer refuses every call with ClosedError and never reconnects', async () => {
    const { topic, dlq, groupId, prefix } = await setup();
    const { client, counts } = countingKafka();
    let done = false;
    const consumer = createConsumer<{ id: string }>({
      kafka: client,
      groupId,
      topics: [topic],
      deadLetter: { topic: dlq },
      store: createRedisStore({ client: redis, keyPrefix: prefix }),
      fromBeginning: true,
      consumerConfig: fastGroup,
      handler: () => {
        done = true;
      },
    });
    cleanups.push(() => consumer.stop());
    await consumer.start();
    await waitUntil(() => done, { message: 'one record processed' });
    await consumer.stop();
    expect(counts).toEqual({ producers: 1, connects: 1, disconnects: 1 });
    const { producer } = consumer;
    const calls: [string, () => Promise<unknown>][] = [
      ['send', () => producer.send(dlq, { a: 1 })],
      [
        'sendRecords (dead-letter/retry copies)',
        () => producer.sendRecords(dlq, [{ key: null, value: 'x' }]),
      ],
      [
        'publish',
        () => producer.publish([{ id: 'm', destination: dlq, body: Buffer.from('{}'), headers: {} }]),
      ],
      ['connect', () => producer.connect()],
    ];
    for (const [name, call] of calls) {
      await expect(call(), name).rejects.toBeInstanceOf(ClosedError);
    }
    expect(counts.connects).toBe(1);
    expect(await topicSize(admin, dlq)).toBe(0);
  });

  it('stop() while start() is under way: start() is refused with ClosedError and the member never joins the group', async () => {
    // Before: start() went on after stop() resolved, joined the group, took the partitions and
    // never processed them (each batch saw the stop and returned), with nobody left to disconnect.
    const { consumer, groupId, started } = await startIdle(kafka);
    await consumer.stop();
    expect(await started).toBeInstanceOf(ClosedError);
    // Long enough for a member that went on starting to have joined.
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    const { groups } = await admin.describeGroups([groupId]);
    expect(groups[0]?.members ?? []).toEqual([]);
  });

  it('stop() while start() joins the group: start() is refused with ClosedError and the member leaves', async () => {
    // Before (found by a rolling-deploy run): past connect and subscribe, a stop() let start()
    // resolve, and the worker went on as started while stop() took the member out again.
    let stopNow!: () => void;
    const joining = new Promise<void>((resolve) => {
      stopNow = resolve;
    });
    const client: KafkaLike = {
      consumer: (config) => {
        const real = kafka.consumer(config as unknown as ConsumerConfig);
        const run = real.run.bind(real);
        // The join is under way once run() was called: that is when the stop comes.
        real.run = (...args) => {
          const running = run(...args);
          stopNow();
          return running;
        };
        return real as unknown as ReturnType<KafkaLike['consumer']>;
      },
      producer: (config) => kafka.producer(config),
    };
    const { consumer, groupId, started } = await startIdle(client);
    await joining;
    await consumer.stop();
    expect(await started).toBeInstanceOf(ClosedError);
    const { groups } = await admin.describeGroups([groupId]);
    expect(groups[0]?.members ?? []).toEqual([]);
  });

  it('a producer you pass in is left connected by stop(), but the stopped consumer publishes nothing more through it', async () => {
    const { topic, out, dlq, groupId, prefix } = await setup();
    const shared = createProducer({ kafka });
    cleanups.push(() => shared.disconnect());
    let started = false;
    let release!: () => void;
    const released = new Promise<void>((r) => {
      release = r;
    });
    const { logger, lines } = recordingLogger();
    const storeKey = scopeKey('default', groupId, 'late-1');
    const consumer = createConsumer<{ id: string }>({
      kafka,
      groupId,
      topics: [topic],
      deadLetter: { topic: dlq },
      producer: shared,
      store: createRedisStore({ client: redis, keyPrefix: prefix }),
      fromBeginning: true,
      consumerConfig: fastGroup,
      logger,
      recordKeys: true,
      handler: async (p, ctx) => {
        started = true;
        await released;
        ctx.publish(out, { id: p.id });
      },
    });
    cleanups.push(() => consumer.stop());
    await consumer.start();
    await waitUntil(() => started, { message: 'the handler started' });
    await consumer.stop({ timeoutMs: 100 });
    release();
    await waitUntil(
      async () =>
        lines.some((l) => l.meta?.key === storeKey && /publish/.test(l.message)) ||
        (await topicSize(admin, out)) > 0,
      { message: 'the late run tried to publish' },
    );
    expect(await topicSize(admin, out)).toBe(0);
    // Still yours, still connected.
    await shared.send(out, { mine: true });
    expect(await topicSize(admin, out)).toBe(1);
  });
  it('stop() gives back the leases of records begun but not run before it resolves, even behind a run it gave up on', async () => {
    const topic = uniqueName('shutdown-giveback');
    const dlq = `${topic}.dlq`;
    await createTopics(admin, [topic, dlq], 1);
    const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    const ids = ['g-0', 'g-1', 'g-2', 'g-3'];
    await producer.send({
      topic,
      acks: -1,
      messages: ids.map((id) => ({
        key: 'k',
        value: JSON.stringify({ id }),
        headers: { 'x-idempotency-key': id },
      })),
    });
    await producer.disconnect();
    const groupId = uniqueName('shutdown-giveback-group');
    const store = createRedisStore({ client: redis, keyPrefix: storePrefix() });
    const keyOf = (id: string) => scopeKey('default', groupId, id);
    let started = false;
    let release!: () => void;
    const released = new Promise<void>((r) => {
      release = r;
    });
    const a = createConsumer<{ id: string }>({
      kafka,
      groupId,
      topics: [topic],
      deadLetter: { topic: dlq },
      store,
      fromBeginning: true,
      consumerConfig: fastGroup,
      leaseMs: 30_000,
      handler: async (p) => {
        if (p.id !== 'g-0') return;
        started = true;
        await released; // still running when stop() gives up on it
      },
    });
    cleanups.push(async () => {
      release();
      await a.stop();
    });
    await a.start();
    await waitUntil(async () => started && (await store.get(keyOf('g-3')))?.state === 'IN_PROGRESS', {
      message: 'g-0 running, the records behind it begun',
    });
    await a.stop({ timeoutMs: 200 });
    // Before: they waited for g-0's run to end before giving their leases back, so the next owner
    // (or a store closed right after stop()) found them held for the whole 30 s lease.
    for (const id of ['g-1', 'g-2', 'g-3']) {
      const record = await store.get(keyOf(id));
      expect(record?.state).toBe('IN_PROGRESS');
      expect(record?.state === 'IN_PROGRESS' && record.leaseUntil <= Date.now()).toBe(true);
    }
    release();
  }, 90_000);
  it('idle() after stop() waits for the give-back of leases whose begin answered after stop() resolved', async () => {
    // On a slow store a group's begin can still be on its way when stop() stops waiting for
    // give-backs (2 s): its leases are written after stop() resolved. idle() waits for them to be
    // given back, so a store closed after it leaves none held for the next owner to wait out.
    const topic = uniqueName('shutdown-slowbegin');
    const dlq = `${topic}.dlq`;
    await createTopics(admin, [topic, dlq], 1);
    const ids = ['s-0', 's-1', 's-2'];
    await produceOrders(kafka, topic, ids);
    const groupId = uniqueName('shutdown-slowbegin-group');
    const inner = createRedisStore({ client: redis, keyPrefix: storePrefix() });
    let beginCalled = false;
    // Every begin answers 4 s late: longer than stop() waits for give-backs.
    const store = new Proxy(inner, {
      get(target, prop) {
        const value = Reflect.get(target, prop) as unknown;
        if (typeof value !== 'function') return value;
        if (prop !== 'begin' && prop !== 'beginMany') return value.bind(target);
        return async (...args: unknown[]) => {
          beginCalled = true;
          await new Promise((r) => setTimeout(r, 4_000));
          return value.apply(target, args);
        };
      },
    });
    let runs = 0;
    const a = createConsumer<{ id: string }>({
      kafka,
      groupId,
      topics: [topic],
      deadLetter: { topic: dlq },
      store,
      fromBeginning: true,
      consumerConfig: fastGroup,
      leaseMs: 30_000,
      handler: () => {
        runs++;
      },
    });
    cleanups.push(() => a.stop());
    await a.start();
    await waitUntil(() => beginCalled, { message: 'the first begin sent' });
    await a.stop({ timeoutMs: 0 });
    expect(await a.idle(30_000)).toBe(true);
    // The store can be closed now: every lease the late begin wrote has been given back.
    for (const id of ids) {
      const record = await inner.get(scopeKey('default', groupId, id));
      expect(record?.state).toBe('IN_PROGRESS');
      expect(record?.state === 'IN_PROGRESS' && record.leaseUntil <= Date.now()).toBe(true);
    }
    expect(runs).toBe(0);
  }, 90_000);
});
