/**
 * `exactly-once dlq list|show|replay` on Kafka, with records dead-lettered by a real consumer
 * whose handler throws a PermanentError: reason headers, a replay by offset that is dead-lettered
 * again as PreviouslyFailedError, and `--reset-key` making the replay processed.
 */
import { PermanentError, recordKeyFor } from '@exactly-once/core';
import {
  createConsumer,
  createProducer,
  type ExactlyOnceProducer,
  type KafkaConsumer,
} from '@exactly-once/kafka';
import { createRedisStore } from '@exactly-once/store-redis';
import type { Admin, Kafka } from 'kafkajs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  clientKafka,
  createTopics,
  fastGroup,
  newKafka,
  newRedis,
  quietLogger,
  readTopic,
  topicSize,
} from '../kafka/helpers.js';
import { env, uniqueName } from '../support/env.js';
import { dropRedisPrefix } from '../support/redis.js';
import { waitUntil } from '../support/wait.js';
import { cli, cliJson, cliText } from './helpers.js';

interface Letter {
  id: string;
  key?: string;
  reason: { errorClass?: string; errorCode?: string; errorMessage?: string; consumer?: string };
  unusableKey?: string;
  origin: { destination?: string; partition?: string; offset?: string };
  kafka: { key: string | null; partition: number; offset: string };
}

const redis = newRedis();
const topic = uniqueName('cli-orders');
const dlq = `${topic}.dlq`;
const groupId = uniqueName('cli-billing');
const keyPrefix = uniqueName('eot-cli');
const store = createRedisStore({ client: redis, keyPrefix });
const failing = new Set(['a']);
const handled: string[] = [];
let kafka: Kafka;
let admin: Admin;
let consumer: KafkaConsumer;
let producer: ExactlyOnceProducer;
const brokers = ['--kafka', env.kafkaBrokers.join(',')];

beforeAll(async () => {
  kafka = newKafka('cli-dlq-test');
  admin = kafka.admin();
  await admin.connect();
  await createTopics(admin, [topic, dlq], 1);
  consumer = createConsumer<{ id: string }>({
    kafka,
    groupId,
    topics: [topic],
    deadLetter: { topic: dlq },
    store,
    fromBeginning: true,
    consumerConfig: fastGroup,
    logger: quietLogger,
    retentionCheck: 'off',
    handler: (p, ctx) => {
      handled.push(`${p.id}:${ctx.key}`);
      if (failing.has(p.id)) throw new PermanentError(`card declined for ${p.id}`);
      return { ok: p.id };
    },
  });
  await consumer.start();
  producer = createProducer({ kafka });
  for (const id of ['a', 'b'])
    await producer.send(topic, { id }, { key: `order-${id}`, idempotencyKey: `key-${id}` });
  await waitUntil(async () => (await topicSize(admin, dlq)) === 1 && handled.length === 2, {
    message: 'one dead letter',
    timeoutMs: 90_000,
  });
}, 180_000);

afterAll(async () => {
  await consumer?.stop();
  await producer?.disconnect();
  await admin?.deleteTopics({ topics: [topic, dlq] }).catch(() => undefined);
  await admin?.disconnect();
  await dropRedisPrefix(redis, `${keyPrefix}:`);
  await redis.quit();
});

