import {
  ClosedError,
  ConfigError,
  type HandlerContext,
  type Logger,
  type OutgoingMessage,
  PermanentError,
  type ProcessedStore,
  recordKeyFor,
  scopeKey,
} from '@exactly-once/core';
import {
  createConsumer,
  createPublisher,
  DEFAULT_RETRY_DELAYS_MS,
  type RabbitConsumer,
} from '@exactly-once/rabbitmq';
import { createRedisStore, redisKeyFor } from '@exactly-once/store-redis';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { endingOnAbort } from '../support/abort.js';
import { env, uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';
import { closeRedis, newRedis, queuesOf, rawChannel, storePrefix } from './helpers.js';

const redis = newRedis();
const delays = [50, 200];
const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});
afterAll(() => closeRedis(redis));

async function setup(handler: (payload: { id: string }, ctx: HandlerContext) => unknown, extra = {}) {
  const queue = uniqueName('rmq');
  const raw = await rawChannel();
  await raw.ch.assertQueue(`${queue}.out`, { durable: true });
  const effects = new Map<string, number>();
  const consumer: RabbitConsumer = createConsumer<{ id: string }>({
    connection: env.amqpUrl,
    queue,
    consumer: 'rmq-test',
    namespace: queue.replace(/[^A-Za-z0-9._-]/g, ''),
    store: createRedisStore({ client: redis, keyPrefix: storePrefix(queue) }),
    retryDelaysMs: delays,
    // No jitter: attempt 1 waits 50 ms, attempt 2 100 ms, so the two retries take the two tiers
    // (equal jitter draws attempt 2 from [50, 100], and 50 lands in the 50 ms tier).
    retry: { maxAttempts: 3, initialDelayMs: 50, maxDelayMs: 200, jitter: 'none' },
    retentionCheck: 'off',
    leaseMs: 2_000,
    handler: async (payload, ctx) => {
      effects.set(ctx.key, (effects.get(ctx.key) ?? 0) + 1);
      return handler(payload, ctx);
    },
    ...extra,
  });
  await consumer.start();
  cleanups.push(async () => {
    await consumer.stop();
    await raw.deleteQueues(queuesOf(queue, delays));
    await raw.close();
  });
  return { queue, raw, consumer, effects };
}

