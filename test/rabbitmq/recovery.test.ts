/**
 * What the consumer does when the broker says no or takes things away: a channel closed under it
 * (not the connection), its queue deleted, a retry or dead-letter copy with nowhere to go, an
 * outgoing message to a missing queue, a setup the broker refuses, and shutdown mid-handler.
 * Nothing is ever acked without its copy, nothing is dropped, nothing runs twice.
 */
import { ConfigError, type HandlerContext, PermanentError } from '@exactly-once/core';
import { createConsumer, createPublisher, type RabbitConsumer } from '@exactly-once/rabbitmq';
import { createRedisStore } from '@exactly-once/store-redis';
import amqp from 'amqp-connection-manager';
import type { Channel } from 'amqplib';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';
import { closeRedis, newRedis, queuesOf, rawChannel, storePrefix } from './helpers.js';

const redis = newRedis();
const delays = [100];
const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});
afterAll(() => closeRedis(redis));

type Handler = (payload: { id: string }, ctx: HandlerContext) => unknown;

async function setup(handler: Handler, extra: Record<string, unknown> = {}, queue = uniqueName('rmq-rec')) {
  const raw = await rawChannel();
  const effects = new Map<string, number>();
  const consumer: RabbitConsumer = createConsumer<{ id: string }>({
    connection: env.amqpUrl,
    queue,
    consumer: 'recovery',
    store: createRedisStore({ client: redis, keyPrefix: storePrefix(queue) }),
    retryDelaysMs: delays,
    retry: { maxAttempts: 3, initialDelayMs: 50, maxDelayMs: 100 },
    retentionCheck: 'off',
    leaseMs: 2_000,
    prefetch: 8,
    handler: async (payload, ctx) => {
      effects.set(ctx.key, (effects.get(ctx.key) ?? 0) + 1);
      return handler(payload, ctx);
    },
    ...extra,
  });
  cleanups.push(async () => {
    await consumer.stop({ timeoutMs: 2_000 });
    await raw.deleteQueues(queuesOf(queue, delays));
    await raw.close();
  });
  return { queue, raw, consumer, effects };
}

const once = (effects: Map<string, number>) => [...effects.values()].every((n) => n === 1);

