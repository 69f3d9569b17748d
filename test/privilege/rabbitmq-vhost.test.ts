/**
 * The RabbitMQ consumer and publisher as a user whose only permissions are on one vhost, limited
 * to the consumer's queues (`consumerPermissions` in support.ts, the table in
 * packages/rabbitmq/README.md): end to end (processed, duplicate, retry, dead letters, an
 * outgoing message), and what lies outside the grant is refused.
 */
import { createRedisStore } from '@exactly-once/store-redis';
import amqp from 'amqplib';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';
import { createRabbitVhost, type RabbitVhost, runScenario } from './support.js';

const queue = uniqueName('eo-priv');
let vhost: RabbitVhost | undefined;
const grant = (): RabbitVhost => {
  if (!vhost) throw new Error('vhost not created');
  return vhost;
};
const redis = new Redis(env.redisUrl, { maxRetriesPerRequest: 3 });
beforeAll(async () => {
  vhost = await createRabbitVhost(queue);
});
afterAll(async () => {
  await vhost?.drop();
  await redis.quit();
});

/** Runs `op` on a fresh channel of `url`; resolves with the broker's refusal code, or 'ok'. */
async function attempt(
  url: string,
  op: (ch: amqp.ConfirmChannel) => Promise<unknown>,
): Promise<number | 'ok'> {
  let connection: amqp.ChannelModel;
  try {
    connection = await amqp.connect(url);
  } catch (error) {
    return codeOf(error);
  }
  connection.on('error', () => {});
  // A refused publish closes the channel: the close (with its code) comes as an 'error' event.
  let closedWith: unknown;
  try {
    const ch = await connection.createConfirmChannel();
    ch.on('error', (error: unknown) => {
      closedWith = error;
    });
    await op(ch);
    return 'ok';
  } catch (error) {
    return codeOf(closedWith ?? error);
  } finally {
    await connection.close().catch(() => {});
  }
}

describe('rabbitmq consumer on a least-privilege vhost user', () => {
  it('processes, deduplicates, retries, dead-letters and publishes through the grant', async () => {
    const result = await runScenario({
      url: grant().url,
      adminUrl: grant().adminUrl,
      queue,
      store: createRedisStore({
        client: redis,
        keyPrefix: uniqueName('eot-vhost'),
        checkEvictionPolicy: false,
      }),
      keyMarker: 'vhost-key',
      payloadMarker: 'vhost-payload',
    });
    expect(result.runs).toEqual({ ok: 1, retry: 2, dead: 1 });
    expect(result.consumer.stats.byOutcome.duplicate).toBe(1);
    expect(result.outgoing).toHaveLength(1);
    expect(result.deadLetters.map((d) => d.key).sort()).toEqual(['vhost-key-bad', 'vhost-key-dead']);
  });

  it('refuses what lies outside the grant', async () => {
    const { url, user } = grant();
    const ACCESS_REFUSED = 403;
    // Another vhost (the default one).
    // (The broker closes the connection during the handshake: amqplib reports no code.)
    await expect(amqp.connect(amqpDefaultVhost(user))).rejects.toThrow(/ConnectionClose|NOT[-_]ALLOWED/);
    // Declaring a queue that is not the consumer's.
    expect(await attempt(url, (ch) => ch.assertQueue(uniqueName('eo-other'), { durable: true }))).toBe(
      ACCESS_REFUSED,
    );
    // Reading, consuming or purging a queue that is not its own; publishing to an exchange other
    // than the default one; declaring an exchange.
    const admin = await amqp.connect(grant().adminUrl);
    const setup = await admin.createChannel();
    const foreign = uniqueName('eo-foreign');
    await setup.assertQueue(foreign, { durable: true });
    try {
      expect(await attempt(url, (ch) => ch.get(foreign))).toBe(ACCESS_REFUSED);
      expect(await attempt(url, (ch) => ch.consume(foreign, () => {}))).toBe(ACCESS_REFUSED);
      expect(await attempt(url, (ch) => ch.purgeQueue(foreign))).toBe(ACCESS_REFUSED);
      expect(
        await attempt(url, async (ch) => {
          ch.publish('amq.topic', 'x', Buffer.from('{}'));
          await ch.waitForConfirms();
        }),
      ).toBe(ACCESS_REFUSED);
      expect(await attempt(url, (ch) => ch.assertExchange(uniqueName('eo-ex'), 'topic'))).toBe(
        ACCESS_REFUSED,
      );
    } finally {
      await setup.deleteQueue(foreign).catch(() => {});
      await admin.close().catch(() => {});
    }
  });
});

/** The AMQP reply code of a refusal: amqplib rejects with an Error or with the close frame. */
function codeOf(error: unknown): number {
  const e = error as { code?: unknown; fields?: { replyCode?: unknown }; message?: unknown };
  const code = typeof e.code === 'number' ? e.code : e.fields?.replyCode;
  if (typeof code === 'number') return code;
  const inMessage = /\b(40[0-9]|5[0-9]{2})\b/.exec(String(e.message ?? ''));
  return inMessage ? Number(inMessage[1]) : Number.NaN;
}

function amqpDefaultVhost(user: { name: string; password: string }): string {
  const u = new URL(env.amqpUrl);
  u.username = encodeURIComponent(user.name);
  u.password = encodeURIComponent(user.password);
  return u.toString();
}
