/**
 * stop() against a broker that keeps the connection open and answers nothing (frozen, or a link
 * that drops its replies): it returns after its timeoutMs and a bounded wait for the closes, not
 * once the client's heartbeat has given the connection up.
 */
import { createConsumer } from '@exactly-once/rabbitmq';
import { createRedisStore } from '@exactly-once/store-redis';
import { afterAll, describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';
import { startFreezingProxy } from '../support/freezing-proxy.js';
import { closeRedis, newRedis, queuesOf, rawChannel, storePrefix } from './helpers.js';

const redis = newRedis();
afterAll(() => closeRedis(redis));

describe('rabbitmq stop() against a frozen broker', () => {
  it('returns while the frozen connection is still open: the heartbeat has not given it up yet', async () => {
    const queue = uniqueName('rmq-frozen-stop');
    const broker = new URL(env.amqpUrl);
    const proxy = await startFreezingProxy({ host: broker.hostname, port: Number(broker.port || 5672) });
    const url = new URL(env.amqpUrl);
    url.port = String(proxy.port);
    const consumer = createConsumer<{ id: string }>({
      connection: url.toString(),
      queue,
      consumer: 'frozen-stop',
      store: createRedisStore({ client: redis, keyPrefix: storePrefix(queue) }),
      retryDelaysMs: [100],
      retentionCheck: 'off',
      logger: { debug() {}, info() {}, warn() {}, error() {} },
      handler: async () => {},
    });
    const raw = await rawChannel();
    try {
      await consumer.start();
      expect(proxy.open).toBeGreaterThan(0);
      proxy.freeze();
      await consumer.stop({ timeoutMs: 500 });
      // Before, stop() awaited the channel's cancel and closes without a bound: it returned only
      // once the heartbeat (missed twice) had closed the connection, and with it every link.
      expect(proxy.open).toBeGreaterThan(0);
    } finally {
      await proxy.close();
      await raw.deleteQueues(queuesOf(queue, [100]));
      await raw.close();
    }
  }, 60_000);
});