describe('rabbitmq recovery', () => {
  it('a channel the broker closes (not the connection) is reopened; every message done once', async () => {
    const queue = uniqueName('rmq-chan');
    // Our own manager, so the test can reach the consumer's channels on its connection.
    const connection = amqp.connect([env.amqpUrl], { reconnectTimeInSeconds: 0.2 });
    cleanups.push(() => connection.close());
    const { raw, consumer, effects } = await setup(
      () => new Promise((r) => setTimeout(r, 10)),
      { connection },
      queue,
    );
    await consumer.start();
    for (let i = 0; i < 200; i++) await raw.publish(queue, { id: `${i}` }, { 'x-idempotency-key': `c${i}` });
    await waitUntil(() => consumer.stats.acked > 20, { message: 'progress' });
    // Acking an unknown delivery tag makes the broker close that channel with 406, as a
    // consumer_timeout would; the connection stays up.
    type Internals = { connection: { channels: ({ channel: Channel } | undefined)[] } };
    const conn = connection.connection as unknown as Internals;
    const channels = conn.connection.channels.slice(1).flatMap((e) => (e ? [e.channel] : []));
    expect(channels.length).toBeGreaterThan(0);
    for (const ch of channels) ch.ack({ fields: { deliveryTag: 1_000_000 } } as never);
    await waitUntil(() => consumer.stats.channels >= 2, { message: 'a new consumer channel' });
    await waitUntil(async () => effects.size === 200 && (await raw.count(queue)) === 0, {
      timeoutMs: 60_000,
      message: () => `all 200 processed (${effects.size}, ${JSON.stringify(consumer.stats)})`,
    });
    expect(once(effects)).toBe(true);
    expect(connection.isConnected()).toBe(true);
  });

  it('re-subscribes after its queue is deleted under it', async () => {
    const { queue, raw, consumer, effects } = await setup(() => {});
    await consumer.start();
    await raw.publish(queue, { id: 'a' }, { 'x-idempotency-key': 'before' });
    await waitUntil(() => consumer.stats.acked === 1);
    await raw.ch.deleteQueue(queue);
    await waitUntil(() => consumer.stats.cancelled === 1, { message: 'the server-side cancel' });
    // The consumer re-declares it ('declare' topology) and consumes again.
    await waitUntil(async () => (await raw.check(queue))?.consumerCount === 1, {
      message: 'a consumer on the re-declared queue',
    });
    await raw.publish(queue, { id: 'b' }, { 'x-idempotency-key': 'after' });
    await waitUntil(() => consumer.stats.acked === 2, { message: 'the message after the cancel' });
    expect([...effects.keys()].sort()).toEqual(['after', 'before']);
  });

  it('never acks a message whose dead-letter copy had nowhere to go; delivers it once the DLQ is back', async () => {
    // 'assume': the queues are the operator's, so only the operator brings the DLQ back.
    const { queue, raw, consumer } = await setup(
      () => {
        throw new PermanentError('declined');
      },
      { topology: 'assume' },
    );
    await raw.ch.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
    await raw.ch.assertQueue(`${queue}.dlq`, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
    await raw.ch.assertQueue(`${queue}.retry.100`, {
      durable: true,
      arguments: { 'x-queue-type': 'quorum' },
    });
    await consumer.start();
    await raw.ch.deleteQueue(`${queue}.dlq`);
    await raw.publish(queue, { id: 'p' }, { 'x-idempotency-key': 'poison' });
    await waitUntil(() => consumer.stats.settleFailures >= 2, { message: 'the copy was returned' });
    expect(consumer.stats.acked).toBe(0);
    await raw.ch.assertQueue(`${queue}.dlq`, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
    await waitUntil(() => consumer.stats.deadLettered === 1, { timeoutMs: 60_000, message: 'dead-lettered' });
    const [dead] = await raw.drain(`${queue}.dlq`);
    expect(dead?.properties.headers?.['x-eo-error-code']).toBe('PERMANENT');
    expect(await raw.count(queue)).toBe(0);
  });

  it("under 'declare', a dead-letter queue deleted while the consumer runs is declared again: the copy lands, no restart", async () => {
    // An outside test deleted the DLQ of a running consumer: every copy was returned (NO_ROUTE)
    // until the process restarted, and the message held its prefetch slot meanwhile.
    const { queue, raw, consumer } = await setup(() => {
      throw new PermanentError('declined');
    });
    await consumer.start();
    await raw.ch.deleteQueue(`${queue}.dlq`);
    await raw.publish(queue, { id: 'p' }, { 'x-idempotency-key': 'poison' });
    await waitUntil(() => consumer.stats.deadLettered === 1, { timeoutMs: 30_000, message: 'dead-lettered' });
    expect(consumer.stats.settleFailures).toBeGreaterThanOrEqual(1);
    const [dead] = await raw.drain(`${queue}.dlq`);
    expect(dead?.properties.headers?.['x-eo-error-code']).toBe('PERMANENT');
    expect(await raw.count(queue)).toBe(0);
  });

  it('an outgoing message to a missing queue holds its input until the queue exists, then both go through', async () => {
    const { queue, raw, consumer } = await setup((p, ctx) => {
      ctx.publish(`${queue}.later`, { id: p.id });
    });
    cleanups.push(() => raw.deleteQueues([`${queue}.later`]));
    await consumer.start();
    await raw.publish(queue, { id: 'o' }, { 'x-idempotency-key': 'out-1' });
    await waitUntil(() => (consumer.stats.byOutcome['publish-failed'] ?? 0) >= 1, {
      message: 'an unroutable publish',
    });
    expect(consumer.stats.acked).toBe(0);
    await raw.ch.assertQueue(`${queue}.later`, { durable: true });
    await waitUntil(() => consumer.stats.acked === 1, { timeoutMs: 30_000, message: 'acked once published' });
    const out = await raw.drain(`${queue}.later`);
    expect(out.map((m) => JSON.parse(m.content.toString()).id)).toEqual(['o']);
  });

  it('start() rejects when the broker refuses the topology, without unhandled errors', async () => {
    const queue = uniqueName('rmq-refused');
    const raw = await rawChannel();
    cleanups.push(async () => {
      await raw.deleteQueues(queuesOf(queue, delays));
      await raw.close();
    });
    await raw.ch.assertQueue(queue, { durable: true }); // classic; the consumer wants quorum
    const store = createRedisStore({ client: redis, keyPrefix: storePrefix(queue) });
    const base = { connection: env.amqpUrl, consumer: 'refused', store, retryDelaysMs: delays };
    const opts = { ...base, retentionCheck: 'off' as const, handler: () => {} };
    await expect(createConsumer({ ...opts, queue }).start()).rejects.toThrow(ConfigError);
    await expect(createConsumer({ ...opts, queue }).start()).rejects.toThrow(/x-queue-type/);
    const missing = uniqueName('rmq-missing');
    await expect(createConsumer({ ...opts, queue: missing, topology: 'assume' }).start()).rejects.toThrow(
      /NOT_FOUND/,
    );
  });

  it('stop() returns within its timeout; the unfinished message is redelivered and its effect happens once', async () => {
    let release!: () => void;
    const blocked = new Promise<void>((r) => {
      release = r;
    });
    const { queue, raw, consumer, effects } = await setup(() => blocked);
    await consumer.start();
    await raw.publish(queue, { id: 's' }, { 'x-idempotency-key': 'slow' });
    await waitUntil(() => effects.size === 1, { message: 'the handler started' });
    await consumer.stop({ timeoutMs: 100 });
    expect(consumer.stats.acked).toBe(0);
    // Back in the queue for the next consumer, which waits for the first run's lease.
    const next = createConsumer<{ id: string }>({
      connection: env.amqpUrl,
      queue,
      consumer: 'recovery',
      store: createRedisStore({ client: redis, keyPrefix: storePrefix(queue) }),
      retryDelaysMs: delays,
      retentionCheck: 'off',
      leaseMs: 2_000,
      handler: (_p, ctx) => {
        effects.set(ctx.key, (effects.get(ctx.key) ?? 0) + 1);
      },
    });
    cleanups.push(() => next.stop());
    await next.start();
    await waitUntil(() => (next.stats.byOutcome.busy ?? 0) >= 1, { message: 'the key is still held' });
    release();
    await waitUntil(() => next.stats.acked === 1, { timeoutMs: 30_000, message: 'acked as a duplicate' });
    expect(next.stats.byOutcome.duplicate).toBe(1);
    expect(effects.get('slow')).toBe(1);
  });
});

describe('rabbitmq publisher', () => {
  it('fails fast on a missing exchange or queue, and keeps working for good destinations', async () => {
    const queue = uniqueName('rmq-pub');
    const raw = await rawChannel();
    await raw.ch.assertQueue(queue, { durable: true });
    const publisher = createPublisher({ connection: env.amqpUrl, publishTimeoutMs: 5_000 });
    cleanups.push(async () => {
      await publisher.close();
      await raw.deleteQueues([queue]);
      await raw.close();
    });
    await expect(publisher.send(uniqueName('no-exchange'), { a: 1 }, { routingKey: 'x' })).rejects.toThrow(
      /does not exist/,
    );
    await expect(publisher.send(uniqueName('no-queue'), { a: 2 })).rejects.toThrow(/unroutable/);
    await publisher.send(queue, { a: 3 }, { requestId: 'r-3' });
    await publisher.publish([
      { id: 'm-4', destination: queue, body: Buffer.from('{"a":4}'), headers: { 'x-request-id': 'r-4' } },
    ]);
    const got = await waitUntil(async () => ((await raw.count(queue)) === 2 ? raw.drain(queue) : undefined));
    expect(got.map((m) => m.properties.messageId)).toEqual(['r-3', 'm-4']);
    expect(got.every((m) => m.properties.deliveryMode === 2)).toBe(true);
  });
});
