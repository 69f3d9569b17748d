/**
 * `exactly-once dlq list|show|replay` on RabbitMQ, with letters dead-lettered by a real consumer
 * whose handler throws a PermanentError: the reason headers, a replay that is dead-lettered again
 * as PreviouslyFailedError (its record is FAILED), and `--reset-key` making the replay processed.
 */
import { PermanentError, recordKeyFor } from '@exactly-once/core';
import {
  createConsumer,
  createPublisher,
  type RabbitConsumer,
  type RabbitPublisher,
} from '@exactly-once/rabbitmq';
import { createRedisStore } from '@exactly-once/store-redis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newRedis, queuesOf, rawChannel } from '../rabbitmq/helpers.js';
import { env, uniqueName } from '../support/env.js';
import { dropRedisPrefix } from '../support/redis.js';
import { waitUntil } from '../support/wait.js';
import { cli, cliJson, cliText } from './helpers.js';

interface Letter {
  id: string;
  key?: string;
  reason: {
    errorClass?: string;
    errorCode?: string;
    errorMessage?: string;
    consumer?: string;
    attempts?: string;
  };
  origin: { exchange?: string; routingKey?: string; destination?: string };
}

const redis = newRedis();
const delays = [50];
const queue = uniqueName('cli-orders');
const dlq = `${queue}.dlq`;
const consumerName = uniqueName('cli-billing');
const keyPrefix = uniqueName('eot-cli');
const store = createRedisStore({ client: redis, keyPrefix });
const failing = new Set(['a', 'b', 'd', 'x']);
const handled: string[] = [];
let consumer: RabbitConsumer;
let publisher: RabbitPublisher;
let raw: Awaited<ReturnType<typeof rawChannel>>;
const amqp = ['--amqp', env.amqpUrl];
/**
 * Waits for the dead-letter queue to hold `n` letters: a command hands the letters it read back
 * when its channel closes, and a quorum queue requeues them a moment after the command exits.
 */
const lettersBack = (n: number) =>
  waitUntil(async () => (await raw.count(dlq)) === n, { message: `${n} letter(s) back in ${dlq}` });

beforeAll(async () => {
  raw = await rawChannel();
  consumer = createConsumer<{ id: string }>({
    connection: env.amqpUrl,
    queue,
    consumer: consumerName,
    store,
    retryDelaysMs: delays,
    retentionCheck: 'off',
    handler: (p, ctx) => {
      handled.push(`${p.id}:${ctx.key}`);
      if (failing.has(p.id)) throw new PermanentError(`card declined for ${p.id}`);
      return { ok: p.id };
    },
  });
  await consumer.start();
  publisher = createPublisher({ connection: env.amqpUrl });
  for (const id of ['a', 'b', 'c']) await publisher.send(queue, { id }, { idempotencyKey: `key-${id}` });
  await waitUntil(async () => (await raw.count(dlq)) === 2 && handled.length === 3, {
    message: 'two dead letters',
  });
});

afterAll(async () => {
  await consumer?.stop();
  await publisher?.close();
  await raw?.deleteQueues([...queuesOf(queue, delays)]);
  await raw?.close();
  await dropRedisPrefix(redis, `${keyPrefix}:`);
  await redis.quit();
});

