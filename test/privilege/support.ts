/**
 * Least-privilege fixtures: a Redis ACL user limited to the store's commands and key prefix (on
 * the standalone server and on every cluster node: ACLs are per node), a RabbitMQ vhost with a
 * user limited to one consumer's queues, and one consumer scenario (processed, duplicate, retry,
 * dead letters, an outgoing message) to run through them.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { type Logger, PermanentError, type ProcessedStore } from '@exactly-once/core';
import { createConsumer, createPublisher, type RabbitConsumer } from '@exactly-once/rabbitmq';
import amqp from 'amqplib';
import { Cluster, Redis } from 'ioredis';
import { env, uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';

/**
 * Every command the Redis store sends, directly or from its Lua scripts (ACLs check those too),
 * and what ioredis sends for a Cluster. The README's ACL line is this list.
 */
export const STORE_COMMANDS: readonly string[] = [
  // the scripts, and the commands inside them
  'eval',
  'evalsha',
  'time',
  'del',
  'get',
  'set',
  'strlen',
  'getrange',
  'exists',
  'pexpiretime',
  'hset',
  'hget',
  'hgetall',
  'hdel',
  'hexists',
  'pexpireat',
  'pttl',
  'zadd',
  'zrange',
  'zrem',
  'zscore',
  // a Cluster client: the slot map, the ready check, and the server check's first contact
  'cluster|slots',
  'cluster|info',
  'ping',
];

/** Only for `listInProgress` (an operator query that SCANs). */
export const LIST_IN_PROGRESS_COMMANDS: readonly string[] = ['scan', 'hmget'];

export interface RedisAclUser {
  readonly username: string;
  readonly prefix: string;
  /** The ACL SETUSER rule, as given to every server. */
  readonly rule: readonly string[];
  /** A client logged in as the user (ready check off: it would send INFO, not granted). */
  standalone(): Redis;
  cluster(): Cluster;
  /** Admin connections: the standalone server, then each cluster node. */
  readonly admins: readonly Redis[];
  /** Deletes the user's keys and the user everywhere. */
  drop(): Promise<void>;
}