describe('rabbitmq consumer', () => {
  it('processes each key once across duplicates and publishes one outgoing message per key', async () => {
    const { queue, raw, consumer, effects } = await setup((p, ctx) => {
      ctx.publish(`${ctx.headers['x-test-out']}`, { id: p.id });
    });
    for (let i = 0; i < 30; i++) {
      for (let copy = 0; copy < 3; copy++) {
        await raw.publish(
          queue,
          { id: `o${i}` },
          { 'x-idempotency-key': `k${i}`, 'x-test-out': `${queue}.out` },
        );
      }
    }
    await waitUntil(() => consumer.stats.acked === 90, {
      message: `90 acks (${JSON.stringify(consumer.stats)})`,
    });
    expect([...effects.values()].every((n) => n === 1)).toBe(true);
    expect(effects.size).toBe(30);
    expect(consumer.stats.byOutcome.duplicate).toBe(60);
    // A copy delivered while this consumer runs its original waits for that run: not answered
    // busy and tried again after a tenth of the lease.
    expect(consumer.stats.byOutcome.busy).toBeUndefined();
    expect(consumer.stats.deferred).toBe(0);
    const out = await waitUntil(async () => {
      const n = await raw.count(`${queue}.out`);
      return n === 30 ? raw.drain(`${queue}.out`) : undefined;
    });
    const childKeys = new Set(out.map((m) => String(m.properties.headers?.['x-idempotency-key'])));
    expect(childKeys.size).toBe(30);
    expect(out.every((m) => String(m.properties.headers?.['x-request-id']).startsWith('k'))).toBe(true);
  });

  it('retries through the delay queues with the attempt header, then completes', async () => {
    const attempts: number[] = [];
    const headers: (string | undefined)[] = [];
    const { queue, raw, consumer } = await setup((_p, ctx) => {
      attempts.push(ctx.attempt);
      headers.push(ctx.headers['x-eo-attempt']);
      if (ctx.attempt < 3) throw new Error('flaky');
    });
    await raw.publish(queue, { id: 'x' }, { 'x-idempotency-key': 'flaky-1' });
    await waitUntil(() => consumer.stats.acked === 1, { message: 'processed after two retries' });
    expect(attempts).toEqual([1, 2, 3]);
    // The copies came back through the delay queues with the next attempt in their header.
    expect(headers).toEqual([undefined, '2', '3']);
    // Disjoint counters, as in the Kafka consumer: a retried original is not counted as acked.
    expect(consumer.stats).toMatchObject({ received: 3, acked: 1, retried: 2, deadLettered: 0, inFlight: 0 });
    expect(consumer.stats.byOutcome.acquired).toBe(3);
  });

  it('dead-letters poison, malformed and key-less messages with reason headers; nothing is lost', async () => {
    const { queue, raw, consumer } = await setup((p) => {
      if (p.id === 'poison') throw new PermanentError('declined');
      if (p.id === 'always') throw new Error('still down');
    });
    await raw.publish(queue, { id: 'poison' }, { 'x-idempotency-key': 'p1' });
    await raw.publish(queue, { id: 'always' }, { 'x-idempotency-key': 'p2' });
    await raw.publish(queue, '{not json', { 'x-idempotency-key': 'p3' });
    await raw.publish(queue, { id: 'nokey' });
    await raw.publish(queue, { id: 'ok' }, { 'x-idempotency-key': 'p4' });
    const dlq = await waitUntil(
      async () => {
        const n = await raw.count(`${queue}.dlq`);
        return n === 4 ? raw.drain(`${queue}.dlq`) : undefined;
      },
      { message: 'four dead letters' },
    );
    const codes = dlq.map((m) => String(m.properties.headers?.['x-eo-error-code'])).sort();
    expect(codes).toEqual(['ATTEMPTS_EXHAUSTED', 'KEY_MISSING', 'MALFORMED_MESSAGE', 'PERMANENT']);
    for (const m of dlq) {
      expect(m.properties.headers?.['x-eo-original-destination']).toBe(queue);
      expect(m.properties.headers?.['x-eo-error-message']).toBeTruthy();
      expect(m.properties.headers?.['x-eo-consumer']).toBe('rmq-test');
    }
    // The always-failing one went through both delay tiers (the broker's x-death records each
    // expiry) before its attempts ran out.
    const exhausted = dlq.find((m) => m.properties.headers?.['x-eo-error-code'] === 'ATTEMPTS_EXHAUSTED');
    expect(exhausted?.properties.headers).toMatchObject({ 'x-eo-attempt': '3', 'x-eo-attempts': '3' });
    const deaths = exhausted?.properties.headers?.['x-death'] as { queue: string; reason: string }[];
    expect(deaths.map((d) => `${d.queue}:${d.reason}`).sort()).toEqual([
      `${queue}.retry.200:expired`,
      `${queue}.retry.50:expired`,
    ]);
    await waitUntil(() => consumer.stats.acked === 1 && consumer.stats.deadLettered === 4);
    expect(consumer.stats.retried).toBe(2); // 'always' went through both tiers
    expect(await raw.count(queue)).toBe(0);
  });

  it('a record damaged by hand (a list at its name) dead-letters its message CORRUPT_RECORD; the others run at once, no outage', async () => {
    const warnings: string[] = [];
    const noop = () => {};
    const logger: Logger = {
      debug: noop,
      info: noop,
      error: noop,
      warn: (message) => void warnings.push(message),
    };
    const attempts: number[] = [];
    const { queue, raw, consumer, effects } = await setup(
      (_p, ctx) => {
        attempts.push(ctx.attempt);
      },
      { logger },
    );
    const namespace = queue.replace(/[^A-Za-z0-9._-]/g, '');
    const damaged = redisKeyFor(
      storePrefix(queue),
      recordKeyFor({ consumer: 'rmq-test', key: 'd3', namespace }),
    );
    await redis.rpush(damaged, 'not a record');
    for (const key of ['d1', 'd2', 'd3', 'd4', 'd5'])
      await raw.publish(queue, { id: key }, { 'x-idempotency-key': key });
    const [letter] = await waitUntil(
      async () => ((await raw.count(`${queue}.dlq`)) === 1 ? raw.drain(`${queue}.dlq`) : undefined),
      { message: 'one dead letter' },
    );
    expect(letter?.properties.headers).toMatchObject({
      'x-eo-error-code': 'CORRUPT_RECORD',
      'x-eo-error-class': 'CorruptRecordError',
    });
    expect(String(letter?.properties.headers?.['x-eo-error-message'])).toContain('a list at the record');
    await waitUntil(() => consumer.stats.acked === 4 && consumer.stats.deadLettered === 1);
    // The four others ran once each, on their first attempt: no lease of theirs was stranded by the
    // damaged key beside them (each would have come back as a takeover after leaseMs).
    expect([...effects.values()]).toEqual([1, 1, 1, 1]);
    expect(attempts).toEqual([1, 1, 1, 1]);
    expect(warnings.filter((w) => w.includes('unavailable'))).toEqual([]);
    expect(await redis.type(damaged)).toBe('list');
  });

  it('a first service publishes with request id, key, message id and trace headers', async () => {
    const queue = uniqueName('rmq-pub');
    const raw = await rawChannel();
    await raw.ch.assertQueue(queue, { durable: false, autoDelete: false });
    const publisher = createPublisher({ connection: env.amqpUrl });
    try {
      const { requestId, idempotencyKey } = await publisher.send(queue, { a: 1 }, { requestId: 'req-1' });
      expect(idempotencyKey).toBe(requestId);
      const [m] = await waitUntil(async () =>
        (await raw.count(queue)) === 1 ? raw.drain(queue) : undefined,
      );
      expect(m?.properties.headers).toMatchObject({ 'x-request-id': 'req-1', 'x-idempotency-key': 'req-1' });
      expect(m?.properties.messageId).toBe('req-1');
      expect(m?.properties.deliveryMode).toBe(2);
    } finally {
      await publisher.close();
      await raw.deleteQueues([queue]);
      await raw.close();
    }
  });
});

