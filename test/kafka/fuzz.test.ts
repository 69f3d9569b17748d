/**
 * Fuzzing the Kafka consumer through the real broker: 1,000 generated records (see
 * ../support/fuzz-inputs.ts) with identity headers as strings or bytes (UTF-8 or not, empty,
 * huge, with NULs), repeated in the record or present twice in different letter case, forged
 * `x-eo-*` (attempt, error reason, original topic/offset, retry-at, broker id) and trace headers,
 * noise headers, odd record keys (null, empty, binary, 10 KiB), and values that are null
 * (tombstones), empty, not UTF-8, not JSON, the wrong shape, nested too deep or 1 MiB; some valid
 * ones mixed in.
 *
 * All are produced, then one consumer takes them. Each must end exactly once: a valid one as one
 * handler effect under its own key, any other as one dead letter whose `x-eo-error-class` is an
 * ExactlyOnceError subclass and whose `x-eo-error-code` is the one the case was built to hit.
 * Nothing crashes (no unhandled rejection), every offset is committed, and the stats balance.
 *
 * Seed: EO_FUZZ_SEED (default fixed, printed in the test name).
 */
import { propagation, trace } from '@opentelemetry/api';
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from '@opentelemetry/core';
import { BasicTracerProvider } from '@opentelemetry/sdk-trace-base';
import * as core from '@exactly-once/core';
import { createConsumer } from '@exactly-once/kafka';
import { createRedisStore } from '@exactly-once/store-redis';
import type { Redis } from 'ioredis';
import type { Admin, IHeaders, Kafka, Message } from 'kafkajs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ERROR_CLASS_OF_CODE,
  type Expected,
  FUZZ_ID,
  type FuzzCase,
  type FuzzPayload,
  fuzzCases,
  tally,
  validateFuzzPayload,
} from '../support/fuzz-inputs.js';
import { dropRedisPrefix } from '../support/redis.js';
import {
  fastGroup,
  fullyCommitted,
  newKafka,
  newRedis,
  quietLogger,
  type ReadRecord,
  readTopic,
  uniqueName,
  waitUntil,
} from './helpers.js';

const SEED = Number(process.env.EO_FUZZ_SEED ?? 20260412);
const COUNT = Number(process.env.EO_FUZZ_COUNT ?? 1000);
const PARTITIONS = 3;
/** Room for 1 MiB values with 10 KiB headers, and their dead-letter copies. */
const MAX_MESSAGE_BYTES = String(8 * 1024 * 1024);

/** Every ExactlyOnceError subclass core exports, by class name. */
const LIBRARY_ERRORS = new Set(
  Object.values(core)
    .filter(
      (v): v is typeof core.ExactlyOnceError =>
        typeof v === 'function' && v.prototype instanceof core.ExactlyOnceError,
    )
    .map((c) => c.name),
);
const ERROR_CODES = new Set<string>(Object.values(core.ErrorCode));

let kafka: Kafka;
let admin: Admin;
let redis: Redis;
const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown) => unhandled.push(reason);

beforeAll(async () => {
  process.on('unhandledRejection', onUnhandled);
  process.on('uncaughtException', onUnhandled);
  // Trace headers are parsed for real: W3C trace context and baggage, recording spans.
  trace.setGlobalTracerProvider(new BasicTracerProvider());
  propagation.setGlobalPropagator(
    new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] }),
  );
  kafka = newKafka('fuzz-test');
  admin = kafka.admin();
  await admin.connect();
  redis = newRedis();
});

afterAll(async () => {
  process.off('unhandledRejection', onUnhandled);
  process.off('uncaughtException', onUnhandled);
  trace.disable();
  propagation.disable();
  await admin?.disconnect();
  await redis?.quit();
});

/** Topics whose records may be 8 MiB (the broker default is about 1 MB). */
async function createBigTopics(topics: string[]): Promise<void> {
  await admin.createTopics({
    topics: topics.map((topic) => ({
      topic,
      numPartitions: PARTITIONS,
      configEntries: [{ name: 'max.message.bytes', value: MAX_MESSAGE_BYTES }],
    })),
    waitForLeaders: false,
  });
  await waitUntil(
    async () => {
      const { topics: meta } = await admin.fetchTopicMetadata({ topics });
      return meta.every(
        (t) => t.partitions.length === PARTITIONS && t.partitions.every((p) => p.leader >= 0),
      );
    },
    { message: `leaders of ${topics.join(', ')}` },
  );
}

function toMessage(c: FuzzCase): Message {
  return { key: c.recordKey, value: c.body, headers: c.headers as IHeaders };
}

