/**
 * Restarts the shared RabbitMQ broker mid-stream (a `.destructive` file: `npm test` runs these
 * alone, after the others). Durable quorum queues keep the messages; the consumer and its
 * publisher reconnect; nothing is lost or run twice, and every outgoing message arrives.
 */
import { execFileSync } from 'node:child_process';
import type { HandlerContext } from '@exactly-once/core';
import { createConsumer } from '@exactly-once/rabbitmq';
import { createRedisStore } from '@exactly-once/store-redis';
import { afterAll, describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';
import { closeRedis, newRedis, queuesOf, rawChannel, storePrefix } from './helpers.js';

const redis = newRedis();
afterAll(() => closeRedis(redis));
const MESSAGES = 400;

describe('rabbitmq broker restart', () => {
  it('reconnects and finishes every message exactly once', { timeout: 240_000 }, async () => {
    const queue = uniqueName('rmq-restart');
    const effects = new Map<string, number>();
    let raw = await rawChannel();
    // The output queue must survive the restart too.
    await raw.ch.assertQueue(`${queue}.out`, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
    const consumer = createConsumer<{ id: string }>({
      connection: env.amqpUrl,
      queue,
      consumer: 'restart',
      store: createRedisStore({ client: redis, keyPrefix: storePrefix(queue) }),
      retryDelaysMs: [100],
      retentionCheck: 'off',
      leaseMs: 2_000,
      prefetch: 4,
      handler: async (p: { id: string }, ctx: HandlerContext) => {
        effects.set(ctx.key, (effects.get(ctx.key) ?? 0) + 1);
        ctx.publish(`${queue}.out`, { id: p.id });
        await new Promise((r) => setTimeout(r, 20));
      },
    });
    await consumer.start();
    for (let i = 0; i < MESSAGES; i++) {
      await raw.publish(queue, { id: `${i}` }, { 'x-idempotency-key': `r${i}` });
    }
    await raw.close();
    await waitUntil(() => effects.size > 30, { message: 'progress before the restart' });
    execFileSync('bash', ['scripts/infra.sh', 'down', 'rabbitmq'], { stdio: 'inherit' });
    const atRestart = effects.size;
    execFileSync('bash', ['scripts/infra.sh', 'up', 'rabbitmq'], { stdio: 'inherit' });
    await waitUntil(() => effects.size === MESSAGES, {
      timeoutMs: 120_000,
      message: () => `all ${MESSAGES} after the restart (${effects.size})`,
    });
    raw = await rawChannel();
    const outIds = new Set<string>();
    await waitUntil(
      async () => {
        for (const m of await raw.drain(`${queue}.out`)) {
          outIds.add(String(m.properties.headers?.['x-idempotency-key']));
        }
        return outIds.size === MESSAGES && (await raw.count(queue)) === 0;
      },
      { timeoutMs: 60_000, message: () => `queue drained, outgoing delivered (${outIds.size})` },
    );
    expect(atRestart).toBeLessThan(MESSAGES);
    expect([...effects.values()].every((n) => n === 1)).toBe(true);
    expect(consumer.stats.channels).toBeGreaterThanOrEqual(2);
    await consumer.stop();
    await raw.deleteQueues(queuesOf(queue, [100]));
    await raw.close();
  });
});