describe('dlq on Kafka', () => {
  it('list and show: the dead-lettered record with its reason headers, key and value', async () => {
    const out = await cliJson<{ total: number; letters: Letter[] }>(['dlq', 'list', dlq, ...brokers]);
    expect(out.total).toBe(1);
    expect(out.letters).toHaveLength(1);
    expect(out.letters[0]).toMatchObject({
      id: '0:0',
      key: 'key-a',
      reason: {
        errorClass: 'PermanentError',
        errorCode: 'PERMANENT',
        errorMessage: 'card declined for a',
        consumer: groupId,
      },
      origin: { destination: topic, partition: '0', offset: '0' },
      kafka: { key: 'order-a', partition: 0, offset: '0' },
    });
    const text = await cliText(['dlq', 'list', dlq, ...brokers]);
    expect(text).toContain(`Kafka topic ${dlq}: 1 dead letter(s)`);
    expect(text).toMatch(/0:0\s+\S+\s+\S+\s+PERMANENT\s+PermanentError\s+key-a\s+card declined for a/);
    const shown = await cliJson<Letter & { body: string; headers: Record<string, string> }>([
      'dlq',
      'show',
      dlq,
      '0:0',
      ...brokers,
    ]);
    expect(JSON.parse(shown.body)).toEqual({ id: 'a' });
    expect(shown.headers['x-eo-original-topic']).toBe(topic);
    const shownText = await cliText(['dlq', 'show', dlq, '0:0', ...brokers]);
    expect(shownText).toMatch(/kafka key\s+order-a/);
    const missing = await cli(['dlq', 'show', dlq, '0:7', ...brokers]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/no record there/);
  });

  it('show: a repeated header shows every value, apart from one value that looks like a list; non-UTF-8 bytes show as hex; a tombstone is not an empty value', async () => {
    const letters = uniqueName('cli-letters');
    await createTopics(admin, [letters], 1);
    try {
      const raw = kafka.producer();
      await raw.connect();
      await raw.send({
        topic: letters,
        messages: [
          {
            value: '{}',
            headers: {
              'x-idempotency-key': ['key-a', 'key-b'],
              'x-request-id': ['r-1', 'r-2'],
              'x-tenant': ['a', 'b'],
              bin: Buffer.from([0xff, 0x01]),
            },
          },
          { value: '{}', headers: { 'x-tenant': '["a","b"]', 'x-request-id': 'r-3' } },
          { value: null, headers: {} },
          { value: '', headers: {} },
        ],
      });
      await raw.disconnect();
      type Shown = Letter & {
        headers: Record<string, unknown>;
        requestId?: string;
        unusableRequestId?: string;
        body: string | null;
        bytes: number;
      };
      const show = (id: string) => cliJson<Shown>(['dlq', 'show', letters, id, ...brokers]);
      const [repeated, single, tombstone, empty] = await Promise.all(['0:0', '0:1', '0:2', '0:3'].map(show));
      // Only the last value shown made a letter refused for two keys look like one with a valid key;
      // then a JSON text of the values made it look like one value that reads as a list.
      expect(repeated?.headers['x-idempotency-key']).toEqual(['key-a', 'key-b']);
      expect(repeated?.headers['x-tenant']).toEqual(['a', 'b']);
      expect(single?.headers['x-tenant']).toBe('["a","b"]');
      expect(repeated?.headers.bin).toBe('hex:ff01');
      // Refused by the consumer (INVALID_KEY) as a repeated header: not a request id here either.
      expect(repeated?.requestId).toBeUndefined();
      expect(repeated?.unusableRequestId).toMatch(/x-request-id/);
      expect(single?.requestId).toBe('r-3');
      const text = await cliText(['dlq', 'show', letters, '0:0', ...brokers]);
      expect(text).toMatch(/request id\s+\(unusable: /);
      expect(text).toMatch(/x-tenant\s+\[1\/2\] a/);
      expect(text).toMatch(/x-tenant\s+\[2\/2\] b/);
      expect(tombstone?.body).toBeNull();
      expect(empty?.body).toBe('');
      expect(await cliText(['dlq', 'show', letters, '0:2', ...brokers])).toContain(
        'body (no value: a tombstone)',
      );
      expect(await cliText(['dlq', 'show', letters, '0:3', ...brokers])).toContain('body (0 B)');
    } finally {
      await admin.deleteTopics({ topics: [letters] }).catch(() => undefined);
    }
  });

  it('a topic written in transactions: offsets holding only an aborted record or a commit marker read as no letter, not as a read that never ends', async () => {
    const letters = uniqueName('cli-tx-letters');
    await createTopics(admin, [letters], 1);
    const writer = kafka.producer({
      transactionalId: uniqueName('cli-tx'),
      idempotent: true,
      maxInFlightRequests: 1,
    });
    await writer.connect();
    try {
      const write = async (values: string[], commit: boolean) => {
        const tx = await writer.transaction();
        await tx.send({ topic: letters, messages: values.map((value) => ({ value })) });
        await (commit ? tx.commit() : tx.abort());
      };
      // Offsets: 0-1 committed, 2 their commit marker, 3-4 aborted, 5 the abort marker, 6 committed, 7 its marker.
      await write(['{"n":0}', '{"n":1}'], true);
      await write(['{"n":3}', '{"n":4}'], false);
      await write(['{"n":6}'], true);
      // Before, each read below waited for a batch kafkajs never hands over (one of filtered records
      // only) and failed after its 60 s timeout.
      const listed = await cliJson<{ letters: Letter[] }>(['dlq', 'list', letters, ...brokers]);
      expect(listed.letters.map((l) => l.id)).toEqual(['0:0', '0:1', '0:6']);
      const aborted = await cli(['dlq', 'show', letters, '0:4', ...brokers]);
      expect(aborted.code, aborted.stderr).toBe(1);
      expect(aborted.stderr).toMatch(/no dead letter "0:4"/);
      const marker = await cli(['dlq', 'show', letters, '0:7', ...brokers]);
      expect(marker.code, marker.stderr).toBe(1);
      expect(marker.stderr).toMatch(/no dead letter "0:7"/);
      const range = await cli(['dlq', 'replay', letters, '0:2-5', '--to', letters, ...brokers]);
      expect(range.code, range.stderr).toBe(1);
      expect(range.stderr).toMatch(/no dead letter 0:2-5 to replay/);
      // A transaction still open at the end: its records (offset 8 on) are not read until it ends.
      const open = await writer.transaction();
      await open.send({ topic: letters, messages: [{ value: '{"n":8}' }] });
      try {
        const whileOpen = await cliJson<{ letters: Letter[] }>(['dlq', 'list', letters, ...brokers]);
        expect(whileOpen.letters.map((l) => l.id)).toEqual(['0:0', '0:1', '0:6']);
      } finally {
        await open.abort();
      }
    } finally {
      await writer.disconnect();
      await admin.deleteTopics({ topics: [letters] }).catch(() => undefined);
    }
  }, 150_000);

  it('letters with odd key headers: a header without a value, an empty key, a key holding U+FFFD', async () => {
    const letters = uniqueName('cli-odd-letters');
    const target = uniqueName('cli-odd-target');
    await createTopics(admin, [letters, target], 1);
    try {
      // librdkafka writes an empty Buffer as a header without a value (null), as the Kafka
      // adapter's copies on that client once did: the replay failed on it ("Received null").
      const native = clientKafka('confluent', 'cli-null-header').producer();
      await native.connect();
      await native.sendBatch({
        topicMessages: [
          {
            topic: letters,
            messages: [
              {
                value: '{"n":0}',
                headers: { 'x-idempotency-key': Buffer.alloc(0), 'x-eo-error-code': 'KEY_MISSING' },
              },
            ],
          },
        ],
      });
      await native.disconnect();
      const raw = kafka.producer();
      await raw.connect();
      await raw.send({
        topic: letters,
        messages: [
          { value: '{"n":1}', headers: { 'x-idempotency-key': '', 'x-eo-error-code': 'KEY_MISSING' } },
          {
            value: '{"n":2}',
            headers: { 'x-idempotency-key': 'k\uFFFDx', 'x-eo-error-code': 'INVALID_KEY' },
          },
        ],
      });
      await raw.disconnect();

      const nullShown = await cliText(['dlq', 'show', letters, '0:0', ...brokers]);
      expect(nullShown).toMatch(/key\s+\(none\)/);
      expect(nullShown).toMatch(/x-idempotency-key\s+\(no value\)/);
      const nullJson = await cliJson<{ headers: Record<string, string | null> }>([
        'dlq',
        'show',
        letters,
        '0:0',
        ...brokers,
      ]);
      expect(nullJson.headers['x-idempotency-key']).toBeNull();
      // The consumer read U+FFFD as bytes that were not UTF-8 and refused the key: not a key here.
      const odd = await cliJson<Letter>(['dlq', 'show', letters, '0:2', ...brokers]);
      expect(odd.key).toBeUndefined();
      expect(odd.unusableKey).toMatch(/U\+FFFD/);
      expect(await cliText(['dlq', 'list', letters, ...brokers])).toMatch(/0:2 .*\(unusable\)/);

      const replay = await cli(['dlq', 'replay', letters, '--all', '--to', target, ...brokers]);
      expect(replay.code, replay.stderr).toBe(0);
      expect(replay.stdout).toMatch(/0:0\s+-\s/);
      expect(replay.stdout).toMatch(/0:1\s+""\s/);
      expect(replay.stdout).toMatch(/0:2\s+\(unusable\)\s/);
      expect(replay.stderr).toContain('replayed 0:2 (unusable key)');
      const copies = await readTopic(kafka, target, (r) => r.length >= 3);
      // The header without a value goes out present and empty (no producer takes a null one).
      expect(copies.map((c) => c.headerValues['x-idempotency-key'])).toEqual([[''], [''], ['k\uFFFDx']]);
    } finally {
      await admin.deleteTopics({ topics: [letters, target] }).catch(() => undefined);
    }
  });

  it('replay by offset without --reset-key: dead-lettered again as PREVIOUSLY_FAILED', async () => {
    const out = await cliJson<{ results: unknown[] }>(['dlq', 'replay', dlq, '0:0', ...brokers]);
    expect(out.results).toEqual([{ id: '0:0', key: 'key-a', to: topic, replayed: true }]);
    await waitUntil(async () => (await topicSize(admin, dlq)) === 2, { message: 'second dead letter' });
    const again = await cliJson<Letter>(['dlq', 'show', dlq, '0:1', ...brokers]);
    expect(again).toMatchObject({
      key: 'key-a',
      reason: {
        errorCode: 'PREVIOUSLY_FAILED',
        errorClass: 'PreviouslyFailedError',
        originalErrorCode: 'PERMANENT',
      },
      kafka: { key: 'order-a' },
    });
    expect(handled.filter((h) => h.startsWith('a:'))).toHaveLength(1);
  });

  it('replay --reset-key: clears the FAILED record and the replay is processed', async () => {
    failing.delete('a');
    const run = await cli([
      'dlq',
      'replay',
      dlq,
      '0:0',
      '--reset-key',
      '--redis',
      env.redisUrl,
      '--redis-prefix',
      keyPrefix,
      ...brokers,
      '--json',
    ]);
    expect(run.code).toBe(0);
    // The operator is told that the replay runs the handler's steps again.
    expect(run.stderr).toContain('its steps run again');
    const out = JSON.parse(run.stdout) as { results: unknown[] };
    expect(out.results).toEqual([{ id: '0:0', key: 'key-a', to: topic, reset: 'cleared', replayed: true }]);
    // A line per letter as it goes (stderr is not a terminal here): a killed replay leaves a record.
    expect(run.stderr).toContain(`replayed 0:0 (key "key-a") to ${topic}, key cleared\n`);
    await waitUntil(
      async () => (await store.get(recordKeyFor({ consumer: groupId, key: 'key-a' })))?.state === 'COMPLETED',
      { message: 'key-a completed', timeoutMs: 60_000 },
    );
    expect(handled.filter((h) => h.startsWith('a:'))).toEqual(['a:key-a', 'a:key-a']);
    expect(await topicSize(admin, dlq)).toBe(2);
    // The topic holds what was replayed; the source topic got the copies with the original Kafka key.
    const text = await cliText(['dlq', 'list', dlq, ...brokers]);
    expect(text).toContain(`Kafka topic ${dlq}: 2 dead letter(s)`);
  });

  it('--code lists and replays only the letters with those codes', async () => {
    // The topic holds key-a's PERMANENT letter (0:0) and its PREVIOUSLY_FAILED copy (0:1).
    const listed = await cliJson<{ total: number; letters: Letter[] }>([
      'dlq',
      'list',
      dlq,
      '--code',
      'PREVIOUSLY_FAILED',
      ...brokers,
    ]);
    expect(listed.total).toBe(2);
    expect(listed.letters.map((l) => l.id)).toEqual(['0:1']);
    const target = uniqueName('cli-coded');
    await createTopics(admin, [target], 1);
    try {
      const out = await cliJson<{ results: { id: string; to: string; replayed: boolean }[] }>([
        'dlq',
        'replay',
        dlq,
        '--all',
        '--code',
        'PREVIOUSLY_FAILED/PERMANENT',
        '--to',
        target,
        ...brokers,
      ]);
      expect(out.results.map((r) => [r.id, r.to, r.replayed])).toEqual([['0:1', target, true]]);
      expect(await topicSize(admin, target)).toBe(1);
      const byId = await cli(['dlq', 'replay', dlq, '0:0', '--code', 'ATTEMPTS_EXHAUSTED', ...brokers]);
      expect(byId.code).toBe(1);
      expect(byId.stderr).toMatch(/no dead letter 0:0 with code ATTEMPTS_EXHAUSTED to replay/);
    } finally {
      await admin.deleteTopics({ topics: [target] }).catch(() => undefined);
    }
  });

  it('warns when the topic named holds no dead letters (the work topic named by mistake)', async () => {
    const work = await cli(['dlq', 'list', topic, ...brokers]);
    expect(work.code, work.stderr).toBe(0);
    expect(work.stderr).toMatch(
      /warning: none of the \d+ message\(s\) read .* carries the x-eo-\* reason headers/,
    );
    const letters = await cli(['dlq', 'list', dlq, ...brokers]);
    expect(letters.stderr).not.toMatch(/warning/);
  });

  it('usage and connection errors', async () => {
    const badId = await cli(['dlq', 'replay', dlq, 'zero', ...brokers]);
    expect(badId.code).toBe(2);
    expect(badId.stderr).toMatch(/is not <partition>:<offset>/);
    const inverted = await cli(['dlq', 'replay', dlq, '0:5-3', ...brokers]);
    expect(inverted.code).toBe(2);
    expect(inverted.stderr).toMatch(/the range ends before it starts/);
    const both = await cli(['dlq', 'list', dlq, ...brokers, '--amqp', env.amqpUrl]);
    expect(both.code).toBe(2);
    const noTopic = await cli(['dlq', 'list', uniqueName('absent'), ...brokers]);
    expect(noTopic.code).toBe(1);
    expect(noTopic.stderr).toMatch(/no such topic|This server does not host/);
    const badBrokers = await cli(['dlq', 'list', dlq, '--kafka', 'localhost']);
    expect(badBrokers.code).toBe(1);
    expect(badBrokers.stderr).toMatch(/"localhost" is not host:port/);
  });
});
