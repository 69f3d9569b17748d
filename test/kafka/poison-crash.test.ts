/**
 * A record that kills its worker (SIGKILL) as its handler starts. The records before it in its
 * batch had returned, but their completions are written together a moment later: if the poison
 * record starts before they land, every crash runs them again, until they reach
 * maxTakeoverAttempts before it and are dead-lettered in its place (found under a crash loop:
 * records 0-4 ran 4 to 8 times and went to the dead-letter topic as PREVIOUSLY_FAILED; the poison
 * record ran past the bound).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Admin, Kafka } from 'kafkajs';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ledgerLines, supervise } from '../support/supervisor.js';
import {
  createTopics,
  dropStorePrefixes,
  newKafka,
  newRedis,
  readTopic,
  storePrefix,
  uniqueName,
  waitUntil,
} from './helpers.js';

let kafka: Kafka;
let admin: Admin;
let redis: Redis;

beforeAll(async () => {
  kafka = newKafka('poison-crash-test');
  admin = kafka.admin();
  await admin.connect();
  redis = newRedis();
});

afterAll(async () => {
  await admin?.disconnect();
  if (redis) await dropStorePrefixes(redis);
  await redis?.quit();
});

it('a record that crashes its worker is dead-lettered alone; the records before it run at most twice', async () => {
  const topic = uniqueName('poison-crash');
  const dlqTopic = `${topic}.dlq`;
  await createTopics(admin, [topic, dlqTopic], 1);
  const dir = await mkdtemp(join(tmpdir(), 'eo-poison-'));
  const ledger = join(dir, 'ledger');
  const innocents = Array.from({ length: 11 }, (_, i) => `m${i}`);
  const ids = [...innocents.slice(0, 4), 'poison', ...innocents.slice(4)];
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  await producer.send({
    topic,
    acks: -1,
    messages: ids.map((id) => ({
      key: 'one-partition',
      value: JSON.stringify({ id }),
      headers: { 'x-idempotency-key': id },
    })),
  });
  await producer.disconnect();

  const config = {
    topic,
    dlqTopic,
    groupId: uniqueName('poison-group'),
    ledger,
    storePrefix: storePrefix(),
    maxTakeoverAttempts: 3,
  };
  const workers = supervise('test/kafka/poison-worker.ts', config);
  const effects = () => ledgerLines(ledger);
  try {
    // The first letter: the poison record's, unless the records before it were dead-lettered first.
    const letters = await readTopic(kafka, dlqTopic, (r) => r.length >= 1, 240_000);
    await waitUntil(
      async () => {
        const ran = new Set(await effects());
        return innocents.every((id) => ran.has(id));
      },
      { timeoutMs: 60_000, progress: () => workers.restarts },
    );
    expect(letters.map((r) => r.headers['x-idempotency-key'])).toEqual(['poison']);
    expect(letters[0]?.headers['x-eo-error-code']).toBe('ATTEMPTS_EXHAUSTED');
    expect(letters[0]?.headers['x-eo-attempts']).toBe('3');
    // The records before it ran once before the first crash (their completions not written yet)
    // and once after it; the records after it never started beside it.
    const counts = new Map<string, number>();
    for (const id of await effects()) counts.set(id, (counts.get(id) ?? 0) + 1);
    for (const id of innocents) expect(counts.get(id), id).toBeLessThanOrEqual(2);
    expect(workers.restarts).toBeGreaterThanOrEqual(3);
  } finally {
    await workers.stop();
    await admin.deleteTopics({ topics: [topic, dlqTopic] }).catch(() => {});
    await rm(dir, { recursive: true, force: true });
  }
}, 300_000);
