/**
 * Crash matrix: a consumer process is SIGKILLed at each pipeline point, again and again, and
 * restarted. Effects are counted in an external Redis ledger; every record must complete (or be
 * dead-lettered) exactly once and every outgoing message must be delivered.
 */
import { scopeKey } from '@exactly-once/core';
import { createRedisStore } from '@exactly-once/store-redis';
import type { Redis } from 'ioredis';
import type { Admin, Kafka } from 'kafkajs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createTopics,
  distinctKeys,
  exited,
  fullyCommitted,
  ledger,
  newKafka,
  newRedis,
  produceOrders,
  readTopic,
  spawnWorker,
  table,
  topicSize,
  uniqueName,
  waitUntil,
  type WorkerConfig,
} from './helpers.js';

const MESSAGES = 1000;
const KILLS = 3;
const PARTITIONS = 4;
const POINTS = ['after-begin', 'in-handler', 'after-complete', 'after-publish', 'before-commit'] as const;

let kafka: Kafka;
let admin: Admin;
let redis: Redis;

beforeAll(async () => {
  kafka = newKafka('crash-matrix');
  admin = kafka.admin();
  await admin.connect();
  redis = newRedis();
});

afterAll(async () => {
  await admin?.disconnect();
  await redis?.quit();
});

async function scenario(point: (typeof POINTS)[number]) {
  const topic = uniqueName(`crash-${point}`);
  const config: WorkerConfig = {
    topic,
    outTopic: `${topic}.out`,
    dlqTopic: `${topic}.dlq`,
    groupId: uniqueName('crash-group'),
    ledger: uniqueName('ledger'),
    storePrefix: uniqueName('eo'),
  };
  await createTopics(admin, [topic, config.outTopic, config.dlqTopic], PARTITIONS);
  const ids = Array.from({ length: MESSAGES }, (_, i) => `${point}-${i}`);
  await produceOrders(kafka, topic, ids);
  const log = (line: string) => {
    if (process.env.EO_TEST_VERBOSE) console.log(`[${point}] ${line}`);
  };

  let kills = 0;
  for (let run = 0; run < KILLS; run++) {
    // Commits are fewer than records; kill early enough that the kill really happens.
    const killAt = point === 'before-commit' ? 2 + run : 30 + Math.floor(Math.random() * 120);
    const child = spawnWorker({ ...config, killPoint: point, killAt }, log);
    let settled = false;
    const outcome = await Promise.race([
      exited(child).then((r) => (r.signal === 'SIGKILL' ? ('killed' as const) : ('exited' as const))),
      // Stops polling as soon as the race is decided, so no timer outlives this round.
      waitUntil(async () => settled || (await fullyCommitted(admin, config.groupId, topic)), {
        timeoutMs: 120_000,
        intervalMs: 250,
        message: 'progress',
      }).then(() => 'done' as const),
    ]);
    settled = true;
    if (outcome === 'killed') kills++;
    if (outcome !== 'killed') {
      child.kill('SIGTERM');
      await exited(child);
      if (outcome === 'done') break;
      throw new Error(`worker exited unexpectedly at ${point}`);
    }
  }
  const last = spawnWorker({ ...config, killPoint: 'none' }, log);
  try {
    await waitUntil(() => fullyCommitted(admin, config.groupId, topic), {
      timeoutMs: 120_000,
      intervalMs: 250,
      message: `all of ${topic} committed`,
    });
  } finally {
    last.kill('SIGTERM');
    await exited(last);
  }

  const store = createRedisStore({ client: redis, keyPrefix: config.storePrefix });
  let completed = 0;
  let failed = 0;
  for (const id of ids) {
    const rec = await store.get(scopeKey('default', config.groupId, id));
    if (rec?.state === 'COMPLETED') completed++;
    else if (rec?.state === 'FAILED') failed++;
  }
  const l = await ledger(redis, config.ledger);
  const effectOwners = new Set(await redis.hvals(`${config.ledger}:effects`));
  const completions = (await redis.hvals(`${config.ledger}:completions`)).map(Number);
  const deadLettered = await topicSize(admin, config.dlqTopic);
  const out = await readTopic(kafka, config.outTopic, (r) => distinctKeys(r) >= completed);
  return {
    point,
    row: {
      'kill point': point,
      messages: MESSAGES,
      kills,
      'handler runs': l.runs,
      effects: l.effects,
      'duplicate effects': l.effects - effectOwners.size,
      'double completions': completions.filter((c) => c > 1).length,
      completed,
      'dead-lettered': deadLettered,
      lost: MESSAGES - completed - failed,
      'outgoing records': out.length,
      'outgoing distinct': distinctKeys(out),
    },
    failed,
  };
}

describe('crash matrix (SIGKILL at every pipeline point, restart, external ledger)', () => {
  it('never duplicates an effect, never loses a record, delivers every outgoing message', async () => {
    const results = await Promise.all(POINTS.map((p) => scenario(p)));
    table(
      'Kafka crash matrix',
      results.map((r) => r.row),
    );
    for (const { row, failed } of results) {
      expect(row.kills, `${row['kill point']}: kills happened`).toBeGreaterThan(0);
      expect(row['duplicate effects']).toBe(0);
      expect(row['double completions']).toBe(0);
      expect(row.lost).toBe(0);
      expect(row['dead-lettered']).toBe(failed);
      expect(row.effects).toBeGreaterThanOrEqual(row.completed);
      if (failed === 0) expect(row.effects).toBe(MESSAGES);
      expect(row['outgoing distinct']).toBe(row.completed);
      expect(row['handler runs']).toBeGreaterThanOrEqual(MESSAGES);
    }
  }, 300_000);
});
