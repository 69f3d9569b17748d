/**
 * Crash matrix: a consumer process is SIGKILLed at each pipeline point, again and again, and
 * restarted. Effects are counted in an external Redis ledger (test/support/crash-ledger.ts);
 * every record must complete (or be dead-lettered) exactly once, every outgoing message must be
 * delivered, and every extra run of the handler's non-idempotent effect must be explained by a
 * kill that caught that attempt between its effect and its completion.
 */
import { type ProcessedRecord, scopeKey } from '@exactly-once/core';
import { createRedisStore } from '@exactly-once/store-redis';
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
  type KafkaClientName,
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
import { dropLedger, type KillPoint, tallyLedger } from '../support/crash-ledger.js';
import type { CrashWorkerConfig } from './crash-worker.js';

const MESSAGES = Number(process.env.EO_CRASH_MESSAGES ?? 1000);
const KILLS = 3;
const PARTITIONS = 4;
const POINTS = (process.env.EO_CRASH_POINTS?.split(',') ?? [
  'after-begin',
  'in-handler',
  'after-complete',
  'after-publish',
  'before-commit',
  'mid-batch',
]) as Exclude<KillPoint, 'none' | 'before-ack'>[];

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
  if (redis) await dropStorePrefixes(redis);
  await redis?.quit();
});

/** spawnWorker only passes the config on; the worker reads it as a CrashWorkerConfig. */
const spawnCrashWorker = (config: CrashWorkerConfig, log: (line: string) => void) =>
  spawnWorker(config as WorkerConfig, log);

