/**
 * Rebalances under load, on each client: group members are started, added and SIGKILLed while
 * records flow and more are produced. Every key must have exactly one effect and one completion.
 */
import { scopeKey } from '@exactly-once/core';
import { createRedisStore } from '@exactly-once/store-redis';
import type { ChildProcess } from 'node:child_process';
import type { Redis } from 'ioredis';
import type { Admin, Kafka } from 'kafkajs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CLIENTS,
  createTopics,
  distinctKeys,
  dropStorePrefixes,
  exited,
  fullyCommitted,
  ledger,
  newKafka,
  newRedis,
  produceOrders,
  readTopic,
  spawnWorker,
  storePrefix,
  table,
  topicSize,
  uniqueName,
  waitUntil,
  type WorkerConfig,
} from './helpers.js';

const MESSAGES = 3000;
const PARTITIONS = 6;

let kafka: Kafka;
let admin: Admin;
let redis: Redis;

beforeAll(async () => {
  kafka = newKafka('rebalance');
  admin = kafka.admin();
  await admin.connect();
  redis = newRedis();
});

afterAll(async () => {
  await admin?.disconnect();
  if (redis) await dropStorePrefixes(redis);
  await redis?.quit();
});

describe.each(CLIENTS)('rebalance under load on %s', (client) => {
  it('adds and SIGKILLs members mid-stream; one effect per key', async () => {
    const topic = uniqueName('rebalance');
    const config: WorkerConfig = {
      topic,
      outTopic: `${topic}.out`,
      dlqTopic: `${topic}.dlq`,
      groupId: uniqueName('rebalance-group'),
      ledger: uniqueName('ledger'),
      storePrefix: storePrefix(),
      killPoint: 'none',
      // Slow enough that membership changes land while records are in flight.
      handlerDelayMs: 15,
      client,
    };
    await createTopics(admin, [topic, config.outTopic, config.dlqTopic], PARTITIONS);
    const ids = Array.from({ length: MESSAGES }, (_, i) => `rb-${i}`);
    const half = MESSAGES / 2;
    await produceOrders(kafka, topic, ids.slice(0, half));

    const workers = new Map<string, ChildProcess>();
    const events: { event: string; 'effects so far': number }[] = [];
    const progress = async () => (await ledger(redis, config.ledger)).effects;
    const note = async (event: string) => events.push({ event, 'effects so far': await progress() });
    const start = async (name: string) => {
      workers.set(name, spawnWorker(config));
      await note(`start ${name}`);
    };
    const kill = async (name: string) => {
      const w = workers.get(name);
      w?.kill('SIGKILL');
      if (w) await exited(w);
      workers.delete(name);
      await note(`SIGKILL ${name}`);
    };
    const reach = (n: number) =>
      waitUntil(async () => (await progress()) >= n, {
        timeoutMs: 120_000,
        intervalMs: 100,
        message: `${n} effects`,
      });

    try {
      await start('A');
      await reach(150);
      await start('B');
      await start('C');
      await produceOrders(kafka, topic, ids.slice(half));
      await note('produced second half');
      await reach(900);
      await kill('B');
      await reach(1400);
      await start('D');
      await reach(1900);
      await kill('A');
      await reach(2300);
      await start('E');
      await waitUntil(() => fullyCommitted(admin, config.groupId, topic), {
        timeoutMs: 180_000,
        intervalMs: 250,
        message: 'all committed',
      });
      await note('all committed');
    } finally {
      for (const [, w] of workers) w.kill('SIGTERM');
      await Promise.all([...workers.values()].map((w) => exited(w)));
    }

    const store = createRedisStore({ client: redis, keyPrefix: config.storePrefix });
    let completed = 0;
    for (const id of ids) {
      if ((await store.get(scopeKey('default', config.groupId, id)))?.state === 'COMPLETED') completed++;
    }
    const l = await ledger(redis, config.ledger);
    const owners = new Set(await redis.hvals(`${config.ledger}:effects`));
    const completions = (await redis.hvals(`${config.ledger}:completions`)).map(Number);
    const out = await readTopic(kafka, config.outTopic, (r) => distinctKeys(r) >= completed);
    const row = {
      messages: MESSAGES,
      partitions: PARTITIONS,
      'members started': 5,
      'members killed': 2,
      'handler runs': l.runs,
      effects: l.effects,
      'duplicate effects': l.effects - owners.size,
      'double completions': completions.filter((c) => c > 1).length,
      completed,
      'dead-lettered': await topicSize(admin, config.dlqTopic),
      lost: MESSAGES - completed,
      'outgoing records': out.length,
      'outgoing distinct': distinctKeys(out),
    };
    table(`Kafka rebalance under load (${client}): membership timeline`, events);
    table(`Kafka rebalance under load (${client}): counts`, [row]);
    expect(row['duplicate effects']).toBe(0);
    expect(row['double completions']).toBe(0);
    expect(row.effects).toBe(MESSAGES);
    expect(row.lost).toBe(0);
    expect(row['dead-lettered']).toBe(0);
    expect(row['outgoing distinct']).toBe(MESSAGES);
  }, 300_000);
});
