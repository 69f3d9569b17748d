/**
 * Restarts the shared RabbitMQ broker mid-stream (this file runs alone, after the others).
 * Durable quorum queues keep the messages; the consumer reconnects; nothing is lost or run twice.
 */
import { execFileSync } from 'node:child_process';
import type { HandlerContext } from '@exactly-once/core';
import { createConsumer } from '@exactly-once/rabbitmq';
import { createRedisStore } from '@exactly-once/store-redis';
import { afterAll, describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';
import { newRedis, queuesOf, rawChannel } from './helpers.js';

const redis = newRedis();
afterAll(() => redis.quit());

describe('rabbitmq broker restart', () => {
  it('reconnects and finishes every message exactly once', { timeout: 240_000 }, async () => {
    const queue = uniqueName('rmq-restart');
    const effects = new Map<string, number>();
    const consumer = createConsumer<{ id: string }>({
      connection: env.amqpUrl,
      queue,
      consumer: 'restart',
      store: createRedisStore({ client: redis, keyPrefix: `t:${queue}` }),
      retryDelaysMs: [100],
      retentionCheck: 'off',
      leaseMs: 2_000,
      prefetch: 4,
      handler: async (_p: { id: string }, ctx: HandlerContext) => {
        effects.set(ctx.key, (effects.get(ctx.key) ?? 0) + 1);
        await new Promise((r) => setTimeout(r, 20));
      },
    });
    await consumer.start();
    let raw = await rawChannel();
    for (let i = 0; i < 400; i++) await raw.publish(queue, { id: `${i}` }, { 'x-idempotency-key': `r${i}` });
    await raw.close();
    await waitUntil(() => effects.size > 30, { message: 'progress before the restart' });
    execFileSync('bash', ['scripts/infra.sh', 'down', 'rabbitmq'], { stdio: 'inherit' });
    const atRestart = effects.size;
    execFileSync('bash', ['scripts/infra.sh', 'up', 'rabbitmq'], { stdio: 'inherit' });
    await waitUntil(() => effects.size === 400, {
      timeoutMs: 120_000,
      message: () => `all 400 after the restart (${effects.size})`,
    });
    raw = await rawChannel();
    await waitUntil(async () => (await raw.count(queue)) === 0, { message: 'queue drained' });
    expect(atRestart).toBeLessThan(400);
    expect([...effects.values()].every((n) => n === 1)).toBe(true);
    await consumer.stop();
    await raw.deleteQueues(queuesOf(queue, [100]));
    await raw.close();
  });
});