describe('rabbitmq consumer: copies of a message at two workers at once', () => {
  it('a copy that finds the key just completed by the other worker leaves its publish to that worker: one outgoing message per key', async () => {
    // Both workers' broker confirms take 800 ms. The copy the other worker holds is answered busy,
    // comes back 200 ms later, and finds the record COMPLETED with its message not yet confirmed.
    const queue = uniqueName('rmq-pair');
    const raw = await rawChannel();
    await raw.ch.assertQueue(`${queue}.out`, { durable: true });
    const rabbit = createPublisher({ connection: env.amqpUrl });
    const slowConfirms = {
      async publish(messages: readonly OutgoingMessage[]) {
        await new Promise((r) => setTimeout(r, 800));
        await rabbit.publish(messages);
      },
    };
    const effects = new Map<string, number>();
    const worker = () =>
      createConsumer<{ id: string }>({
        connection: env.amqpUrl,
        queue,
        consumer: 'rmq-pair',
        namespace: queue.replace(/[^A-Za-z0-9._-]/g, ''),
        store: createRedisStore({ client: redis, keyPrefix: storePrefix(queue) }),
        publisher: slowConfirms,
        retryDelaysMs: delays,
        retentionCheck: 'off',
        leaseMs: 2_000,
        handler: (p, ctx) => {
          effects.set(ctx.key, (effects.get(ctx.key) ?? 0) + 1);
          ctx.publish(`${queue}.out`, { id: p.id });
        },
      });
    const workers = [worker(), worker()];
    cleanups.push(async () => {
      for (const w of workers) await w.stop();
      await rabbit.close();
      await raw.deleteQueues(queuesOf(queue, delays));
      await raw.close();
    });
    for (const w of workers) await w.start();
    // Published back to back, the two copies of a key go one to each worker.
    for (let i = 0; i < 20; i++) {
      for (let copy = 0; copy < 2; copy++)
        await raw.publish(queue, { id: `p${i}` }, { 'x-idempotency-key': `p${i}` });
    }
    const acked = () => workers.reduce((n, w) => n + w.stats.acked, 0);
    await waitUntil(() => acked() === 40, {
      message: `40 acks (${workers.map((w) => JSON.stringify(w.stats))})`,
    });
    expect(effects.size).toBe(20);
    expect([...effects.values()].every((n) => n === 1)).toBe(true);
    // The premise: copies answered as duplicates at the worker that did not run their key (at
    // most one copy a key can be a duplicate at the worker that ran it).
    const elsewhere = workers.reduce(
      (n, w) => n + Math.max(0, (w.stats.byOutcome.duplicate ?? 0) - (w.stats.byOutcome.acquired ?? 0)),
      0,
    );
    expect(elsewhere).toBeGreaterThan(5);
    // Every publish came before its message's ack.
    const out = await raw.drain(`${queue}.out`);
    const keys = out.map((m) => String(m.properties.headers?.['x-idempotency-key']));
    expect(new Set(keys).size).toBe(20);
    expect(keys).toHaveLength(20);
    expect(workers.map((w) => w.stats.republished)).toEqual([0, 0]);
  });
});

