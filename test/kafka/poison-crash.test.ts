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

it('a record that crashes its worker does not take the records of other partitions to the dead-letter topic', async () => {
  // Four partitions in one worker: the poison record kills it 200 ms into its handler, while the
  // other partitions' records (400 ms each) run. Before, every crash took an attempt from every
  // record the worker had begun, on every partition; the records taken over together with the
  // poison one ran beside it again at each restart and reached maxTakeoverAttempts with it.
  const topic = uniqueName('poison-partitions');
  const dlqTopic = `${topic}.dlq`;
  await createTopics(admin, [topic, dlqTopic], 4);
  const dir = await mkdtemp(join(tmpdir(), 'eo-poison-'));
  const ledger = join(dir, 'ledger');
  const records = [0, 1, 2, 3].flatMap((partition) =>
    Array.from({ length: 4 }, (_, i) => ({
      partition,
      id: partition === 0 && i === 1 ? 'poison' : `p${partition}-${i}`,
    })),
  );
  const innocents = records.map((r) => r.id).filter((id) => id !== 'poison');
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  await producer.send({
    topic,
    acks: -1,
    messages: records.map(({ partition, id }) => ({
      partition,
      value: JSON.stringify({ id }),
      headers: { 'x-idempotency-key': id },
    })),
  });
  await producer.disconnect();

  const workers = supervise('test/kafka/poison-worker.ts', {
    topic,
    dlqTopic,
    groupId: uniqueName('poison-group'),
    ledger,
    storePrefix: storePrefix(),
    maxTakeoverAttempts: 3,
    poisonAfterMs: 200,
    workMs: 400,
  });
  const effects = () => ledgerLines(ledger);
  try {
    const letters = await readTopic(kafka, dlqTopic, (r) => r.length >= 1, 240_000);
    await waitUntil(
      async () => {
        const ran = new Set(await effects());
        return innocents.every((id) => ran.has(id));
      },
      { timeoutMs: 90_000, progress: () => workers.restarts },
    );
    // Every letter written by now (an innocent one, dead-lettered unrun, would be missing above).
    const written = (await admin.fetchTopicOffsets(dlqTopic)).reduce((n, p) => n + Number(p.high), 0);
    const all = await readTopic(kafka, dlqTopic, (r) => r.length >= Math.max(written, letters.length));
    expect(all.map((r) => r.headers['x-idempotency-key'])).toEqual(['poison']);
    expect(all[0]?.headers['x-eo-error-code']).toBe('ATTEMPTS_EXHAUSTED');
    const counts = new Map<string, number>();
    for (const id of await effects()) counts.set(id, (counts.get(id) ?? 0) + 1);
    for (const id of innocents) expect(counts.get(id), id).toBe(1);
    expect(workers.restarts).toBeGreaterThanOrEqual(3);
  } finally {
    await workers.stop();
    await admin.deleteTopics({ topics: [topic, dlqTopic] }).catch(() => {});
    await rm(dir, { recursive: true, force: true });
  }
}, 300_000);