async function scenario(client: KafkaClientName, point: (typeof POINTS)[number]) {
  const topic = uniqueName(`crash-${point}`);
  const config: WorkerConfig = {
    client,
    topic,
    outTopic: `${topic}.out`,
    dlqTopic: `${topic}.dlq`,
    groupId: uniqueName('crash-group'),
    ledger: uniqueName('ledger'),
    storePrefix: storePrefix(),
  };
  await createTopics(admin, [topic, config.outTopic, config.dlqTopic], PARTITIONS);
  const ids = Array.from({ length: MESSAGES }, (_, i) => `${point}-${i}`);
  await produceOrders(kafka, topic, ids);
  // The worker's last lines, for the error when it exits by itself.
  const tail: string[] = [];
  const log = (line: string) => {
    tail.push(line);
    if (tail.length > 30) tail.shift();
    if (process.env.EO_TEST_VERBOSE) console.log(`[${client} ${point}] ${line}`);
  };

  let kills = 0;
  for (let run = 0; run < KILLS; run++) {
    // Commits are fewer than records; kill early enough that the kill really happens: at 3-15%
    // of the messages (30-150 of 1000), so three kills stay well inside the run. mid-batch counts
    // completeMany calls of >= 2 requests: a partition's handlers run one at a time, so its own
    // completes rarely meet in one turn, but those of the worker's partitions do (batches of up to
    // PARTITIONS), one call of >= 2 per 3-8 records (123 in 844 calls in a slow CI run): its n-th
    // event comes after up to ~8n records, so n stays at 5-25 and three kills fit in the topic.
    // librdkafka's KafkaJS layer fetches between batches, so batches of several partitions overlap
    // less and such calls are rare (9 in 989 in one run): there the kill comes at the first one,
    // and a worker may still drain the topic without meeting one (see the assertion below).
    const at = MESSAGES * (0.03 + Math.random() * 0.12);
    const midBatchAt = client === 'confluent' ? 1 : at / 6;
    const killAt =
      point === 'before-commit' ? 2 + run : Math.max(1, Math.round(point === 'mid-batch' ? midBatchAt : at));
    const child = spawnCrashWorker({ ...config, killPoint: point, killAt }, log);
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
      throw new Error(`worker exited unexpectedly at ${point} (${client}):\n${tail.join('\n')}`);
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
  const records = new Map<string, ProcessedRecord | undefined>();
  let completed = 0;
  let failed = 0;
  for (const id of ids) {
    const key = scopeKey('default', config.groupId, id);
    const rec = await store.get(key);
    records.set(key, rec);
    if (rec?.state === 'COMPLETED') completed++;
    else if (rec?.state === 'FAILED') failed++;
  }
  const l = await tallyLedger(redis, config.ledger, records);
  await dropLedger(redis, config.ledger);
  const deadLettered = await topicSize(admin, config.dlqTopic);
  const out = await readTopic(kafka, config.outTopic, (r) => distinctKeys(r) >= completed);
  return {
    point,
    row: {
      'kill point': point,
      messages: MESSAGES,
      kills,
      'kills logged': l.kills.length,
      'complete batches >= 2 / all': `${l.completeBatches.multi}/${l.completeBatches.calls} (max ${l.completeBatches.largest})`,
      'cut batch: completed': l.cutCompleted,
      'cut batch: not completed': l.cutNotCompleted,
      'handler starts': l.handlerStarts,
      'non-idempotent effects': l.applied,
      'extra runs': l.extraRuns,
      takeovers: l.takeovers,
      'takeovers after effect': l.reruns,
      'of killed delivery': l.rerunsOfKilled,
      'of in-flight neighbours': l.rerunsOfNeighbours,
      'idempotent effects': l.idempotentEffects,
      'duplicate effects': l.duplicateEffects,
      'double completions': l.doubleCompletions,
      completed,
      'dead-lettered': deadLettered,
      lost: MESSAGES - completed - failed,
      'outgoing records': out.length,
      'outgoing distinct': distinctKeys(out),
    },
    failed,
    problems: l.problems,
  };
}

describe.each(CLIENTS)(
  'crash matrix on %s (SIGKILL at every pipeline point, restart, external ledger)',
  (client) => {
    it('never duplicates an effect, re-runs only where a kill caught an effect, never loses a record', async () => {
      const results = await Promise.all(POINTS.map((p) => scenario(client, p)));
      table(
        `Kafka crash matrix (${client})`,
        results.map((r) => r.row),
      );
      for (const { row, failed, problems } of results) {
        const point = row['kill point'];
        expect(row.kills, `${point}: kills happened`).toBeGreaterThan(0);
        // A cut batch is the point of mid-batch: every kill found a batch of >= 2 to cut (the
        // halves below). On kafkajs such batches come every few records, so all three kills
        // happen; on confluent they are rare enough that the last worker may finish the topic
        // first, so there at least one kill is required.
        if (point === 'mid-batch' && client === 'kafkajs') expect(row.kills, 'mid-batch: kills').toBe(KILLS);
        expect(row['kills logged'], `${point}: every kill is in the ledger`).toBe(row.kills);
        expect(problems, `${point}: ledger and records disagree`).toEqual([]);
        // The non-idempotent count: every run beyond one per completed message is the re-run of an
        // attempt a kill caught after its effect — exactly, not at most.
        expect(row['extra runs'], `${point}: extra runs = re-runs of killed attempts`).toBe(
          row['takeovers after effect'],
        );
        // Of the deliveries the kills fired on, only in-handler ones had run their effect — and the
        // not-completed half of a cut batch: each had returned from its handler, so each is re-run
        // once, while the completed half never is (the ledger checks both per key).
        expect(row['of killed delivery'], `${point}: re-runs of the delivery killed`).toBe(
          point === 'in-handler' ? row.kills : point === 'mid-batch' ? row['cut batch: not completed'] : 0,
        );
        if (point === 'mid-batch') {
          const smaller = Math.min(row['cut batch: completed'], row['cut batch: not completed']);
          expect(smaller, 'mid-batch: keys per half').toBeGreaterThanOrEqual(row.kills);
        } else {
          expect(row['cut batch: completed'] + row['cut batch: not completed'], `${point}: keys cut`).toBe(0);
        }
        expect(row['duplicate effects'], `${point}: duplicate effects`).toBe(0);
        expect(row['double completions'], `${point}: double completions`).toBe(0);
        expect(row.lost, `${point}: lost`).toBe(0);
        expect(row['dead-lettered'], `${point}: dead-lettered`).toBe(failed);
        expect(row['idempotent effects']).toBeGreaterThanOrEqual(row.completed);
        if (failed === 0) expect(row['idempotent effects'], `${point}: idempotent effects`).toBe(MESSAGES);
        expect(row['outgoing distinct'], `${point}: outgoing delivered`).toBe(row.completed);
      }
    }, 300_000);
  },
);
