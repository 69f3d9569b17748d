/**
 * A record that kills its worker (SIGKILL), run in a crash loop: it must be dead-lettered alone.
 * Found twice: the records before it in its batch had returned, but their completions are written
 * together a moment later, so they ran again at each crash and reached maxTakeoverAttempts before
 * it (records 0-4 ran 4 to 8 times and went to the dead-letter topic as PREVIOUSLY_FAILED); and
 * the records of other partitions the worker had begun were taken over with it at each crash and
 * dead-lettered beside it, some without ever running.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import type { Admin, Kafka } from 'kafkajs';
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
import type { PoisonWorkerConfig } from './poison-worker.js';

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

interface Sent {
  readonly id: string;
  /** Its partition; without it, every record goes to one partition (one record key). */
  readonly partition?: number;
}

/**
 * Produces `records` ('poison' among them) to a new topic of `partitions` and runs the poison
 * worker under a supervisor, restarted at each crash, until every other record's effect is in the
 * ledger. Answers every letter written by then, how many effects each id left and the restarts.
 */
async function crashLoop(
  partitions: number,
  records: readonly Sent[],
  worker: Pick<PoisonWorkerConfig, 'maxTakeoverAttempts' | 'poisonAfterMs' | 'workMs'>,
  timeoutMs: number,
) {
  const topic = uniqueName('poison-crash');
  const dlqTopic = `${topic}.dlq`;
  await createTopics(admin, [topic, dlqTopic], partitions);
  const dir = await mkdtemp(join(tmpdir(), 'eo-poison-'));
  const ledger = join(dir, 'ledger');
  const innocents = records.map((r) => r.id).filter((id) => id !== 'poison');
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  await producer.send({
    topic,
    acks: -1,
    messages: records.map(({ id, partition }) => ({
      ...(partition === undefined ? { key: 'one-partition' } : { partition }),
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
    ...worker,
  } satisfies PoisonWorkerConfig);
  try {
    // The first letter: the poison record's, unless others were dead-lettered first.
    await readTopic(kafka, dlqTopic, (r) => r.length >= 1, 240_000);
    await waitUntil(
      async () => {
        const ran = new Set(await ledgerLines(ledger));
        return innocents.every((id) => ran.has(id));
      },
      { timeoutMs, progress: () => workers.restarts },
    );
    // Every letter written by now (an innocent one dead-lettered unrun would be missing above).
    const written = (await admin.fetchTopicOffsets(dlqTopic)).reduce((n, p) => n + Number(p.high), 0);
    const letters = await readTopic(kafka, dlqTopic, (r) => r.length >= written);
    const counts = new Map<string, number>();
    for (const id of await ledgerLines(ledger)) counts.set(id, (counts.get(id) ?? 0) + 1);
    return { letters, innocents, counts, restarts: workers.restarts };
  } finally {
    await workers.stop();
    await admin.deleteTopics({ topics: [topic, dlqTopic] }).catch(() => {});
    await rm(dir, { recursive: true, force: true });
  }
}

it('a record that crashes its worker is dead-lettered alone; the records before it run at most twice', async () => {
  const ids = ['m0', 'm1', 'm2', 'm3', 'poison', 'm4', 'm5', 'm6', 'm7', 'm8', 'm9', 'm10'];
  const { letters, innocents, counts, restarts } = await crashLoop(
    1,
    ids.map((id) => ({ id })),
    { maxTakeoverAttempts: 3 },
    60_000,
  );
  expect(letters.map((r) => r.headers['x-idempotency-key'])).toEqual(['poison']);
  expect(letters[0]?.headers['x-eo-error-code']).toBe('ATTEMPTS_EXHAUSTED');
  expect(letters[0]?.headers['x-eo-attempts']).toBe('3');
  // The records before it ran once before the first crash (their completions not written yet)
  // and once after it; the records after it never started beside it.
  for (const id of innocents) expect(counts.get(id), id).toBeLessThanOrEqual(2);
  expect(restarts).toBeGreaterThanOrEqual(3);
}, 300_000);

it('a record that crashes its worker does not take the records of other partitions to the dead-letter topic', async () => {
  // Four partitions in one worker: the poison record kills it 200 ms into its handler, while the
  // other partitions' records (400 ms each) run. Before, every crash took an attempt from every
  // record the worker had begun, on every partition; the records taken over together with the
  // poison one ran beside it again at each restart and reached maxTakeoverAttempts with it.
  const records = [0, 1, 2, 3].flatMap((partition) =>
    Array.from({ length: 4 }, (_, i) => ({
      partition,
      id: partition === 0 && i === 1 ? 'poison' : `p${partition}-${i}`,
    })),
  );
  const { letters, innocents, counts, restarts } = await crashLoop(
    4,
    records,
    { maxTakeoverAttempts: 3, poisonAfterMs: 200, workMs: 400 },
    90_000,
  );
  expect(letters.map((r) => r.headers['x-idempotency-key'])).toEqual(['poison']);
  expect(letters[0]?.headers['x-eo-error-code']).toBe('ATTEMPTS_EXHAUSTED');
  for (const id of innocents) expect(counts.get(id), id).toBe(1);
  expect(restarts).toBeGreaterThanOrEqual(3);
}, 300_000);