describe('rabbitmq consumer options (aligned with the Kafka consumer)', () => {
  it('names the consumer after its queue by default, and sends dead letters to deadLetter.queue', async () => {
    const queue = uniqueName('rmq-named');
    const dlq = `${queue}.dead`;
    const raw = await rawChannel();
    const store = createRedisStore({ client: redis, keyPrefix: storePrefix(queue) });
    const consumer = createConsumer<{ id: string }>({
      connection: env.amqpUrl,
      queue,
      deadLetter: { queue: dlq },
      store,
      retryDelaysMs: delays,
      retentionCheck: 'off',
      handler: (p) => {
        if (p.id === 'bad') throw new PermanentError('declined');
      },
    });
    cleanups.push(async () => {
      await consumer.stop();
      await raw.deleteQueues([...queuesOf(queue, delays), dlq]);
      await raw.close();
    });
    await consumer.start();
    expect(consumer.topology.deadLetterQueue).toBe(dlq);
    await raw.publish(queue, { id: 'ok' }, { 'x-idempotency-key': 'n-ok' });
    await raw.publish(queue, { id: 'bad' }, { 'x-idempotency-key': 'n-bad' });
    const [dead] = await waitUntil(async () => ((await raw.count(dlq)) === 1 ? raw.drain(dlq) : undefined), {
      message: 'a dead letter in deadLetter.queue',
    });
    expect(dead?.properties.headers?.['x-eo-consumer']).toBe(queue);
    await waitUntil(() => consumer.stats.acked === 1);
    expect((await store.get(scopeKey('default', queue, 'n-ok')))?.state).toBe('COMPLETED');
    expect(await raw.check(`${queue}.dlq`)).toBeUndefined(); // the default one was never declared
  });

  it('refuses the old deadLetterQueue option and a queue name that cannot be a consumer name', () => {
    const base = {
      connection: env.amqpUrl,
      store: createRedisStore({ client: redis }),
      handler: () => {},
    };
    expect(() => createConsumer({ ...base, queue: 'q', deadLetterQueue: 'q.dead' } as never)).toThrow(
      /deadLetter: \{ queue/,
    );
    expect(() => createConsumer({ ...base, queue: 'orders/eu' })).toThrow(ConfigError);
    expect(() => createConsumer({ ...base, queue: 'orders/eu' })).toThrow(/set consumer explicitly/);
    expect(() => createConsumer({ ...base, queue: 'orders/eu', consumer: 'orders-eu' })).not.toThrow();
    expect(() => createConsumer({ ...base, queue: 'q', deadLetter: { queue: 'q' } })).toThrow(ConfigError);
    // Any other name it does not know: before, a typo kept the option's default without a word.
    expect(() => createConsumer({ ...base, queue: 'q', prefetchCount: 10 } as never)).toThrow(
      /^unknown option "prefetchCount"$/,
    );
    expect(() => createPublisher({ connection: env.amqpUrl, publishTimeoutMS: 5 } as never)).toThrow(
      '(did you mean "publishTimeoutMs"?)',
    );
    expect(() => createConsumer({ ...base, queue: 'q', deadLetter: { queu: 'q.dead' } } as never)).toThrow(
      'unknown option "deadLetter.queu" (did you mean "deadLetter.queue"?)',
    );
    expect(() => createConsumer({ ...base, queue: 'q', leaseMS: 5_000 } as never)).toThrow(
      'unknown option "leaseMS" (did you mean "leaseMs"?)',
    );
  });

  it('refuses at creation a prefetch AMQP cannot carry and a queue type it does not declare', () => {
    // Before: prefetch 70000 passed, and start() retried its channel setup for ever; 'stream'
    // passed, and start() declared a stream queue before failing on the retry tiers.
    const base = {
      connection: env.amqpUrl,
      queue: 'q',
      store: createRedisStore({ client: redis }),
      handler: () => {},
    };
    expect(() => createConsumer({ ...base, prefetch: 70_000 })).toThrow(
      /prefetch must be an integer from 1 to 65535/,
    );
    expect(() => createConsumer({ ...base, prefetch: 65_535 })).not.toThrow();
    expect(() => createConsumer({ ...base, queueType: 'stream' } as never)).toThrow(/queueType must be/);
  });

  it('after stop() a run that outlived it publishes nothing through a publisher you passed', async () => {
    const sent: OutgoingMessage[] = [];
    const publisher = {
      publish: async (messages: readonly OutgoingMessage[]) => void sent.push(...messages),
    };
    let release!: () => void;
    const released = new Promise<void>((r) => {
      release = r;
    });
    const outcomes: string[] = [];
    const { queue, raw, consumer, effects } = await setup(
      async (p, ctx) => {
        await released;
        ctx.publish('anywhere', { id: p.id });
      },
      {
        publisher,
        logger: {
          debug() {},
          info() {},
          warn: (message: string) => outcomes.push(message),
          error: (message: string) => outcomes.push(message),
        },
      },
    );
    await raw.publish(queue, { id: 'late' }, { 'x-idempotency-key': 'late-1' });
    await waitUntil(() => effects.size === 1, { message: 'the handler started' });
    await consumer.stop({ timeoutMs: 50 });
    release();
    await waitUntil(() => outcomes.some((m) => /publish/.test(m)) || sent.length > 0, {
      message: 'the late run tried to publish',
    });
    expect(sent).toEqual([]);
    await waitUntil(() => consumer.stats.inFlight === 0, { message: 'the late run ended' });
    expect(consumer.stats.abandoned).toBe(1);
    expect(consumer.stats.acked).toBe(0);
    expect(consumer.stats.byOutcome['publish-failed']).toBe(1); // refused: the consumer is closed
  });

  it('idle() after stop() waits for a run stop() gave up on, so the store can be closed: the next consumer acks it as a duplicate and publishes its message', async () => {
    // Closing the store right after stop() cut that run's completion off: the next consumer took
    // the key over after the lease and ran the handler a second time.
    const queue = uniqueName('rmq-idle');
    const raw = await rawChannel();
    const keyPrefix = storePrefix(queue);
    let runs = 0;
    let release!: () => void;
    const released = new Promise<void>((r) => {
      release = r;
    });
    const options: FirstOptions = {
      connection: env.amqpUrl,
      queue,
      consumer: 'rmq-idle',
      retentionCheck: 'off',
      leaseMs: 5_000,
      // Nobody else is publishing the stopped consumer's message: the next one sends it at once.
      publishWaitMs: 0,
    };
    await raw.ch.assertQueue(`${queue}.out`, { durable: true });
    const ownClient = newRedis();
    const first = createConsumer<{ id: string }>({
      ...options,
      store: createRedisStore({ client: ownClient, keyPrefix }),
      handler: async (p, ctx) => {
        runs++;
        await released;
        ctx.publish(`${queue}.out`, { id: p.id }); // refused: its consumer has stopped
      },
    });
    await first.start();
    await raw.publish(queue, { id: 'slow' }, { 'x-idempotency-key': 'slow-1' });
    await waitUntil(() => runs === 1, { message: 'the handler started' });
    await first.stop({ timeoutMs: 50 });
    expect(await first.idle(50)).toBe(false); // still running
    release();
    expect(await first.idle()).toBe(true);
    await ownClient.quit(); // the store goes once nothing of the consumer runs any more

    const store = createRedisStore({ client: redis, keyPrefix });
    expect((await store.get(scopeKey('default', 'rmq-idle', 'slow-1')))?.state).toBe('COMPLETED');
    const second = await startNext({ queue, raw, options }, store, () => void runs++);
    await waitUntil(() => second.stats.acked === 1, { message: 'the redelivery acked' });
    expect(second.stats.byOutcome.duplicate).toBe(1);
    expect(runs).toBe(1);
    // The message the stopped run could not send, sent by the duplicate and counted.
    expect(second.stats.republished).toBe(1);
    expect(first.stats.republished).toBe(0);
    expect(await raw.drain(`${queue}.out`)).toHaveLength(1);
    await raw.ch.deleteQueue(`${queue}.out`);
  });

  it('stop() while start() is under way (a SIGTERM during a deploy): start() is refused with ClosedError and nothing is consumed', async () => {
    const queue = uniqueName('rmq-early-stop');
    const raw = await rawChannel();
    let runs = 0;
    const consumer = createConsumer<{ id: string }>({
      connection: env.amqpUrl,
      queue,
      consumer: 'rmq-early-stop',
      store: createRedisStore({ client: redis, keyPrefix: storePrefix(queue) }),
      retentionCheck: 'off',
      handler: () => {
        runs++;
      },
    });
    cleanups.push(async () => {
      await raw.deleteQueues(queuesOf(queue, [...DEFAULT_RETRY_DELAYS_MS]));
      await raw.close();
    });
    const started = consumer.start();
    const stopped = consumer.stop();
    await expect(started).rejects.toBeInstanceOf(ClosedError);
    await stopped;
    expect(consumer.stats.received).toBe(0);
    expect(runs).toBe(0);
  });

  it('stop() aborts ctx.signal of a run still going after timeoutMs: its key goes back uncounted and the next consumer runs the message at once', async () => {
    // Before, the handler was never told: the next consumer waited the whole lease out (busy),
    // then took the key over as after a crash, the shutdown counted as one of its attempts.
    const { queue, raw, options, seen, store } = await cutAtStop('rmq-cut', ['cut-1']);
    expect(seen.reasons).toHaveLength(1);
    expect(seen.reasons[0]).toBeInstanceOf(ClosedError);
    const record = await store.get(scopeKey('default', 'rmq-cut', 'cut-1'));
    expect(record).toMatchObject({ state: 'IN_PROGRESS', leaseUntil: 0, attempt: 0 });
    const second = await startNext(
      { queue, raw, options },
      store,
      (_, ctx) => void seen.attempts.push(ctx.attempt),
    );
    await waitUntil(() => second.stats.acked === 1, { message: 'the redelivery acked' });
    expect(second.stats.byOutcome.acquired).toBe(1);
    expect(seen.attempts).toEqual([1, 1]);
    expect((await store.get(scopeKey('default', 'rmq-cut', 'cut-1')))?.state).toBe('COMPLETED');
  });

  it('messages whose runs stop() cut run together on the next consumer, not one at a time', async () => {
    // Before, every redelivered message ran alone (the poison-message gate): a window of long
    // runs cut at a rolling restart drained one run after another, some waiting past the lease.
    // Now only a key held under a lease nobody gave back runs alone.
    const keys = ['many-0', 'many-1', 'many-2', 'many-3'];
    const { queue, raw, options, store } = await cutAtStop('rmq-cut-many', keys);
    // Each handler of the next consumer returns only once all four run at the same time.
    let running = 0;
    const second = await startNext({ queue, raw, options }, store, async (_, ctx) => {
      expect(ctx.acquiredAs).toBe('retry');
      running++;
      await waitUntil(() => running === keys.length, { message: 'four handlers running together' });
    });
    await waitUntil(() => second.stats.acked === 4, { message: 'the four redeliveries acked' });
    expect(second.stats.byOutcome.acquired).toBe(4);
  });

  it('stop() resolves once the runs it cut gave their keys back: a store closed right after it is not too early', async () => {
    // Before, stop() closed the channel as it aborted the runs: a store client closed next cut
    // their give-backs off, and the next consumer found each key busy, a suspect run alone after
    // its lease.
    const keys = ['early-0', 'early-1', 'early-2'];
    const { store } = await cutAtStop('rmq-cut-close', keys, { waitIdle: false, releaseDelayMs: 100 });
    for (const key of keys) {
      expect(await store.get(scopeKey('default', 'rmq-cut-close', key))).toMatchObject({
        state: 'IN_PROGRESS',
        leaseUntil: 0,
        attempt: 0,
      });
    }
  });
});

/**
 * A consumer whose handlers end on their signal runs one message per key until all have started,
 * then stop() waits 50 ms and aborts them; once it is idle (or `waitIdle` false: once stop()
 * resolves) its store client is closed. `releaseDelayMs`: its store answers each release that
 * much later (a slow server). Answers what the next consumer of the queue needs, and what the
 * handlers saw.
 */
async function cutAtStop(
  consumer: string,
  keys: readonly string[],
  { waitIdle = true, releaseDelayMs = 0 } = {},
) {
  const queue = uniqueName(consumer);
  const raw = await rawChannel();
  const keyPrefix = storePrefix(queue);
  const options: FirstOptions = {
    connection: env.amqpUrl,
    queue,
    consumer,
    retentionCheck: 'off',
    leaseMs: 120_000,
  };
  const seen = { attempts: [] as number[], reasons: [] as unknown[] };
  const ownClient = newRedis();
  const first = createConsumer<{ id: string }>({
    ...options,
    store: slowReleases(createRedisStore({ client: ownClient, keyPrefix }), releaseDelayMs),
    handler: endingOnAbort(seen),
  });
  await first.start();
  for (const key of keys) await raw.publish(queue, { id: key }, { 'x-idempotency-key': key });
  await waitUntil(() => seen.attempts.length === keys.length, { message: 'every handler started' });
  await first.stop({ timeoutMs: 50 });
  if (waitIdle) expect(await first.idle()).toBe(true);
  await ownClient.quit();
  return { queue, raw, options, seen, store: createRedisStore({ client: redis, keyPrefix }) };
}

/** `store`, answering each release `delayMs` later. */
function slowReleases(store: ProcessedStore, delayMs: number): ProcessedStore {
  if (delayMs === 0) return store;
  return new Proxy(store, {
    get(target, name, receiver) {
      const value = Reflect.get(target, name, receiver);
      if (name !== 'release') return value;
      return async (...args: Parameters<ProcessedStore['release']>) => {
        await new Promise((resolve) => setTimeout(resolve, delayMs));
        return target.release(...args);
      };
    },
  });
}

/** What the tests of a queue's first and next consumer share. */
interface FirstOptions {
  connection: string;
  queue: string;
  consumer: string;
  retentionCheck: 'off';
  leaseMs: number;
  publishWaitMs?: number;
}

/** Starts the next consumer of a queue after its first one stopped; cleaned up with the queue. */
async function startNext(
  first: { queue: string; raw: Awaited<ReturnType<typeof rawChannel>>; options: FirstOptions },
  store: ReturnType<typeof createRedisStore>,
  handler: (payload: { id: string }, ctx: HandlerContext) => unknown,
): Promise<RabbitConsumer> {
  const next = createConsumer<{ id: string }>({ ...first.options, store, handler });
  cleanups.push(async () => {
    await next.stop();
    await first.raw.deleteQueues(queuesOf(first.queue, [...DEFAULT_RETRY_DELAYS_MS]));
    await first.raw.close();
  });
  await next.start();
  return next;
}