/** Produces every case, in requests of at most about 512 KiB (a 1 MiB value goes alone). */
async function produceAll(topic: string, cases: readonly FuzzCase[]): Promise<void> {
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  try {
    let batch: Message[] = [];
    let bytes = 0;
    const flush = async () => {
      if (batch.length > 0) await producer.send({ topic, acks: -1, messages: batch });
      batch = [];
      bytes = 0;
    };
    for (const c of cases) {
      const size = (c.body?.length ?? 0) + 32 * 1024;
      if (bytes + size > 512 * 1024) await flush();
      batch.push(toMessage(c));
      bytes += size;
    }
    await flush();
  } finally {
    await producer.disconnect();
  }
}

describe('kafka: fuzzed records', () => {
  it(`${COUNT} generated records (seed ${SEED}): each processed once or dead-lettered with a library reason`, async () => {
    const topic = uniqueName('fuzz');
    const dlq = `${topic}.dlq`;
    const groupId = uniqueName('fuzz-group');
    const prefix = uniqueName('eo-fuzz');
    const cases = fuzzCases('kafka', SEED, COUNT, topic);
    const byId = new Map(cases.map((c) => [c.id, c]));
    console.log(`kafka fuzz: seed ${SEED} (EO_FUZZ_SEED=${SEED} replays it), ${cases.length} records`);
    console.table([tally(cases, (c) => c.expected)]);
    await createBigTopics([topic, dlq]);
    await produceAll(topic, cases);

    // Handler effects, never deduplicated: fuzz id -> runs that succeeded, and message key -> runs.
    const effects = new Map<string, number>();
    const effectsByKey = new Map<string, number>();
    const handlerRuns = new Map<string, number>();
    const consumer = createConsumer<FuzzPayload>({
      kafka,
      groupId,
      topics: [topic],
      deadLetter: { topic: dlq },
      store: createRedisStore({ client: redis, keyPrefix: prefix }),
      fromBeginning: true,
      consumerConfig: fastGroup,
      logger: process.env.EO_FUZZ_LOG ? console : quietLogger,
      retry: { maxAttempts: 3, initialDelayMs: 20, maxDelayMs: 50 },
      validate: validateFuzzPayload,
      handler: (payload, ctx) => {
        const id = ctx.headers[FUZZ_ID] ?? '(no fuzz id)';
        handlerRuns.set(id, (handlerRuns.get(id) ?? 0) + 1);
        if (payload.action === 'permanent') throw new core.PermanentError('fuzz: permanent');
        if (payload.action === 'non-retryable')
          throw Object.assign(new Error('fuzz: no'), { retryable: false });
        if (payload.action === 'retryable') throw new Error('fuzz: try again');
        effects.set(id, (effects.get(id) ?? 0) + 1);
        effectsByKey.set(ctx.key, (effectsByKey.get(ctx.key) ?? 0) + 1);
        return { n: payload.n };
      },
    });
    await consumer.start();
    try {
      await waitUntil(() => consumer.stats.acked + consumer.stats.deadLettered >= cases.length, {
        // Failing only when nothing settles for 30 s: a loaded machine is slow, not stuck.
        progress: () => consumer.stats.acked + consumer.stats.deadLettered,
        message: () => `${cases.length} settled (${JSON.stringify(consumer.stats)})`,
      });
      await waitUntil(() => fullyCommitted(admin, groupId, topic), { message: 'all committed' });
      const letters = await readTopic(kafka, dlq, (r) => r.length >= consumer.stats.deadLettered);

      // Every input exactly once: one effect, or one dead letter.
      const outcome = new Map<string, Expected>();
      const problems: string[] = [];
      const seen = (id: string, what: Expected) => {
        if (outcome.has(id)) problems.push(`${id}: ${what} after ${outcome.get(id)}`);
        outcome.set(id, what);
      };
      for (const [id, n] of effects) {
        if (n !== 1) problems.push(`${id}: ${n} handler effects`);
        seen(id, 'processed');
      }
      for (const r of letters) problems.push(...checkLetter(r, topic, groupId, seen));
      for (const c of cases) {
        const got = outcome.get(c.id);
        if (got === undefined) problems.push(`${describeCase(c)}: neither processed nor dead-lettered`);
        else if (got !== c.expected) problems.push(`${describeCase(c)}: ${got}`);
      }
      for (const [key, n] of effectsByKey)
        if (n !== 1) problems.push(`key ${JSON.stringify(key)}: ${n} effects`);
      expect(problems.slice(0, 20), `${problems.length} problems`).toEqual([]);

      const processed = cases.filter((c) => c.expected === 'processed').length;
      expect(effects.size).toBe(processed);
      expect(letters).toHaveLength(cases.length - processed);
      // Only valid bodies and keys reach the handler; retryable ones ran maxAttempts times.
      for (const [id, runs] of handlerRuns) {
        expect(runs, `${id} runs`).toBe(byId.get(id)?.expected === core.ErrorCode.AttemptsExhausted ? 3 : 1);
      }

      console.table([tally(letters, (r) => r.headers['x-eo-error-code'] ?? '(none)')]);
      console.table([{ ...consumer.stats, byOutcome: JSON.stringify(consumer.stats.byOutcome) }]);
      const s = consumer.stats;
      expect(s.acked).toBe(processed);
      expect(s.deadLettered).toBe(cases.length - processed);
      expect(s.retried).toBe(cases.filter((c) => c.expected === core.ErrorCode.AttemptsExhausted).length * 2);
      // A record fetched again after a pause counts again; without pauses, once.
      if (s.paused === 0) expect(s.received).toBe(cases.length);
      expect(s.abandoned).toBe(0);
      expect(s.inFlight).toBe(0);
      expect(unhandled).toEqual([]);
    } finally {
      await consumer.stop();
      await admin.deleteTopics({ topics: [topic, dlq] }).catch(() => {});
      await dropRedisPrefix(redis, prefix);
    }
  }, 300_000);
});