export async function createRedisAclUser(label: string): Promise<RedisAclUser> {
  const username = uniqueName(`eo-acl-${label}`);
  const password = randomBytes(16).toString('hex');
  const prefix = uniqueName(`eot-acl-${label}`);
  const rule = [
    'reset',
    'on',
    `>${password}`,
    `~${prefix}:*`,
    'resetchannels',
    '-@all',
    ...[...STORE_COMMANDS, ...LIST_IN_PROGRESS_COMMANDS].map((c) => `+${c}`),
  ];
  const admins = [
    new Redis(env.redisUrl, { maxRetriesPerRequest: 3 }),
    ...env.redisClusterNodes.map((node) => new Redis({ ...node, maxRetriesPerRequest: 3 })),
  ];
  for (const admin of admins) await admin.call('ACL', 'SETUSER', username, ...rule);
  const login = { username, password, enableReadyCheck: false, maxRetriesPerRequest: 2 };
  return {
    username,
    prefix,
    rule,
    admins,
    standalone: () => new Redis(env.redisUrl, login),
    cluster: () => new Cluster(env.redisClusterNodes, { redisOptions: login }),
    async drop() {
      for (const admin of admins) {
        // Only this run's keys: they all start with its prefix.
        let cursor = '0';
        do {
          const [next, keys] = await admin.scanBuffer(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
          cursor = next.toString();
          for (const key of keys) await admin.unlink(key);
        } while (cursor !== '0');
        await admin.call('ACL', 'DELUSER', username);
        await admin.quit();
      }
    },
  };
}

const management = new URL(env.rabbitManagementUrl);
const managementAuth = `Basic ${Buffer.from(
  `${decodeURIComponent(management.username)}:${decodeURIComponent(management.password)}`,
).toString('base64')}`;

async function api(method: 'PUT' | 'DELETE', path: string, body?: unknown): Promise<void> {
  const response = await fetch(new URL(`/api/${path}`, management.origin), {
    method,
    headers: { authorization: managementAuth, 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  if (!response.ok && !(method === 'DELETE' && response.status === 404)) {
    throw new Error(`${method} /api/${path}: ${response.status} ${await response.text()}`);
  }
}

/** AMQP URL of `user` (or the admin's, without one) on `vhost`. */
export function amqpUrlFor(vhost: string, user?: { name: string; password: string }): string {
  const url = new URL(env.amqpUrl);
  if (user) {
    url.username = encodeURIComponent(user.name);
    url.password = encodeURIComponent(user.password);
  }
  url.pathname = `/${encodeURIComponent(vhost)}`;
  return url.toString();
}

/** A regex matching `name` literally. */
const literal = (name: string) => name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * The consumer's grant on its vhost (see packages/rabbitmq/README.md, Permissions):
 * - configure: declare the work queue, its retry tiers and its dead-letter queue;
 * - write: publish through the default exchange (`amq.default`): retry and dead-letter copies,
 *   outgoing messages to queues, and a retry tier's dead-letter target, checked when it is declared;
 * - read: consume the work queue, and the retry tiers (a queue declared with a dead-letter
 *   exchange needs read on itself).
 */
export function consumerPermissions(queue: string) {
  const q = literal(queue);
  return {
    configure: `^${q}(\\.retry\\.[0-9]+|\\.dlq)$|^${q}$`,
    write: '^amq\\.default$',
    read: `^${q}(\\.retry\\.[0-9]+)?$`,
  };
}

export interface RabbitVhost {
  readonly vhost: string;
  readonly user: { readonly name: string; readonly password: string };
  readonly permissions: ReturnType<typeof consumerPermissions>;
  /** The restricted user's URL. */
  readonly url: string;
  /** The admin's URL on the vhost (setup and inspection). */
  readonly adminUrl: string;
  drop(): Promise<void>;
}

/** A vhost and a user with {@link consumerPermissions} for `queue` on it alone. */
export async function createRabbitVhost(queue: string): Promise<RabbitVhost> {
  const vhost = uniqueName('eo-vhost');
  const user = { name: uniqueName('eo-user'), password: randomBytes(16).toString('hex') };
  const permissions = consumerPermissions(queue);
  const admin = decodeURIComponent(new URL(env.amqpUrl).username);
  await api('PUT', `vhosts/${encodeURIComponent(vhost)}`, {});
  await api('PUT', `users/${encodeURIComponent(user.name)}`, { password: user.password, tags: '' });
  await api('PUT', `permissions/${encodeURIComponent(vhost)}/${encodeURIComponent(user.name)}`, permissions);
  // The test itself (as the broker's admin) sets up and inspects the vhost.
  await api('PUT', `permissions/${encodeURIComponent(vhost)}/${encodeURIComponent(admin)}`, {
    configure: '.*',
    write: '.*',
    read: '.*',
  });
  return {
    vhost,
    user,
    permissions,
    url: amqpUrlFor(vhost, user),
    adminUrl: amqpUrlFor(vhost),
    async drop() {
      await api('DELETE', `vhosts/${encodeURIComponent(vhost)}`);
      await api('DELETE', `users/${encodeURIComponent(user.name)}`);
    },
  };
}

/** A logger that keeps every line as text. */
export function capturingLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const at =
    (level: string) =>
    (message: string, meta?: Readonly<Record<string, unknown>>): void => {
      lines.push(`${level} ${message} ${JSON.stringify(meta ?? {})}`);
    };
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

export interface ScenarioOptions {
  /** The consumer's (and publisher's) AMQP URL. */
  readonly url: string;
  /** An admin URL on the same vhost: declares the output queue, reads results. */
  readonly adminUrl: string;
  readonly queue: string;
  readonly store: ProcessedStore;
  /** Marks every idempotency key (`<marker>-ok`, ...). */
  readonly keyMarker: string;
  /** Marks every payload. */
  readonly payloadMarker: string;
  readonly recordKeys?: boolean;
  readonly logger?: Logger;
  /**
   * Also send the `ok` payload under another key (`<marker>-again`), with the payload guard on
   * (`flag`): it runs, and the guard logs both keys.
   */
  readonly reusedPayload?: boolean;
}

export interface ScenarioResult {
  readonly consumer: RabbitConsumer;
  readonly runs: Record<string, number>;
  /** Bodies in `<queue>.out` and `<queue>.dlq`. */
  readonly outgoing: unknown[];
  readonly deadLetters: { key: unknown; reason: unknown }[];
}

/**
 * One consumer, five messages (six with `reusedPayload`): `ok` (publishes to `<queue>.out`) sent twice (the second is a
 * duplicate), `retry` (fails once, then succeeds), `dead` (PermanentError) and `bad` (not JSON);
 * the two last are dead-lettered. Resolves when all settled, with what landed where.
 */
export async function runScenario(o: ScenarioOptions): Promise<ScenarioResult> {
  const out = `${o.queue}.out`;
  const adminConnection = await amqp.connect(o.adminUrl);
  const admin = await adminConnection.createChannel();
  // The output queue belongs to whoever consumes it, not to this consumer.
  await admin.assertQueue(out, { durable: true });
  const publisher = createPublisher({ connection: o.url });
  const runs: Record<string, number> = {};
  const consumer = createConsumer<{ kind: string; note: string }>({
    connection: o.url,
    queue: o.queue,
    consumer: 'privilege',
    store: o.store,
    retryDelaysMs: [200],
    retry: { maxAttempts: 3, initialDelayMs: 100, jitter: 'none' },
    retentionCheck: 'off',
    ...(o.recordKeys === undefined ? {} : { recordKeys: o.recordKeys }),
    ...(o.logger ? { logger: o.logger } : {}),
    ...(o.reusedPayload ? { payloadGuard: { windowMs: 60_000, action: 'flag' as const } } : {}),
    handler: (payload, ctx) => {
      runs[payload.kind] = (runs[payload.kind] ?? 0) + 1;
      switch (payload.kind) {
        case 'retry':
          // A handler's message naming its key: scrubbed in telemetry unless recordKeys.
          if (ctx.attempt === 1) throw new Error(`payment provider busy for "${ctx.key}"`);
          return { retried: true };
        case 'dead':
          throw new PermanentError(`order "${ctx.key}" refused`);
        default:
          ctx.publish(out, { done: ctx.keyFor('out') });
          return { note: payload.note };
      }
    },
  });
  try {
    await consumer.start();
    const send = (kind: string, body: unknown) =>
      publisher.send(o.queue, body, { idempotencyKey: `${o.keyMarker}-${kind}`, requestId: randomUUID() });
    const note = `${o.payloadMarker} alice@example.com`;
    await send('ok', { kind: 'ok', note });
    await send('ok', { kind: 'ok', note });
    if (o.reusedPayload) await send('again', { kind: 'ok', note });
    await send('retry', { kind: 'retry', note });
    await send('dead', { kind: 'dead', note });
    // Not JSON: JSON.parse's error quotes the text.
    await send('bad', `not json: ${note}`);
    await waitUntil(
      () =>
        consumer.stats.acked >= (o.reusedPayload ? 4 : 3) &&
        consumer.stats.retried === 1 &&
        consumer.stats.deadLettered === 2,
      { timeoutMs: 60_000, message: () => `settled (stats ${JSON.stringify(consumer.stats)})` },
    );
    const outgoing: unknown[] = [];
    await waitUntil(async () => {
      for (;;) {
        const m = await admin.get(out, { noAck: true });
        if (!m) break;
        outgoing.push(JSON.parse(m.content.toString()));
      }
      return outgoing.length >= (o.reusedPayload ? 2 : 1);
    });
    const deadLetters: { key: unknown; reason: unknown }[] = [];
    for (;;) {
      const m = await admin.get(`${o.queue}.dlq`, { noAck: true });
      if (!m) break;
      deadLetters.push({
        key: m.properties.headers?.['x-idempotency-key'],
        reason: m.properties.headers?.['x-eo-error-class'],
      });
    }
    return { consumer, runs, outgoing, deadLetters };
  } finally {
    await consumer.stop();
    await publisher.close();
    for (const q of [o.queue, `${o.queue}.dlq`, `${o.queue}.retry.200`, out]) {
      await admin.deleteQueue(q).catch(() => {});
    }
    await adminConnection.close().catch(() => {});
  }
}