describe('dlq on RabbitMQ', () => {
  it('list: the dead letters with their reason headers, and leaves them in the queue', async () => {
    const out = await cliJson<{ total: number; letters: Letter[] }>(['dlq', 'list', dlq, ...amqp]);
    expect(out.total).toBe(2);
    expect(out.letters.map((l) => l.id).sort()).toEqual(['key-a', 'key-b']);
    const a = out.letters.find((l) => l.id === 'key-a');
    expect(a).toMatchObject({
      key: 'key-a',
      reason: {
        errorClass: 'PermanentError',
        errorCode: 'PERMANENT',
        errorMessage: 'card declined for a',
        consumer: consumerName,
        attempts: '1',
      },
      origin: { exchange: '', routingKey: queue, destination: queue },
    });
    await lettersBack(2);
    // --bodies: the headers and body of each, as show gives them (a script tells letters apart).
    const withBodies = await cliJson<{ letters: (Letter & { body: string; bodyEncoding: string })[] }>([
      'dlq',
      'list',
      dlq,
      '--bodies',
      ...amqp,
    ]);
    const shown = await cliJson<{ headers: Record<string, unknown>; body: string }>([
      'dlq',
      'show',
      dlq,
      'key-b',
      ...amqp,
    ]);
    expect(withBodies.letters.find((l) => l.id === 'key-b')).toMatchObject({
      // Each read raises the quorum queue's delivery count.
      headers: { ...shown.headers, 'x-delivery-count': expect.any(String) },
      body: shown.body,
      bodyEncoding: 'utf8',
    });
    expect(out.letters.every((l) => !('body' in l))).toBe(true);
    const textOnly = await cli(['dlq', 'list', dlq, '--bodies', ...amqp]);
    expect(textOnly.code).toBe(2);
    expect(textOnly.stderr).toMatch(/--bodies needs --json/);
    const text = await cliText(['dlq', 'list', dlq, ...amqp]);
    expect(text).toContain(`RabbitMQ queue ${dlq}: 2 dead letter(s)`);
    expect(text).toMatch(/key-a\s+\S+\s+\S+\s+PERMANENT\s+PermanentError\s+key-a\s+card declined for a/);
  });

  it('show: one letter with its headers and body', async () => {
    const out = await cliJson<
      Letter & { headers: Record<string, string>; properties: Record<string, string>; body: string }
    >(['dlq', 'show', dlq, 'key-b', ...amqp]);
    expect(out).toMatchObject({ id: 'key-b', key: 'key-b', reason: { errorCode: 'PERMANENT' } });
    expect(JSON.parse(out.body)).toEqual({ id: 'b' });
    expect(out.headers['x-idempotency-key']).toBe('key-b');
    expect(out.headers['x-eo-original-destination']).toBe(queue);
    // The AMQP properties that are not headers too (an outside test missed a contentType).
    expect(out.properties).toMatchObject({ messageId: 'key-b' });
    const text = await cliText(['dlq', 'show', dlq, 'key-b', ...amqp]);
    expect(text).toMatch(/\nproperties\n(?: {2}\S+\s+\S.*\n)* {2}messageId\s+key-b\n/);
    expect(text).toMatch(/error\s+PermanentError \(PERMANENT\)/);
    expect(text).toMatch(new RegExp(`replays to\\s+${queue}`));
    expect(text).toContain('"id": "b"');
    const missing = await cli(['dlq', 'show', dlq, 'key-zzz', ...amqp]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/no dead letter "key-zzz"/);
  });

  it('replay without --reset-key: the FAILED record dead-letters it again (PREVIOUSLY_FAILED)', async () => {
    const out = await cliJson<{ results: { id: string; replayed: boolean; to: string }[] }>([
      'dlq',
      'replay',
      dlq,
      'key-a',
      ...amqp,
    ]);
    expect(out.results).toEqual([{ id: 'key-a', key: 'key-a', to: queue, replayed: true }]);
    const back = await waitUntil(
      async () => {
        const list = await cliJson<{ letters: Letter[] }>(['dlq', 'list', dlq, ...amqp]);
        return list.letters.find((l) => l.id === 'key-a' && l.reason.errorCode === 'PREVIOUSLY_FAILED');
      },
      { message: 'key-a dead-lettered again', timeoutMs: 60_000 },
    );
    expect(back.reason).toMatchObject({
      errorClass: 'PreviouslyFailedError',
      originalErrorCode: 'PERMANENT',
    });
    await lettersBack(2);
    expect(handled.filter((h) => h.startsWith('a:'))).toHaveLength(1);
  });

  it('replay --reset-key: clears the FAILED record, and the replay is processed', async () => {
    failing.delete('a');
    const run = await cli([
      'dlq',
      'replay',
      dlq,
      'key-a',
      '--reset-key',
      '--redis',
      env.redisUrl,
      '--redis-prefix',
      keyPrefix,
      ...amqp,
      '--json',
    ]);
    expect(run.code, run.stderr).toBe(0);
    const out = JSON.parse(run.stdout) as { results: unknown[] };
    expect(out.results).toEqual([{ id: 'key-a', key: 'key-a', to: queue, reset: 'cleared', replayed: true }]);
    // A line per letter as it goes (stderr is not a terminal here): a killed replay leaves a record.
    expect(run.stderr).toContain(`replayed key-a (key "key-a") to ${queue}, key cleared\n`);
    await waitUntil(
      async () =>
        (await store.get(recordKeyFor({ consumer: consumerName, key: 'key-a' })))?.state === 'COMPLETED',
      {
        message: 'key-a completed',
      },
    );
    expect(handled.filter((h) => h.startsWith('a:'))).toEqual(['a:key-a', 'a:key-a']);
    await lettersBack(1);
    const left = await cliJson<{ letters: Letter[] }>(['dlq', 'list', dlq, ...amqp]);
    expect(left.letters.map((l) => l.id)).toEqual(['key-b']);
  });

  it('usage and connection errors', async () => {
    const noIds = await cli(['dlq', 'replay', dlq, ...amqp]);
    expect(noIds.code).toBe(2);
    expect(noIds.stderr).toMatch(/give the ids to replay .* or --all/);
    const emptyId = await cli(['dlq', 'replay', dlq, '', ...amqp]);
    expect(emptyId.code).toBe(2);
    expect(emptyId.stderr).toMatch(/a dead letter id is empty/);
    const noStore = await cli(['dlq', 'replay', dlq, 'key-b', '--reset-key', ...amqp]);
    expect(noStore.code).toBe(2);
    expect(noStore.stderr).toMatch(/--reset-key needs the store/);
    const noBroker = await cli(['dlq', 'list', dlq]);
    expect(noBroker.code).toBe(2);
    const unknown = await cli(['dlq', 'replay', dlq, 'key-zzz', ...amqp]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/no dead letter key-zzz to replay/);
    const noQueue = await cli(['dlq', 'list', uniqueName('absent'), ...amqp]);
    expect(noQueue.code).toBe(1);
    expect(noQueue.stderr).toMatch(/no such queue/);
    const badUrl = await cli(['dlq', 'list', dlq, '--amqp', 'http://127.0.0.1:5672']);
    expect(badUrl.code).toBe(1);
    expect(badUrl.stderr).toMatch(/--amqp: .* must start with amqp:\/\//);
    const down = await cli(['dlq', 'list', dlq, '--amqp', 'amqp://guest:guest@127.0.0.1:1']);
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/cannot connect to RabbitMQ at amqp:\/\/guest:\*\*\*@127\.0\.0\.1:1/);
    await lettersBack(1);
  });

  it('a letter without a message id keeps its id from one command to the next', async () => {
    // The default dead-letter queue is a quorum queue, which hands listed letters back in another
    // order: an id by position named another letter in the next command.
    for (const n of [1, 2, 3]) await raw.publish(queue, { id: 'x', n }, { 'x-idempotency-key': `raw-${n}` });
    await waitUntil(async () => (await raw.count(dlq)) === 4, { message: 'three more dead letters' });
    const first = await cliJson<{ letters: Letter[] }>(['dlq', 'list', dlq, ...amqp]);
    const second = await cliJson<{ letters: Letter[] }>(['dlq', 'list', dlq, ...amqp]);
    const raws = first.letters.filter((l) => l.key?.startsWith('raw-'));
    expect(raws.map((l) => l.id)).toEqual(raws.map(() => expect.stringMatching(/^#[0-9a-f]{12}$/)));
    expect(new Set(raws.map((l) => l.id)).size).toBe(3);
    const keyById = (letters: Letter[]) => Object.fromEntries(letters.map((l) => [l.id, l.key]));
    expect(keyById(second.letters)).toEqual(keyById(first.letters));
    for (const letter of raws) {
      const shown = await cliJson<Letter>(['dlq', 'show', dlq, letter.id, ...amqp]);
      expect(shown.key).toBe(letter.key);
    }
  });

  it('replay --reset-key resets a key once: the copies of a failed message run its handler once', async () => {
    const before = await raw.count(dlq);
    // The message and two copies (a retried send): one PERMANENT letter, two PREVIOUSLY_FAILED.
    for (let i = 0; i < 3; i++) await publisher.send(queue, { id: 'd' }, { idempotencyKey: 'key-d' });
    await waitUntil(async () => (await raw.count(dlq)) === before + 3, { message: 'three letters of key-d' });
    expect(handled.filter((h) => h.startsWith('d:'))).toHaveLength(1);
    const out = await cliJson<{ results: { id: string; replayed: boolean; reset: string }[] }>([
      'dlq',
      'replay',
      dlq,
      'key-d',
      '--reset-key',
      '--redis',
      env.redisUrl,
      '--redis-prefix',
      keyPrefix,
      ...amqp,
    ]);
    expect(out.results.map((r) => [r.reset, r.replayed])).toEqual([
      ['cleared', true],
      ['reset-earlier', true],
      ['reset-earlier', true],
    ]);
    // All three come back (the handler still fails), and it ran once for the replay, not three times.
    await waitUntil(async () => (await raw.count(dlq)) === before + 3, {
      message: 'key-d dead-lettered again',
    });
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(handled.filter((h) => h.startsWith('d:'))).toHaveLength(2);
  });
  it('replay --all goes through a letter with a header table amqplib reads as a type marker', async () => {
    // A table with a field named `!` reads back from the broker as an amqplib type marker. The
    // replay wrote it as one (`Unknown type to encode`); amqplib had already given that copy a
    // place in the confirm order, so every later copy waited for ever for its confirm: the
    // command hung, holding the queue's letters.
    const trapQueue = uniqueName('cli-trap');
    const trapDlq = `${trapQueue}.dlq`;
    await raw.ch.assertQueue(trapQueue, { durable: true });
    await raw.ch.assertQueue(trapDlq, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
    try {
      const trap = { '!': 'object', value: { '!': 'bogus', value: 5 } };
      for (const n of [1, 2, 3]) {
        await raw.publish(
          trapDlq,
          { n },
          {
            'x-idempotency-key': `trap-${n}`,
            'x-eo-original-destination': trapQueue,
            'x-eo-error-code': 'PERMANENT',
            ...(n === 2 ? { 'x-trap': trap } : {}),
          },
          `trap-${n}`,
        );
      }
      // A listing raises the quorum queue's x-delivery-count of every letter.
      await cliJson(['dlq', 'list', trapDlq, ...amqp]);
      await waitUntil(async () => (await raw.count(trapDlq)) === 3, { message: 'the letters back' });
      const run = await cli(['dlq', 'replay', trapDlq, '--all', ...amqp, '--json'], { timeoutMs: 30_000 });
      expect(run.code, run.stderr).toBe(0);
      const out = JSON.parse(run.stdout) as { results: { id: string; replayed: boolean }[] };
      expect(out.results.map((r) => [r.id, r.replayed]).sort()).toEqual([
        ['trap-1', true],
        ['trap-2', true],
        ['trap-3', true],
      ]);
      await waitUntil(async () => (await raw.count(trapQueue)) === 3, { message: 'three copies' });
      const copies = await raw.drain(trapQueue);
      const trapped = copies.find((m) => m.properties.messageId === 'trap-2');
      // The table goes back as the table it was, with its field named `!`.
      expect(trapped?.properties.headers?.['x-trap']).toEqual({ '!': 'bogus', value: 5 });
      for (const copy of copies) {
        expect(Object.keys(copy.properties.headers ?? {})).not.toContain('x-delivery-count');
        expect(Object.keys(copy.properties.headers ?? {})).not.toContain('x-eo-error-code');
      }
      expect(await raw.count(trapDlq)).toBe(0);
    } finally {
      await raw.deleteQueues([trapQueue, trapDlq]);
    }
  });

  it('--json-id names a letter whose id holds a NUL, as list --json prints it, on show and replay', async () => {
    // Before: such a letter could not be named at all (a shell argument cannot carry a NUL).
    const target = uniqueName('cli-nul');
    const nulDlq = `${target}.dlq`;
    const id = 'order\u000042';
    await raw.ch.assertQueue(target, { durable: true });
    await raw.ch.assertQueue(nulDlq, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
    try {
      await raw.publish(
        nulDlq,
        { id: 'nul' },
        { 'x-idempotency-key': id, 'x-eo-original-destination': target, 'x-eo-error-code': 'PERMANENT' },
        id,
      );
      const listed = await cliJson<{ letters: Letter[] }>(['dlq', 'list', nulDlq, ...amqp]);
      expect(listed.letters.map((l) => l.id)).toEqual([id]);
      const named = JSON.stringify(id);
      await waitUntil(async () => (await raw.count(nulDlq)) === 1, { message: 'letter back' });
      const shown = await cliJson<Letter>(['dlq', 'show', nulDlq, named, '--json-id', ...amqp]);
      expect(shown).toMatchObject({ id, key: id });
      const notJson = await cli(['dlq', 'show', nulDlq, 'order', '--json-id', ...amqp]);
      expect(notJson.code).toBe(2);
      expect(notJson.stderr).toMatch(/with --json-id, <id> must be a JSON string/);
      await waitUntil(async () => (await raw.count(nulDlq)) === 1, { message: 'letter back' });
      const replayed = await cliJson<{ results: { id: string; replayed: boolean; to: string }[] }>([
        'dlq',
        'replay',
        nulDlq,
        named,
        '--json-id',
        ...amqp,
      ]);
      expect(replayed.results).toEqual([{ id, key: id, to: target, replayed: true }]);
      await waitUntil(async () => (await raw.count(target)) === 1, { message: 'the letter replayed' });
      expect(await raw.count(nulDlq)).toBe(0);
    } finally {
      await raw.deleteQueues([target, nulDlq]);
    }
  });

  it('--code lists and replays only the letters with those codes; the others stay', async () => {
    const target = uniqueName('cli-coded');
    const codedDlq = `${target}.dlq`;
    await raw.ch.assertQueue(target, { durable: true });
    await raw.ch.assertQueue(codedDlq, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
    try {
      const letters: [string, string, string?][] = [
        ['c-permanent', 'PERMANENT'],
        ['c-exhausted', 'ATTEMPTS_EXHAUSTED'],
        ['c-again-permanent', 'PREVIOUSLY_FAILED', 'PERMANENT'],
        ['c-again-exhausted', 'PREVIOUSLY_FAILED', 'ATTEMPTS_EXHAUSTED'],
      ];
      for (const [id, code, original] of letters) {
        await raw.publish(
          codedDlq,
          { id },
          {
            'x-idempotency-key': id,
            'x-eo-original-destination': target,
            'x-eo-error-code': code,
            ...(original ? { 'x-eo-original-error-code': original } : {}),
          },
          id,
        );
      }
      const listed = async (codes: string) => {
        const out = await cliJson<{ total: number; codes: string[]; letters: Letter[] }>([
          'dlq',
          'list',
          codedDlq,
          '--code',
          codes,
          ...amqp,
        ]);
        await waitUntil(async () => (await raw.count(codedDlq)) === out.total, { message: 'letters back' });
        return { ...out, ids: out.letters.map((l) => l.id).sort() };
      };
      expect(await listed('attempts_exhausted')).toMatchObject({
        total: 4,
        codes: ['ATTEMPTS_EXHAUSTED'],
        ids: ['c-exhausted'],
      });
      expect((await listed('PREVIOUSLY_FAILED')).ids).toEqual(['c-again-exhausted', 'c-again-permanent']);
      expect((await listed('PREVIOUSLY_FAILED/PERMANENT,PERMANENT')).ids).toEqual([
        'c-again-permanent',
        'c-permanent',
      ]);
      const text = await cliText(['dlq', 'list', codedDlq, '--code', 'ATTEMPTS_EXHAUSTED', ...amqp]);
      // Every letter was read: no call for a larger --limit (one was asked for).
      expect(text).toContain(
        `RabbitMQ queue ${codedDlq}: 4 dead letter(s); 1 with code ATTEMPTS_EXHAUSTED among the 4 read\n`,
      );
      await waitUntil(async () => (await raw.count(codedDlq)) === 4, { message: 'letters back' });
      const part = await cliText([
        'dlq',
        'list',
        codedDlq,
        '--code',
        'MALFORMED_MESSAGE',
        '--limit',
        '2',
        ...amqp,
      ]);
      expect(part).toContain(
        `RabbitMQ queue ${codedDlq}: 4 dead letter(s); none with code MALFORMED_MESSAGE among the 2 read (--limit for more)`,
      );
      await waitUntil(async () => (await raw.count(codedDlq)) === 4, { message: 'letters back' });

      const replay = await cliJson<{ results: { id: string; replayed: boolean; to: string }[] }>([
        'dlq',
        'replay',
        codedDlq,
        '--all',
        '--code',
        'ATTEMPTS_EXHAUSTED,PREVIOUSLY_FAILED/ATTEMPTS_EXHAUSTED',
        ...amqp,
      ]);
      expect(replay.results.map((r) => [r.id, r.replayed, r.to]).sort()).toEqual([
        ['c-again-exhausted', true, target],
        ['c-exhausted', true, target],
      ]);
      await waitUntil(async () => (await raw.count(codedDlq)) === 2, { message: 'the others back' });
      const copies = await raw.drain(target);
      expect(copies.map((m) => m.properties.messageId).sort()).toEqual(['c-again-exhausted', 'c-exhausted']);
      expect((await listed('PERMANENT,PREVIOUSLY_FAILED')).ids).toEqual(['c-again-permanent', 'c-permanent']);

      const none = await cli(['dlq', 'replay', codedDlq, '--all', '--code', 'MALFORMED_MESSAGE', ...amqp]);
      expect(none.code).toBe(1);
      expect(none.stderr).toMatch(/no dead letters with code MALFORMED_MESSAGE to replay/);
      for (const bad of ['ATTEMPT_EXHAUSTED', 'PERMANENT/PERMANENT', 'PREVIOUSLY_FAILED/NOPE', ',']) {
        const refused = await cli(['dlq', 'list', codedDlq, '--code', bad, ...amqp]);
        expect(refused.code, bad).toBe(2);
        expect(refused.stderr).toMatch(/--code: (unknown code|no code given)/);
      }
      await waitUntil(async () => (await raw.count(codedDlq)) === 2, { message: 'letters back' });
    } finally {
      await raw.deleteQueues([target, codedDlq]);
    }
  });
});
