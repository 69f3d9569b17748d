import { type AddressInfo, connect, createServer, type Server } from 'node:net';
import { type HandlerContext, withFaults } from '@exactly-once/core';
import { createConsumer, type RabbitConsumer } from '@exactly-once/rabbitmq';
import { createRedisStore } from '@exactly-once/store-redis';
import amqp from 'amqp-connection-manager';
import { afterAll, describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';
import { closeRedis, newRedis, queuesOf, rawChannel, storePrefix } from './helpers.js';

const redis = newRedis();
afterAll(() => closeRedis(redis));

function consumerOn(
  queue: string,
  effects: Map<string, number>,
  extra: Record<string, unknown> = {},
  handlerDelayMs = 2,
  gate?: () => Promise<void>,
) {
  return createConsumer<{ id: string }>({
    connection: env.amqpUrl,
    queue,
    consumer: 'resilience',
    store: createRedisStore({ client: redis, keyPrefix: storePrefix(queue) }),
    retryDelaysMs: [100],
    retentionCheck: 'off',
    leaseMs: 2_000,
    prefetch: 8,
    handler: async (_p: { id: string }, ctx: HandlerContext) => {
      effects.set(ctx.key, (effects.get(ctx.key) ?? 0) + 1);
      await new Promise((r) => setTimeout(r, handlerDelayMs));
      await gate?.();
    },
    ...extra,
  });
}

describe('rabbitmq resilience', () => {
  it('a broker unreachable at start is said once, and so is the connection once made', async () => {
    const queue = uniqueName('rmq-unreachable');
    const raw = await rawChannel();
    // A port nothing listens on yet; later a forwarder to the broker opens on it.
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const port = (probe.address() as AddressInfo).port;
    await new Promise((resolve) => probe.close(resolve));
    const broker = new URL(env.amqpUrl);
    const said: string[] = [];
    const note = (level: string) => (message: string) => said.push(`${level} ${message}`);
    const logger = { debug() {}, info: note('info'), warn: note('warn'), error: note('error') };
    const effects = new Map<string, number>();
    const url = new URL(env.amqpUrl);
    url.port = String(port);
    const consumer = consumerOn(queue, effects, { connection: url.toString(), logger });
    const started = consumer.start();
    started.catch(() => undefined); // awaited below; a failed wait must not leave it unhandled
    let forwarder: Server | undefined;
    try {
      // Before: nothing at all was logged while start() waited.
      await waitUntil(() => said.some((l) => /cannot reach the broker/.test(l)), {
        message: 'the unreachable broker said',
      });
      forwarder = createServer((client) => {
        const upstream = connect(Number(broker.port || 5672), broker.hostname);
        client.pipe(upstream).pipe(client);
        const end = () => {
          client.destroy();
          upstream.destroy();
        };
        client.on('error', end).on('close', end);
        upstream.on('error', end).on('close', end);
      });
      await new Promise<void>((resolve) => forwarder?.listen(port, '127.0.0.1', resolve));
      await started;
      await raw.publish(queue, { id: '1' }, { 'x-idempotency-key': 'u1' });
      await waitUntil(() => effects.size === 1, { message: 'processed once the broker answers' });
      expect(said.filter((l) => /connect|reach/.test(l))).toEqual([
        expect.stringMatching(/^warn .*cannot reach the broker; trying again until it answers$/),
        expect.stringMatching(/^info .*connected to the broker$/),
      ]);
    } finally {
      await consumer.stop();
      await new Promise((resolve) => (forwarder ? forwarder.close(resolve) : resolve(undefined)));
      await raw.deleteQueues(queuesOf(queue, [100]));
      await raw.close();
    }
  });

  it('two consumers on one queue with every key delivered three times: one effect per key', async () => {
    const queue = uniqueName('rmq-two');
    const raw = await rawChannel();
    const effects = new Map<string, number>();
    const a: RabbitConsumer = consumerOn(queue, effects);
    const b: RabbitConsumer = consumerOn(queue, effects);
    await a.start();
    await b.start();
    try {
      for (let i = 0; i < 200; i++) {
        for (let c = 0; c < 3; c++)
          await raw.publish(queue, { id: `${i}` }, { 'x-idempotency-key': `k${i}` });
      }
      await waitUntil(() => a.stats.acked + b.stats.acked === 600, {
        timeoutMs: 60_000,
        message: '600 acks',
      });
      expect(effects.size).toBe(200);
      expect([...effects.values()].every((n) => n === 1)).toBe(true);
      expect(a.stats.acked).toBeGreaterThan(0);
      expect(b.stats.acked).toBeGreaterThan(0);
    } finally {
      await a.stop();
      await b.stop();
      await raw.deleteQueues(queuesOf(queue, [100]));
      await raw.close();
    }
  });

  it('acks nothing while the store is down and processes everything once it is back', async () => {
    const queue = uniqueName('rmq-outage');
    const raw = await rawChannel();
    const effects = new Map<string, number>();
    let down = false;
    const store = withFaults(createRedisStore({ client: redis, keyPrefix: storePrefix(queue) }), {
      failWhen: () => down,
    });
    const consumer = consumerOn(queue, effects, { store });
    await consumer.start();
    try {
      for (let i = 0; i < 50; i++) await raw.publish(queue, { id: `${i}` }, { 'x-idempotency-key': `a${i}` });
      await waitUntil(() => consumer.stats.acked === 50, { message: 'first 50 acks' });
      down = true;
      for (let i = 0; i < 50; i++) await raw.publish(queue, { id: `${i}` }, { 'x-idempotency-key': `b${i}` });
      await waitUntil(() => (consumer.stats.byOutcome['store-unavailable'] ?? 0) >= 20, {
        message: 'outage seen',
      });
      // Let every held delivery run into the outage a few more times: still no ack.
      const seen = consumer.stats.byOutcome['store-unavailable'] ?? 0;
      await waitUntil(() => (consumer.stats.byOutcome['store-unavailable'] ?? 0) >= seen + 16, {
        message: 'more attempts during the outage',
      });
      expect(consumer.stats.acked).toBe(50);
      expect(consumer.stats.inFlight).toBe(8); // the prefetch slots stay taken, nothing spins
      down = false;
      await waitUntil(() => consumer.stats.acked === 100, { message: 'all 100 acks after recovery' });
      expect(effects.size).toBe(100);
      expect([...effects.values()].every((n) => n === 1)).toBe(true);
    } finally {
      await consumer.stop();
      await raw.deleteQueues(queuesOf(queue, [100]));
      await raw.close();
    }
  });

  it('survives a dropped connection: in-flight deliveries are redelivered, never acked on the new channel', async () => {
    const queue = uniqueName('rmq-drop');
    const raw = await rawChannel();
    const effects = new Map<string, number>();
    // A named connection, so only this test's connections are dropped.
    const connection = amqp.connect([env.amqpUrl], {
      reconnectTimeInSeconds: 0.2,
      connectionOptions: { clientProperties: { connection_name: queue } },
    });
    // Handlers after the 20th hold until the connection is dropped, so deliveries are in flight
    // at the drop however slowly the management API lists the connection.
    let reopen!: () => void;
    const dropped = new Promise<void>((resolve) => {
      reopen = resolve;
    });
    const said: string[] = [];
    const note = (level: string) => (message: string) => said.push(`${level} ${message}`);
    const logger = { debug() {}, info: note('info'), warn: note('warn'), error: note('error') };
    const consumer = consumerOn(queue, effects, { connection, prefetch: 4, logger }, 5, () =>
      effects.size > 20 ? dropped : Promise.resolve(),
    );
    await consumer.start();
    try {
      for (let i = 0; i < 300; i++)
        await raw.publish(queue, { id: `${i}` }, { 'x-idempotency-key': `d${i}` });
      await waitUntil(() => consumer.stats.acked >= 15, { message: 'some progress' });
      // Close the consumer's connections from the broker side, as a network drop would.
      const url = new URL(env.rabbitManagementUrl);
      const auth = {
        authorization: `Basic ${Buffer.from(`${url.username}:${url.password}`).toString('base64')}`,
      };
      type Conn = { name: string; client_properties?: { connection_name?: string } };
      // The management API lists a connection a few seconds after it opened.
      const ours = await waitUntil(
        async () => {
          const res = await fetch(`${url.origin}/api/connections`, { headers: auth });
          const conns = (await res.json()) as Conn[];
          const mine = conns.filter((c) => c.client_properties?.connection_name === queue);
          return mine.length > 0 ? mine : undefined;
        },
        { timeoutMs: 20_000, intervalMs: 250, message: 'the consumer connection in the management API' },
      );
      const doneAtDrop = effects.size;
      expect(doneAtDrop).toBeLessThan(300);
      for (const c of ours) {
        await fetch(`${url.origin}/api/connections/${encodeURIComponent(c.name)}`, {
          method: 'DELETE',
          headers: auth,
        });
      }
      reopen();
      await waitUntil(async () => effects.size === 300 && (await raw.count(queue)) === 0, {
        timeoutMs: 60_000,
        message: () => `all 300 processed after the drop (${effects.size})`,
      });
      expect([...effects.values()].every((n) => n === 1)).toBe(true);
      // One reconnect, one new channel: a stale delivery tag acked on it would have made the
      // broker close it (unknown tag) or acked some other message (then one would be missing).
      expect(consumer.stats.channels).toBe(2);
      // The drop and the recovery are each said once (before: nothing at all).
      const connectionLines = said.filter((l) => /connect/.test(l));
      expect(connectionLines).toEqual([
        expect.stringMatching(/^warn .*connection to the broker lost; reconnecting$/),
        expect.stringMatching(/^info .*connected to the broker again$/),
      ]);
    } finally {
      await consumer.stop();
      await connection.close();
      await raw.deleteQueues(queuesOf(queue, [100]));
      await raw.close();
    }
  });
});