describe('kafka: a header named like an Object.prototype member', () => {
  // Found by the fuzz test (seeds 2 and 3): kafkajs decodes a header named `toString` (`valueOf`,
  // `constructor`, ...) as `[Object.prototype.toString, <Buffer>]`; building the dead-letter copy
  // threw on the function, the record counted as abandoned and its partition looped forever.
  it('dead-letters a keyless record with a `toString` header', async () => {
    const topic = uniqueName('fuzz-proto');
    const dlq = `${topic}.dlq`;
    const groupId = uniqueName('fuzz-proto-group');
    const prefix = uniqueName('eo-fuzz');
    await createBigTopics([topic, dlq]);
    const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    await producer.send({ topic, acks: -1, messages: [{ value: '{}', headers: { toString: 'x' } }] });
    await producer.disconnect();
    const consumer = createConsumer({
      kafka,
      groupId,
      topics: [topic],
      deadLetter: { topic: dlq },
      store: createRedisStore({ client: redis, keyPrefix: prefix }),
      fromBeginning: true,
      consumerConfig: fastGroup,
      logger: quietLogger,
      handler: () => {},
    });
    await consumer.start();
    try {
      await waitUntil(() => consumer.stats.deadLettered === 1, {
        timeoutMs: 10_000,
        message: () => `the dead letter (${JSON.stringify(consumer.stats)})`,
      });
    } finally {
      await consumer.stop();
      await admin.deleteTopics({ topics: [topic, dlq] }).catch(() => {});
      await dropRedisPrefix(redis, prefix);
    }
  });
});

/** Checks a dead letter's reason and origin headers; returns what is wrong with it. */
function checkLetter(
  r: ReadRecord,
  topic: string,
  groupId: string,
  seen: (id: string, what: Expected) => void,
): string[] {
  const id = r.headers[FUZZ_ID];
  if (id === undefined) return [`a dead letter without ${FUZZ_ID}`];
  const one = (name: string) => {
    const all = r.headerValues[name] ?? [];
    return all.length === 1 ? all[0] : undefined;
  };
  // The reason headers replace forged ones of the same name: exactly one value each.
  const cls = one('x-eo-error-class');
  const code = one('x-eo-error-code');
  const problems: string[] = [];
  if (!cls || !LIBRARY_ERRORS.has(cls)) problems.push(`${id}: dead-letter class ${JSON.stringify(cls)}`);
  if (!code || !ERROR_CODES.has(code)) problems.push(`${id}: dead-letter code ${JSON.stringify(code)}`);
  else if (ERROR_CLASS_OF_CODE[code as core.ErrorCode] !== cls)
    problems.push(`${id}: ${cls} with code ${code}`);
  if (!one('x-eo-error-message')) problems.push(`${id}: no error message`);
  if (one('x-eo-consumer') !== groupId) problems.push(`${id}: x-eo-consumer ${r.headers['x-eo-consumer']}`);
  if (one('x-eo-original-destination') !== topic) problems.push(`${id}: original destination`);
  seen(id, (code ?? '(none)') as Expected);
  return problems;
}

function describeCase(c: FuzzCase): string {
  return `${c.id} [${c.labels.join(' ')}] expected ${c.expected}`;
}
