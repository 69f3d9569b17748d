/**
 * A record that kills its worker (SIGKILL) as its handler starts. The records before it in its
 * batch had returned, but their completions are written together a moment later: if the poison
 * record starts before they land, every crash runs them again, until they reach
 * maxTakeoverAttempts before it and are dead-lettered in its place (found under a crash loop:
 * records 0-4 ran 4 to 8 times and went to the dead-letter topic as PREVIOUSLY_FAILED; the poison
 * record ran past the bound).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Admin, Kafka } from 'kafkajs';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, expect, it } from 'vitest';
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
const children = new Set<ChildProcess>();

beforeAll(async () => {
  kafka = newKafka('poison-crash-test');
  admin = kafka.admin();
  await admin.connect();
  redis = newRedis();
});

afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  await admin?.disconnect();
  if (redis) await dropStorePrefixes(redis);
  await redis?.quit();
});

function startWorker(config: PoisonWorkerConfig): ChildProcess {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', '--conditions=@exactly-once/source', 'test/kafka/poison-worker.ts'],
    {
      cwd: fileURLToPath(new URL('../..', import.meta.url)),
      env: { ...process.env, EO_WORKER_CONFIG: JSON.stringify(config) },
      stdio: ['ignore', 'ignore', 'inherit'],
    },
  );
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}

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
  // A supervisor: the worker is started again each time it dies, as a deployment would.
  let worker: ChildProcess;
  let restarts = 0;
  let done = false;
  const start = () => {
    worker = startWorker(config);
    worker.on('exit', () => {
      if (done) return;
      restarts++;
      start();
    });
  };
  start();
  const effects = async () =>
    (await readFile(ledger, 'utf8').catch(() => '')).split('\n').filter((line) => line !== '');
  try {
    // The first letter: the poison record's, unless the records before it were dead-lettered first.
    const letters = await readTopic(kafka, dlqTopic, (r) => r.length >= 1, 240_000);
    await waitUntil(
      async () => {
        const ran = new Set(await effects());
        return innocents.every((id) => ran.has(id));
      },
      { timeoutMs: 60_000, progress: () => restarts },
    );
    expect(letters.map((r) => r.headers['x-idempotency-key'])).toEqual(['poison']);
    expect(letters[0]?.headers['x-eo-error-code']).toBe('ATTEMPTS_EXHAUSTED');
    expect(letters[0]?.headers['x-eo-attempts']).toBe('3');
    // The records before it ran once before the first crash (their completions not written yet)
    // and once after it; the records after it never started beside it.
    const counts = new Map<string, number>();
    for (const id of await effects()) counts.set(id, (counts.get(id) ?? 0) + 1);
    for (const id of innocents) expect(counts.get(id), id).toBeLessThanOrEqual(2);
    expect(restarts).toBeGreaterThanOrEqual(3);
  } finally {
    done = true;
    worker!.kill('SIGTERM');
    await waitUntil(() => children.size === 0, { timeoutMs: 30_000 }).catch(() => worker.kill('SIGKILL'));
    await admin.deleteTopics({ topics: [topic, dlqTopic] }).catch(() => {});
    await rm(dir, { recursive: true, force: true });
  }
}, 300_000);
